"""The detector's side of the stream: a PUSH socket BOUND on a URL, sending v1 or v2 as a DECTRIS
detector does. Used by the simulator, by replay and by the tests/benchmarks.

Compressed frames are passed through untouched (replay never recompresses); the only
conversions are between the LZ4 framings the two protocols use (v1 `lz4<` is one bare block,
v2 "lz4" the HDF5 framing), done without recompression whenever the data allow. Timing fields
come from the frame when it has them, else from the series' frame_time/count_time. A rate
limiter paces frames (`rate_hz`, None = as fast as the socket takes them).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from streamer import codecs, lz4_framing, stream_v1, stream_v1_encode, stream_v2_encode
from streamer.allocator import keep_freed_memory
from streamer.series import EncodedFrame, SeriesInfo

log = logging.getLogger(__name__)


class DetectorSender:
    """Act as the detector on `bind_url` (PUSH, bound; loopback URLs by default in callers).

    fmt: "v1" or "v2". header_detail: "none" | "basic" | "all" (v1 parts; v2 "all" adds mask,
    flatfield and countrate table to the start message). rate_hz: frames per second or None.
    sndhwm: send high-water mark (messages); send_timeout_s: raise TimeoutError if a message
    cannot be queued for this long (None: wait, e.g. until a receiver connects).
    """

    def __init__(self, ctx: zmq.Context, bind_url: str, fmt: str = "v1", rate_hz: float | None = None,
                 header_detail: str = "basic", sndhwm: int = 1000, send_timeout_s: float | None = None,
                 appendix: Any = None):
        if fmt not in ("v1", "v2"):
            raise ValueError(f"stream format must be v1 or v2, not {fmt!r}")
        if rate_hz is not None and rate_hz <= 0:
            raise ValueError("rate_hz must be positive or None")
        keep_freed_memory()  # every message is a fresh megabyte buffer: reuse the memory, no page faults
        self.fmt = fmt
        self.rate_hz = rate_hz
        self.header_detail = header_detail
        self.appendix = appendix  # v1: appended as an extra part to header and images; v2: user_data
        self.socket = ctx.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.send_timeout_s: float | None = None
        self.stalled = False  # a message timed out: no consumer to give queued messages to
        self.give_up_after(send_timeout_s)
        try:
            self.socket.bind(bind_url)
        except zmq.ZMQError:  # an open socket would keep the context from terminating (replay hung)
            self.socket.close(linger=0)
            raise
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._series: SeriesInfo | None = None
        self._series_number = 0
        self._unique_id = ""
        self._series_date = _dt.datetime.now(_dt.timezone.utc)
        self._t0 = 0.0
        self._tick_s = 1e-9
        self._n_sent = 0
        self.frames_sent = 0

    def wait_for_receiver(self, timeout_s: float | None = None) -> None:
        """Block until a consumer is connected (TimeoutError after `timeout_s`).

        A PUSH socket is writable only once it has a peer (a bound socket gets its pipe after the
        ZMTP handshake), so polling for POLLOUT waits for exactly that, with no window in which a
        consumer that connected earlier could be missed (as a socket monitor started late would).
        """
        log.info("waiting for a consumer on %s", self.endpoint)
        if not self.socket.poll(None if timeout_s is None else int(timeout_s * 1000), zmq.POLLOUT):
            raise TimeoutError(f"no consumer connected to {self.endpoint} within {timeout_s:g} s")

    def give_up_after(self, send_timeout_s: float | None) -> None:
        """From now on, raise TimeoutError when a message cannot be queued for `send_timeout_s`
        (None: wait). Senders set it once a series has started: a consumer that goes away
        mid-series would otherwise leave them blocked for ever once the queue is full."""
        self.send_timeout_s = send_timeout_s
        self.socket.setsockopt(zmq.SNDTIMEO, -1 if send_timeout_s is None else max(1, int(send_timeout_s * 1000)))

    def close(self, linger_s: float = 0.0) -> None:
        """Close the socket; `linger_s` > 0 gives queued messages that long to leave. They leave
        only while the context lives: a process that sent zero-copy parts must `term()` its
        context before it exits (at exit the interpreter frees the buffers while ZeroMQ's I/O
        thread may still be writing them, and libzmq aborts on the bad address). After a send timed
        out, nothing lingers: the consumer is gone."""
        self.socket.close(linger=0 if self.stalled else int(linger_s * 1000))

    def __enter__(self) -> DetectorSender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, parts: Sequence[Any]) -> None:
        try:
            self.socket.send_multipart(parts, copy=False)
        except zmq.Again as exc:
            self.stalled = True
            raise TimeoutError(f"no receiver took a message on {self.endpoint} for {self.send_timeout_s:g} s "
                               f"({self.frames_sent} images sent)") from exc

    def send_raw_parts(self, parts: Sequence[Any]) -> None:
        """Send one recorded message part for part (capture replay), paced like frames if it is an image."""
        head = bytes(memoryview(parts[0])[:128]) if parts else b""
        is_image = b'"dimage-1.0"' in head or b"\x65image" in head[:16]
        if b'"dheader-1.0"' in head or b"\x65start" in head[:16]:  # a series starts: restart the pacing clock
            self._t0, self._n_sent = 0.0, 0
        if is_image:
            self._pace()
        self._send(parts)
        if is_image:
            self.frames_sent += 1

    def send_start(self, series: SeriesInfo, header_detail: str | None = None, appendix: Any = None,
                   series_number: int | None = None) -> None:
        """Announce `series` (v1 `dheader-1.0`, v2 `start`)."""
        detail = header_detail or self.header_detail
        appendix = self.appendix if appendix is None else appendix
        self._series = series
        if series_number is None:
            series_number = int(series.series_id) if series.series_id.isdigit() else self._series_number + 1
        self._series_number = series_number
        self._series_date = _dt.datetime.now(_dt.timezone.utc)
        if self.fmt == "v1":
            parts = stream_v1_encode.encode_header(series, series_number, detail, appendix)
        else:
            unique = series.series_id if len(series.series_id) == 26 and series.source == "stream-v2" else None
            self._unique_id = unique or stream_v2_encode.new_ulid()
            channels = series.channels or ("threshold_1",)
            parts = [stream_v2_encode.encode_start(series, series_number, self._unique_id, detail, channels, appendix)]
        self._tick_s = stream_v1.time_tick_s(stream_v1_encode.config_of(series))
        self._t0 = 0.0  # the pacing clock starts with the first frame
        self._n_sent = 0
        self._send(parts)

    def _pace(self) -> None:
        if self.rate_hz is None:
            return
        if self._t0 == 0.0:  # first frame of the series
            self._t0 = time.monotonic()
        due = self._t0 + self._n_sent / self.rate_hz
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the detector's frame rate, not waiting on a condition
        self._n_sent += 1

    def _times(self, frame: EncodedFrame) -> tuple[float, float, float]:
        s = self._series
        frame_time = s.frame_time_s if s is not None else 0.0
        count_time = s.count_time_s if s is not None else 0.0
        start = frame.start_time_s if frame.start_time_s is not None else frame.image_number * frame_time
        real = frame.real_time_s if frame.real_time_s is not None else count_time
        stop = frame.stop_time_s if frame.stop_time_s is not None else start + real
        return start, stop, real

    def send_frame(self, frame: EncodedFrame, appendix: Any = None) -> None:
        """Send one image (its compressed bytes untouched where the protocol allows)."""
        self.send_frames([frame], appendix)

    def send_frames(self, frames: Sequence[EncodedFrame], appendix: Any = None) -> None:
        """Send one image message; v2 carries all `frames` as channels, v1 takes exactly one frame."""
        if self._series is None:
            raise RuntimeError("send_start() first")
        appendix = self.appendix if appendix is None else appendix
        times = self._times(frames[0])
        self._pace()
        if self.fmt == "v1":
            if len(frames) != 1:
                raise ValueError("stream v1 sends one channel per image")
            frame = _for_v1(frames[0])
            tick = self._tick_s
            ticks = tuple(int(round(t / tick)) for t in times)
            self._send(stream_v1_encode.encode_image(frame, self._series_number, ticks, appendix))
        else:
            msg = stream_v2_encode.encode_image([_for_v2(f) for f in frames], self._series_number, self._unique_id,
                                                self._series_date, times, appendix)
            self._send([msg])
        self.frames_sent += 1

    def send_end(self, appendix: Any = None) -> None:
        """End the series (v1 `dseries_end-1.0`, v2 `end`)."""
        if self.fmt == "v1":
            self._send(stream_v1_encode.encode_end(self._series_number, appendix))
        else:
            self._send([stream_v2_encode.encode_end(self._series_number, self._unique_id)])
        self._series = None


def _recode(frame: EncodedFrame, encoding: str, data: Any) -> EncodedFrame:
    return EncodedFrame(frame.series_id, frame.image_number, frame.shape, frame.dtype, encoding, data,
                        frame.channel, frame.start_time_s, frame.stop_time_s, frame.real_time_s, frame.received_at)


def _for_v1(frame: EncodedFrame) -> EncodedFrame:
    if frame.encoding != "lz4-h5":
        return frame
    block = lz4_framing.lz4_h5_as_block(frame.data, frame.nbytes_decoded)
    if block is None:  # several blocks: v1 needs one bare block, so this one frame is recompressed
        log.debug("image %d: lz4-h5 with several blocks recompressed as one LZ4 block for v1", frame.image_number)
        block = codecs.encode(codecs.decode(frame), "lz4")
    return _recode(frame, "lz4", block)


def _for_v2(frame: EncodedFrame) -> EncodedFrame:
    if frame.encoding != "lz4":
        return frame
    data = frame.data
    if memoryview(data).nbytes == frame.nbytes_decoded:  # cannot be told from a stored block
        return _recode(frame, "lz4-h5", codecs.encode(np.asarray(codecs.decode(frame)), "lz4-h5"))
    return _recode(frame, "lz4-h5", lz4_framing.lz4_block_as_h5(data, frame.nbytes_decoded))
