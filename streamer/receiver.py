"""The detector receiver: a PULL socket on a DECTRIS stream (v1 or v2, detected per message).

`Receiver` connects to the detector (detectors bind PUSH), reads messages without copying the
pixel blobs (v1 frames keep the ZeroMQ buffer; v2 payloads are copied once, by cbor2), and
turns them into events: `SeriesInfo` (a series starts), `EncodedFrame`
(compressed, not decoded: workers decode), `SeriesEnd`, `Dropped`. It keeps the state of the
open series, so every frame is accounted: passed on, or dropped with a reason. Reasons (stable
labels, counted in the `counters` mapping given to it, e.g. a `collections.Counter`):

    truncated_message, wrong_part_count, unknown_type, malformed_json, malformed_cbor,
    blob_size, unknown_encoding, bad_header, oversized_message, no_series (a frame or end of a
    series that never started), series_closed (a frame of the series last closed for idling:
    it came after idle_timeout_s), wrong_shape (a frame that does not fit its series),
    image_number (past the series' count of images, or MAX_IMAGE_NUMBER where it has none),
    missing_channel (v2: none of the configured channels), restarted (a start before the
    previous end: the old series ends with that reason), missing_end (no message for
    `idle_timeout_s` while a series is open: it ends with that reason). oversized_message also
    counts a message part over max_message_bytes, for which ZeroMQ cut the connection: the
    receiver connects again (`_reconnect`).

Each reason is logged when first seen and then at most every LOG_EVERY_S with a count.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
import uuid
from collections import Counter
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from streamer import stream_v1, stream_v2
from streamer.allocator import keep_freed_memory
from streamer.config import ReceiverConfig
from streamer.errors import BadInput, BadMessage
from streamer.rate_limited_log import RateLimitedLog
from streamer.series import MAX_WHOLE, Dropped, EncodedFrame, SeriesEnd, SeriesInfo

log = logging.getLogger(__name__)

Event = SeriesInfo | EncodedFrame | SeriesEnd | Dropped
LOG_EVERY_S = 10.0
MAX_IMAGE_NUMBER = 2**31 - 1  # the bound on image numbers where the series does not say how many it has
RECONNECT_GRACE_S = 1.0  # a dropped connection ZeroMQ has not begun to retry by then was cut for good
# a retry begun (or made) after a drop: the connection was closed, not cut
_RECONNECTING = zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_CONNECTED


def check_endpoint(url: str) -> None:
    """Refuse a tcp:// detector URL ZeroMQ would take and then wait on for ever, silently: it
    resolves host names and ports only when it tries to connect (a port past 65535, a host no
    one knows). Other transports are left to ZeroMQ's own check."""
    scheme, _, rest = url.partition("://")
    if scheme != "tcp":
        return
    host, _, port = rest.rpartition(";")[2].rpartition(":")  # tcp://[source;]host:port
    if not (port.isdigit() and 0 < int(port) < 65536) or not host:
        raise BadInput(f"detector URL {url!r}: expected tcp://HOST:PORT with a port from 1 to 65535")
    try:
        socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BadInput(f"detector URL {url!r}: cannot resolve {host!r}: {exc}") from exc


@dataclass
class _OpenSeries:
    key: Any  # v1: series number; v2: series_unique_id
    fmt: str
    info: SeriesInfo
    announced: bool  # False while the pixel type waits for the first frame (EIGER 1 headers)
    last_seen: float
    n_frames: int = 0


class Receiver:
    """PULL receiver of a detector stream; iterate `events()` or call `poll()`.

    `ctx`: the process's zmq.Context; `endpoint`: the detector URL to CONNECT to;
    `config`: ReceiverConfig (format, rcvhwm, max_message_bytes, idle_timeout_s, channels);
    `counters`: a Counter-like mapping incremented by reason. Call `stop()` from any thread to
    end `events()`; `close()` (or the context manager) releases the sockets.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, config: ReceiverConfig | None = None,
                 counters: MutableMapping[str, int] | None = None):
        check_endpoint(endpoint)
        keep_freed_memory()  # every message is a fresh megabyte buffer: reuse the memory
        self.endpoint = endpoint
        self.config = config or ReceiverConfig()
        self.counters: MutableMapping[str, int] = counters if counters is not None else Counter()
        self.messages_received = 0
        self.frames_received = 0  # frames passed on as EncodedFrame
        self.n_disconnected = 0  # connections to the detector that dropped (closed, or cut by ZeroMQ)
        self.n_reconnected = 0  # of those, the ones ZeroMQ gave up and the receiver connected again
        self._cut_check_at: float | None = None  # when to reconnect if ZeroMQ has not retried by then
        self._series: _OpenSeries | None = None
        self._idle_closed: tuple[str, Any] | None = None  # (format, key) of the series last closed for idling
        self._log = RateLimitedLog(log, "stream", LOG_EVERY_S)
        self._ctx = ctx
        self.socket = ctx.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        try:
            self.socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close(linger=0)
            raise BadInput(f"cannot connect to the detector at {endpoint!r}: {exc}") from exc
        self._stop_url = f"inproc://xtalstream-receiver-stop-{uuid.uuid4().hex}"
        self._stop_socket = ctx.socket(zmq.PULL)
        self._stop_socket.setsockopt(zmq.LINGER, 0)
        self._stop_socket.bind(self._stop_url)
        # ZeroMQ drops a connection without a word when a part exceeds MAXMSGSIZE, and, unlike a
        # connection the detector closed, never retries it: watched, so that it is said, counted
        # and connected again rather than the detector's messages going nowhere from then on
        self._monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED | _RECONNECTING)
        self._poller = zmq.Poller()
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._stop_socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self.stopped = False
        self._closed = False

    # --- life cycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `events()` to return (thread-safe: a message on the inproc stop socket)."""
        if self._closed:
            self.stopped = True
            return
        sock = self._ctx.socket(zmq.PUSH)
        try:
            sock.setsockopt(zmq.LINGER, 1000)
            sock.setsockopt(zmq.SNDTIMEO, 1000)
            sock.connect(self._stop_url)
            sock.send(b"stop")
        except zmq.ZMQError as exc:  # the receiver went away meanwhile: nothing left to stop
            log.debug("stop notice to %s not sent: %s", self._stop_url, exc)
        finally:
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.socket.disable_monitor()
        self._monitor.close(linger=0)
        self.socket.close(linger=0)
        self._stop_socket.close(linger=0)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def open_series(self) -> SeriesInfo | None:
        return self._series.info if self._series is not None else None

    # --- receiving ----------------------------------------------------------------------------

    def events(self, timeout_s: float | None = None) -> Iterator[Event]:
        """Events until `stop()` is called, or until no message arrived for `timeout_s` seconds."""
        while not self.stopped:
            batch = self.poll(timeout_s)
            if not batch and not self.stopped:
                return
            yield from batch

    def poll(self, timeout_s: float | None = None) -> list[Event]:
        """Events of the next message(s) that produce any (or of an idle series closing).

        Returns [] when `timeout_s` passes without one, or on stop().
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            idle = self._idle_events(now)
            if idle:
                return idle
            self._log.flush(now)
            waits = [] if deadline is None else [deadline - now]
            if (log_due := self._log.due()) is not None:
                waits.append(log_due - now)
            if self._series is not None:
                waits.append(self._series.last_seen + self.config.idle_timeout_s - now)
            if self._cut_check_at is not None:
                if now >= self._cut_check_at:
                    return [self._reconnect()]
                waits.append(self._cut_check_at - now)
            wait_ms = None if not waits else max(0, int(min(waits) * 1000) + 1)
            ready = dict(self._poller.poll(wait_ms))
            if self._stop_socket in ready:
                self._stop_socket.recv()
                self.stopped = True
                return []
            if self.socket in ready:
                parts = self.socket.recv_multipart(copy=False)
                events = self.handle([p.buffer for p in parts], time.monotonic())
                if events:
                    return events
                continue  # e.g. an EIGER 1 header, announced with its first image
            if self._monitor in ready:  # once every message received before it is read: a detector
                self._on_disconnect()   # that closes right after a series' end has ended that series
            if deadline is not None and time.monotonic() >= deadline:
                return self._idle_events(time.monotonic())

    def _on_disconnect(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        event = recv_monitor_message(self._monitor)["event"]
        if event & _RECONNECTING:
            self._cut_check_at = None
            return
        self.n_disconnected += 1
        self._cut_check_at = time.monotonic() + RECONNECT_GRACE_S
        if self._series is None:
            log.info("the connection to the detector at %s dropped", self.endpoint)
            return
        log.warning("connection to the detector at %s dropped during series %s (a message part over "
                    "receiver.max_message_bytes = %d, or the detector restarted): messages in flight are lost",
                    self.endpoint, self._series.info.series_id, self.config.max_message_bytes)

    def _reconnect(self) -> Dropped:
        """Connect again to a detector whose connection ZeroMQ cut and will not retry: a part
        over MAXMSGSIZE (or another protocol error) ends the session for good. That message is
        lost: dropped as oversized_message, with the bound to raise."""
        self._cut_check_at = None
        self.n_reconnected += 1
        try:
            self.socket.disconnect(self.endpoint)
        except zmq.ZMQError:  # the cut already forgot the endpoint
            pass
        self.socket.connect(self.endpoint)
        series = self._series.info.series_id if self._series is not None else None
        return self._drop("oversized_message", f"ZeroMQ cut the connection to {self.endpoint} and did not retry it: "
                          f"a message part over receiver.max_message_bytes = {self.config.max_message_bytes} (or "
                          "another protocol error) was lost; connected again", series)

    def _idle_events(self, now: float) -> list[Event]:
        s = self._series
        if s is not None and now - s.last_seen >= self.config.idle_timeout_s:
            return self._close("missing_end", f"no message for {self.config.idle_timeout_s} s")
        return []

    # --- message handling (socket-free, used by tests too) ---------------------------------------

    def handle(self, parts: Sequence[Any], now: float | None = None) -> list[Event]:
        """Events of one message given as its list of part buffers."""
        now = time.monotonic() if now is None else now
        try:
            return self._handle(parts, now)
        except Exception as exc:  # a bug, or a message nobody foresaw: logged with its traceback and
            # counted, and the receiver (the only one that talks to the detector) goes on
            log.exception("stream message not understood")
            series = self._series.info.series_id if self._series is not None else None
            return [self._drop("receiver_error", f"message not understood: {exc!r}"[:500], series)]

    def _handle(self, parts: Sequence[Any], now: float) -> list[Event]:
        self.messages_received += 1
        if self._series is not None:
            self._series.last_seen = now
        try:
            fmt = self._format_of(parts)
            if fmt == "v2":
                if len(parts) != 1:
                    raise BadMessage(f"stream v2 message with {len(parts)} parts", reason="wrong_part_count")
                msg = stream_v2.parse_message(parts[0], self.config.max_message_bytes)
            else:
                msg = stream_v1.parse_message(parts)
        except BadInput as exc:
            series, image = self._who(parts)
            if series is None and self._series is not None:  # unreadable, during a series: counted with it
                series = self._series.info.series_id
            return [self._drop(exc.reason, str(exc), series, image)]
        if isinstance(msg, (stream_v1.V1Header, stream_v2.V2Start)):
            return self._start(msg, fmt, now)
        if isinstance(msg, (stream_v1.V1Image, stream_v2.V2Image)):
            return self._image(msg, fmt, now)
        return self._end(msg, fmt)

    def _format_of(self, parts: Sequence[Any]) -> str:
        if self.config.format != "auto":
            return self.config.format
        if not parts:
            raise BadMessage("empty message", reason="truncated_message")
        return "v2" if len(parts) == 1 and stream_v2.looks_like_v2(parts[0]) else "v1"

    def _who(self, parts: Sequence[Any]) -> tuple[str | None, int | None]:
        """Best effort: series and image number of an unusable v1 message, for the Dropped record."""
        try:
            _, first = stream_v1.htype_of(parts)
        except BadInput:
            return None, None
        series, frame = (v if type(v) is int and 0 <= v <= MAX_WHOLE else None  # numbers the wire can carry
                         for v in (first.get("series"), first.get("frame")))
        return (str(series) if series is not None else None), frame

    def _drop(self, reason: str, message: str, series: str | None = None, image: int | None = None) -> Dropped:
        self.counters[reason] = self.counters.get(reason, 0) + 1
        self._log(reason, message)
        return Dropped(reason, message, series, image)

    def _close(self, reason: str, message: str = "") -> list[Event]:
        s = self._series
        assert s is not None
        self._series = None
        self._idle_closed = (s.fmt, s.key) if reason == "missing_end" else None
        events: list[Event] = [] if s.announced else [s.info]
        if reason != "end":
            self.counters[reason] = self.counters.get(reason, 0) + 1
            self._log(reason, f"series {s.info.series_id} closed: {message}")
        events.append(SeriesEnd(s.info.series_id, reason, s.n_frames))
        self._log.flush(time.monotonic(), every=True)  # what went wrong in the series, said by its end
        return events

    def _start(self, msg: Any, fmt: str, now: float) -> list[Event]:
        events: list[Event] = []
        if self._series is not None:
            events += self._close("restarted", "a new series started before its end")
        try:
            if fmt == "v1":
                # EIGER 1 has no bit_depth_image, header_detail "none" no geometry: both from the first image
                pending = stream_v1.image_bit_depth(msg.config) is None or msg.header_detail == "none"
                info = stream_v1.series_info(msg)
                key: Any = msg.series
            else:
                pending = stream_v2.start_pixel_type(msg.fields) is None
                info = stream_v2.series_info(msg, channel=self.config.channels[0] if self.config.channels else None)
                key = msg.series_unique_id
        except BadInput as exc:
            events.append(self._drop(exc.reason, str(exc)))
            return events
        self._series = _OpenSeries(key, fmt, info, announced=not pending, last_seen=now)
        if not pending:
            events.append(info)
        log.info("series %s started (%s, %s %s, %s images, %s)", info.series_id, fmt, info.image_shape,
                 "pixel type from the first image" if pending else info.dtype, info.n_images,
                 "stills" if info.is_still else
                 f"{info.raw.get('scan_axis', 'omega')} {info.omega_start_deg:g} deg + {info.omega_increment_deg:g}")
        return events

    def _image(self, msg: Any, fmt: str, now: float) -> list[Event]:
        s = self._series
        key = msg.series if fmt == "v1" else msg.series_unique_id
        number = msg.frame if fmt == "v1" else msg.image_id
        if s is None or s.fmt != fmt or s.key != key:
            if self._idle_closed == (fmt, key):
                return [self._drop("series_closed", f"image {number} of series {key}, which was closed after "
                                   f"{self.config.idle_timeout_s:g} s without a message: a detector that pauses longer "
                                   "needs a longer receiver.idle_timeout_s", str(key), number)]
            return [self._drop("no_series", f"image {number} of series {key} that never started", str(key), number)]
        count = s.info.n_images or MAX_IMAGE_NUMBER + 1
        if not 0 <= number < count:  # its spots would be joined with other images' (or the sums overflow)
            return [self._drop("image_number", f"image {number} of series {s.info.series_id}, which has "
                               f"{'at most ' if not s.info.n_images else ''}{count} images", s.info.series_id)]
        try:
            if fmt == "v1":
                frames = [stream_v1.encoded_frame(msg, s.info, received_at=now)]
            else:
                frames = stream_v2.encoded_frames(msg, s.info.series_id, self.config.channels, received_at=now)
        except BadInput as exc:
            return [self._drop(exc.reason, str(exc), s.info.series_id, number)]
        if not frames:
            return [self._drop("missing_channel", f"image {number} has none of the channels {self.config.channels}",
                               s.info.series_id, number)]
        events: list[Event] = []
        if not s.announced:  # EIGER 1 / header_detail none: pixel type (and shape) from the first image
            dt = frames[0].dtype
            shape = s.info.image_shape if all(s.info.image_shape) else frames[0].shape
            s.info = dataclasses.replace(s.info, dtype=dt, bit_depth_image=8 * int(dt[-1]), image_shape=shape)
            s.announced = True
            events.append(s.info)
        for frame in frames:
            if frame.shape != s.info.image_shape or frame.dtype != s.info.dtype:
                events.append(self._drop("wrong_shape", f"image {number} is {frame.shape} {frame.dtype}, series is "
                                         f"{s.info.image_shape} {s.info.dtype}", s.info.series_id, number))
                return events
        s.n_frames += 1
        self.frames_received += len(frames)
        events += frames
        return events

    def _end(self, msg: Any, fmt: str) -> list[Event]:
        s = self._series
        key = msg.series if fmt == "v1" else msg.series_unique_id
        if s is None or s.fmt != fmt or s.key != key:
            how = "was closed for idling" if self._idle_closed == (fmt, key) else "never started"
            return [self._drop("no_series", f"end of series {key} that {how}", str(key))]
        log.info("series %s ended after %d frames", s.info.series_id, s.n_frames)
        return self._close("end")
