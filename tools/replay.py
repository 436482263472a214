"""`xtalstream replay PATH... --bind URL`: act as the detector, streaming recorded data.

- EIGER HDF5/NeXus (master with external links or VDS, or data files): the stored chunks are
  sent as they are (no decompression, no recompression).
- CBF/SMV image series: compressed with bitshuffle-LZ4 as an EIGER/PILATUS4 detector does.
- a stream capture folder (`../shared/data/streams/...`): every message sent part for part as
  captured, in the capture's own protocol (`--format` does not apply).

The PUSH socket binds on `--bind` (loopback by default). Frames are paced at the recorded frame
rate (1 / frame_time; captures, which do not state it, go as fast as possible) unless `--rate HZ`
says otherwise; `--rate 0` sends as fast as the socket takes them. PUSH queues nothing until a consumer connects, so no frame is lost to an absent
consumer; `--wait-for-consumer` also holds the series start until a PULL peer has completed
its handshake (the PUSH socket turns writable), so the pacing clock starts when someone listens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import zmq

from streamer.commands.common import cli_errors, parser
from streamer.errors import BadInput
from streamer.series import SeriesInfo

log = logging.getLogger(__name__)

DEFAULT_BIND = "tcp://127.0.0.1:9999"  # the DECTRIS stream port, on loopback
DEFAULT_LINGER_S = 30.0


def _is_capture(paths: Sequence[Path]) -> bool:
    from streamer.sources.open_any import source_kind

    return source_kind(paths) == "capture"


def replay_capture(ctx: zmq.Context, folder: Path, bind: str, rate_hz: float | None, repeat: int = 1,
                   wait_for_consumer: bool = False, wait_timeout_s: float | None = None,
                   linger_s: float = DEFAULT_LINGER_S, on_bound: Callable[[str], None] | None = None,
                   send_timeout_s: float | None = None) -> int:
    """Send the messages of a capture folder as captured; images paced at `rate_hz`. Returns images sent.
    `send_timeout_s`: once the first message has gone, TimeoutError when one waits longer."""
    from streamer.captures import read_capture
    from streamer.sender import DetectorSender

    messages = read_capture(folder)
    sender = DetectorSender(ctx, bind, "v1")
    try:
        if on_bound:
            on_bound(sender.endpoint)
        if wait_for_consumer:
            sender.wait_for_receiver(wait_timeout_s)
        t0 = time.monotonic()
        n_images = 0
        for _ in range(repeat):
            for parts in messages:
                before = sender.frames_sent
                if rate_hz and _is_image(parts):
                    delay = t0 + n_images / rate_hz - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)  # the detector's frame clock, not a wait on a condition
                sender.send_raw_parts(parts)
                sender.give_up_after(send_timeout_s)  # a consumer came: if it goes away, do not block for ever
                n_images += sender.frames_sent - before
        return n_images
    finally:
        sender.close(linger_s)


def _is_image(parts: Sequence[bytes]) -> bool:
    head = bytes(memoryview(parts[0])[:128]) if parts else b""
    return b'"dimage-1.0"' in head or b"\x65image" in head[:16]


def replay_series(ctx: zmq.Context, paths: Sequence[Path], bind: str, fmt: str = "v2", rate_hz: float | None = -1.0,
                  header_detail: str = "basic", series_id: str | None = None, repeat: int = 1,
                  wait_for_consumer: bool = False, wait_timeout_s: float | None = None,
                  pedestal: int | None = None, compression: str = "bslz4", linger_s: float = DEFAULT_LINGER_S,
                  on_bound: Callable[[str], None] | None = None,
                  on_series: Callable[[SeriesInfo], None] | None = None, send_timeout_s: float | None = None) -> int:
    """Stream an EIGER HDF5 file or CBF/SMV series as a detector; returns frames sent.

    `rate_hz`: frames per second; None = as fast as possible; negative = the recorded rate
    (1 / frame_time, as fast as possible if unknown). `compression`: how CBF/SMV frames are
    compressed ("bslz4" or "lz4-h5"); HDF5 chunks are sent as stored. `send_timeout_s`: once a
    series has started, TimeoutError when a message waits longer for the consumer.
    """
    from streamer.sender import DetectorSender
    from streamer.sources.open_any import open_source

    info, frames = open_source(paths, series_id, compression, pedestal)
    if on_series:
        on_series(info)
    if rate_hz is not None and rate_hz < 0:
        rate_hz = 1.0 / info.frame_time_s if info.frame_time_s > 0 else None
    sender = DetectorSender(ctx, bind, fmt, rate_hz, header_detail)
    sent = 0
    try:
        if on_bound:
            on_bound(sender.endpoint)
        if wait_for_consumer:
            sender.wait_for_receiver(wait_timeout_s)
        for k in range(repeat):
            if k > 0:  # a fresh pass over the files, announced as a new series
                info, frames = open_source(paths, series_id, compression, pedestal)
                info = dataclasses.replace(info, series_id=f"{info.series_id}-{k + 1}")
            log.info("replaying %s (%s, %d images, %s) on %s as %s at %s", info.series_id, info.source,
                     info.n_images or 0, "x".join(map(str, info.image_shape)), sender.endpoint, fmt,
                     f"{rate_hz:g} Hz" if rate_hz else "full speed")
            sender.send_start(info)
            sender.give_up_after(send_timeout_s)
            for frame in frames:
                if frame.series_id != info.series_id:
                    frame = dataclasses.replace(frame, series_id=info.series_id)
                sender.send_frame(frame)
                sent += 1
            sender.send_end()
        return sent
    finally:
        sender.close(linger_s)


def describe(info: SeriesInfo) -> str:
    return (f"{info.series_id}: {info.source}, {info.n_images} images {info.image_shape[1]}x{info.image_shape[0]} "
            f"{info.dtype}, beam ({info.beam_centre_px[0]:.2f}, {info.beam_centre_px[1]:.2f}) px, "
            f"{info.distance_mm:.2f} mm, {info.wavelength_A:.5f} A")


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = parser("replay", __doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH",
                   help="EIGER master/data file(s), CBF/SMV images (.bz2/.gz allowed), or a stream capture folder")
    p.add_argument("--bind", default=DEFAULT_BIND, help=f"URL the detector PUSH socket binds (default {DEFAULT_BIND})")
    p.add_argument("--format", choices=["v1", "v2"], default="v2", help="stream protocol (default v2; captures: as captured)")
    p.add_argument("--rate", type=float, default=None, metavar="HZ",
                   help="frames per second; default the recorded frame rate (1/frame_time); 0 = as fast as possible")
    p.add_argument("--header-detail", choices=["none", "basic", "all"], default="basic",
                   help="v1 header parts / v2 start content (all: pixel mask, flatfield)")
    p.add_argument("--series-id", default=None, help="series id to announce (v1: a number becomes the series number)")
    p.add_argument("--wait-for-consumer", action="store_true",
                   help="do not start the series before a PULL consumer has connected")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="S", help="give up waiting after S seconds")
    p.add_argument("--send-timeout", type=float, default=60.0, metavar="S",
                   help="give up when the consumer takes no message for S seconds once the series has started "
                        "(default 60; 0 = wait for ever)")
    p.add_argument("--repeat", type=int, default=1, help="send the series this many times (default 1)")
    p.add_argument("--pedestal", type=int, default=None,
                   help="subtract this ADC offset from SMV pixels (default: the header's, as DIALS; nanoBragg: 40)")
    p.add_argument("--compression", choices=["bslz4", "lz4-h5"], default="bslz4",
                   help="how CBF/SMV frames are compressed (HDF5 chunks and captures are sent as stored)")
    p.add_argument("--linger", type=float, default=DEFAULT_LINGER_S, metavar="S",
                   help="at the end, wait up to S seconds for queued messages to leave")
    args = p.parse_args(argv)
    if args.rate is not None and args.rate < 0:
        p.error("--rate must be >= 0")
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    if not (args.send_timeout >= 0 and math.isfinite(args.send_timeout)):
        p.error("--send-timeout must be a number of seconds >= 0")
    paths = list(args.paths)
    ctx = zmq.Context()
    rate = None if args.rate == 0 else args.rate
    start = time.monotonic()
    try:
        if _is_capture(paths):
            if len(paths) != 1:
                raise BadInput("give one capture folder", reason="bad_arguments")
            n = replay_capture(ctx, paths[0], args.bind, rate, args.repeat, args.wait_for_consumer,
                               args.wait_timeout, args.linger, send_timeout_s=args.send_timeout or None)
        else:
            n = replay_series(ctx, paths, args.bind, args.format, -1.0 if args.rate is None else rate,
                              args.header_detail, args.series_id, args.repeat, args.wait_for_consumer,
                              args.wait_timeout, args.pedestal, args.compression, args.linger,
                              on_series=lambda info: print(describe(info), flush=True),
                              send_timeout_s=args.send_timeout or None)
    except TimeoutError as exc:  # nobody to send to: the user's setup, not a bug
        raise BadInput(str(exc), reason="no_consumer") from exc
    finally:
        ctx.term()  # waits (each socket's linger) for queued messages: see `DetectorSender.close`
    elapsed = time.monotonic() - start
    print(f"sent {n} frames in {elapsed:.2f} s ({n / elapsed if elapsed > 0 else 0:.1f} frames/s) on {args.bind}")
    return 0
