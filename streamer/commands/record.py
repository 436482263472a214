"""`xtalstream record --connect URL --out FILE.h5 [--once]`: write received series as EIGER-style HDF5.

The first series goes to FILE.h5 (master) + FILE_data_NNNNNN.h5; later ones (without --once)
to FILE_2.h5, FILE_3.h5, ... bslz4 frames are written as received (never recompressed).
"""

from __future__ import annotations

import logging
import signal
from collections import Counter
from pathlib import Path

from streamer.commands.common import cli_errors, parser

log = logging.getLogger(__name__)


def series_path(out: Path, index: int) -> Path:
    """FILE.h5 for the first series, FILE_<index+1>.h5 after."""
    return out if index == 0 else out.with_name(f"{out.stem}_{index + 1}{out.suffix or '.h5'}")


def record_stream(connect: str, out: Path, once: bool = True, timeout_s: float | None = None, config=None,
                  ctx=None, counters: Counter | None = None) -> list[Path]:
    """Receive from `connect` and record each series; returns the master files written.

    Stops after the first series with `once`, or when nothing arrives for `timeout_s` seconds.
    Frames that cannot be recorded (shape/dtype mismatch, duplicates) are counted, not fatal.
    """
    import zmq

    from streamer.receiver import Receiver
    from streamer.recorder import SeriesRecorder
    from streamer.series import EncodedFrame, SeriesEnd, SeriesInfo

    ctx = ctx or zmq.Context.instance()
    counters = counters if counters is not None else Counter()
    written: list[Path] = []
    recorder: SeriesRecorder | None = None
    stopped_by = "an error"
    with Receiver(ctx, connect, config, counters) as receiver:
        try:
            for event in receiver.events(timeout_s):
                if isinstance(event, SeriesInfo):
                    if recorder is not None:
                        written.append(recorder.close())
                    recorder = SeriesRecorder(series_path(out, len(written)), event)
                    log.info("recording series %s to %s", event.series_id, recorder.path)
                elif isinstance(event, EncodedFrame) and recorder is not None:
                    try:
                        recorder.write(event)
                        if recorder.n_written == 1:  # tells the operator that images, not just a header, arrive
                            log.info("first image of series %s recorded (image %d)", event.series_id,
                                     event.image_number)
                    except ValueError as exc:
                        counters["not_recorded"] += 1
                        log.warning("frame not recorded: %s", exc)
                elif isinstance(event, SeriesEnd) and recorder is not None:
                    if event.reason != "end":
                        _unfinished(recorder, f"it ended without its end message ({event.reason})")
                    written.append(recorder.close())
                    recorder = None
                    if once:
                        break
            stopped_by = "stopped" if timeout_s is None else f"no message for {timeout_s:g} s (--timeout)"
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (`main`): what came so far is a readable file
            log.warning("interrupted: closing the recording with the frames received so far")
            stopped_by = "interrupted"
        finally:
            if recorder is not None:
                _unfinished(recorder, f"{stopped_by} before its end message")
                written.append(recorder.close())
    return written


def _unfinished(recorder, why: str) -> None:
    """Say that a recording lacks its series' end, and how many of its images it holds."""
    expected = recorder.info.n_images
    log.warning("series %s recorded unfinished: %s; %d%s images in %s", recorder.info.series_id, why,
                recorder.n_written, f" of {expected}" if expected else "", recorder.path)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = parser("record", __doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("--connect", required=True, help="detector stream URL to PULL from (e.g. tcp://127.0.0.1:9999)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.h5", help="master file to write")
    p.add_argument("--once", action="store_true", help="exit after the first series ends")
    p.add_argument("--format", choices=["auto", "v1", "v2"], default=None, help="stream protocol (default: config)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="stop when no message arrives for S seconds (default: wait forever)")
    args = p.parse_args(argv)
    if "://" not in args.connect:
        p.error(f"--connect needs a ZeroMQ URL such as tcp://HOST:PORT, not {args.connect!r}")
    from streamer.config import load_config

    config = load_config(args.config)
    receiver_config = config.receiver if args.format is None else config.receiver.model_copy(update={"format": args.format})
    counters: Counter = Counter()

    def interrupt(signum, frame):
        raise KeyboardInterrupt  # SIGTERM ends the recording as Ctrl-C does: the files are closed

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        written = record_stream(args.connect, args.out, args.once, args.timeout, receiver_config, counters=counters)
    finally:
        signal.signal(signal.SIGTERM, previous)
    for path in written:
        print(f"wrote {path}")
    if counters:
        print("dropped: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    if not written:
        print(f"no series received from {args.connect}")
        return 1 if args.timeout is None else 2
    return 0
