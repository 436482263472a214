"""`xtalstream run --connect URL --out DIR`: live processing of a detector stream.

Also holds `run_session`, the part `process` and `demo` share: start the pipeline and the
dashboard, push a source's events through, wait until every frame is accounted for, write
the outputs and print the summary table.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.commands.common import cli_errors, parser
from streamer.errors import BadInput

if TYPE_CHECKING:
    from streamer.pipeline import Pipeline

log = logging.getLogger(__name__)


def add_pipeline_arguments(p) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (summary.json, per_image.csv, ...)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="local worker processes (default cores - 1)")
    p.add_argument("--http", default=None, metavar="HOST:PORT",
                   help="dashboard and /metrics address (default from config: 127.0.0.1:8470; 'off' disables)")
    p.add_argument("--result-stream", default=None, metavar="URL",
                   help="PUB endpoint of the per-image result stream (default from config; 'off' disables)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT",
                   help="bind the worker sockets on TCP ports PORT..PORT+3 so that `xtalstream worker --connect "
                        "tcp://HOST:PORT` can join from another host (default: local ipc:// only)")


def configure(args) -> Any:
    """The effective configuration: file/env, then the command-line options."""
    from streamer.config import load_config, log_modified
    from streamer.http_server import parse_host_port

    config = load_config(args.config)
    fanout = {}
    if args.workers is not None:
        if args.workers < 1:
            raise BadInput(f"--workers must be at least 1, got {args.workers}", reason="bad_argument")
        fanout["workers"] = args.workers
    if args.listen:
        try:
            host, port = parse_host_port(args.listen)
        except ValueError as exc:
            raise BadInput(f"--listen: {exc}", reason="bad_argument") from None
        if not 0 < port <= 65532:
            raise BadInput("--listen needs a port between 1 and 65532", reason="bad_argument")
        fanout.update(bind_host=host, control_port=port, frame_port=port + 1, result_port=port + 2, model_port=port + 3)
    output = {}
    if args.http is not None:
        output["http"] = None if args.http == "off" else args.http
        if output["http"]:
            try:
                parse_host_port(output["http"])
            except ValueError as exc:
                raise BadInput(f"--http: {exc}", reason="bad_argument") from None
    if args.result_stream is not None:
        output["result_stream"] = None if args.result_stream == "off" else args.result_stream
    config = config.model_copy(update={
        "fanout": config.fanout.model_copy(update=fanout),
        "output": config.output.model_copy(update=output),
    })
    log_modified(config)
    return config


class Progress:
    """Prints the latest per-image result a few times a second (terminal feedback)."""

    def __init__(self, collector, interval_s: float = 0.25, stream=None):
        self.collector, self.interval_s, self.stream = collector, interval_s, stream or sys.stdout
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._shown = 0

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.show()

    def show(self) -> None:
        frames = self.collector.frames()
        done = frames["processed"] + sum(frames["dropped"].values())
        if done == self._shown:
            return
        self._shown = done
        images = [im for im in self.collector.recent_images(50) if im.get("image") is not None]
        last = images[-1] if images else {}
        d_min = last.get("estimated_d_min")
        ice = last.get("ice_rings")
        ice = len(ice) if isinstance(ice, (list, tuple)) else ice
        line = (f"image {last.get('image', '-'):>5}  phi {last.get('phi_deg') or 0:8.2f}  "
                f"spots {last.get('n_spots', '-'):>6}  d_min {f'{d_min:.2f} A' if d_min and d_min > 0 else '-'}  "
                f"ice {ice}  | received {frames['received']} processed {frames['processed']} "
                f"dropped {sum(frames['dropped'].values())}")
        print(line, file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()
        self.show()


def print_table(summary: dict[str, Any], out: Path, stream=None) -> None:
    frames = summary["frames"]
    rows = [("frames received", frames["received"]), ("frames processed", frames["processed"])]
    rows += [(f"dropped: {reason}", n) for reason, n in frames["dropped"].items()]
    idx = summary.get("indexing", {})
    rows.append(("indexed", idx.get("indexed")))
    if idx.get("indexed"):
        rows += [("lattice", idx.get("lattice")), ("unit cell", idx.get("unit_cell"))]
    elif idx.get("status") or idx.get("reason"):
        rows.append(("indexing", idx.get("status") or idx.get("reason")))
    rows += [(f"warning: {w['kind']}", f"{w['message']} -> {w['suggestion']}") for w in summary.get("warnings", [])]
    rows.append(("outputs", out))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows), file=stream or sys.stdout, flush=True)


def run_session(
    config,
    events: Callable[[], Iterable[Any]],
    out_dir: str | Path,
    live: bool,
    once: bool = False,
    progress: bool = True,
    worker_args: Sequence[str] = (),
    worker_env: dict[str, str] | None = None,
    on_ready: Callable[[Any], None] | None = None,
    serve: bool = False,
    on_stop: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Run `events()` through a full pipeline; write the outputs; return summary.json's object."""
    from streamer.http_server import FeedbackServer, parse_host_port
    from streamer.pipeline import Pipeline, default_stages

    out = Path(out_dir)
    stop = threading.Event()

    def stop_now(*_: Any) -> None:  # SIGTERM: finish with what was received, write the outputs
        stop.set()
        if on_stop is not None:
            on_stop()

    previous = signal.signal(signal.SIGTERM, stop_now) if threading.current_thread() is threading.main_thread() else None
    with Pipeline(config, live=live, stage_factories=default_stages(config), worker_args=worker_args,
                  worker_env=worker_env, result_stream=config.output.result_stream) as pipe:
        server = None
        if config.output.http:
            server = FeedbackServer(parse_host_port(config.output.http), pipe.metrics,
                                    pipe.collector.summary, pipe.collector.recent_images).start()
            print(f"dashboard: {server.url}   metrics: {server.url}metrics", flush=True)
        if config.fanout.control_port:
            print(f"extra workers: xtalstream worker --connect {pipe.control_url}", flush=True)
        if on_ready is not None:
            on_ready(pipe)
        done = threading.Event()
        per_series: set[str] | None = None if once else set()  # series after series: a folder each
        writer = threading.Thread(target=_write_on_close, args=(pipe.collector, config, out, done, per_series),
                                  name="outputs", daemon=True)
        if not once:
            writer.start()
        try:
            with Progress(pipe.collector) if progress else _Nothing():
                try:
                    pipe.feed(events(), once=once, stop=stop)
                except KeyboardInterrupt:
                    log.warning("interrupted: finishing with the frames received so far (Ctrl-C again: at once)")
                    if on_stop is not None:
                        on_stop()
                _wait_unless_hurried(pipe, config.fanout.result_timeout_s + 60, stop)
            done.set()
            if writer.is_alive():
                writer.join()
            summary = _write(pipe.collector, config, out, per_series)
            if progress:
                print_table(summary, out)
            if serve and server is not None:
                print(f"serving the dashboard at {server.url} until interrupted (Ctrl-C)", flush=True)
                try:
                    stop.clear()
                    while not stop.wait(0.5):
                        pass
                except KeyboardInterrupt:
                    pass
        finally:
            if server is not None:
                server.close()
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    return summary


STAGE_STALL_S = 600.0  # the sweep stages handled nothing for this long: stop waiting for them
STAGE_NOTICE_S = 15.0  # how often a long wait for the sweep stages says so


def _wait_unless_hurried(pipe: Pipeline, timeout: float, stop: threading.Event | None = None) -> None:
    """Wait for the workers' last results (up to `timeout`), and for the sweep stages for as
    long as they make progress: indexing attempts on a large sweep that does not index may take
    minutes after the last frame, and outputs written before they end would lack spots.csv and
    the indexing. A stage that handles nothing for STAGE_STALL_S, or a stop (SIGTERM) once
    `timeout` has passed, ends the wait; the outputs then say the stages did not finish. A
    Ctrl-C meanwhile stops the wait, not the run: open series close at once (frames still out
    counted as worker_lost) and the outputs are written, instead of a traceback from inside a lock."""
    hurry = threading.Event()

    def hurried(*_: Any) -> None:
        log.warning("interrupted again: writing the outputs without waiting for the workers and sweep stages")
        hurry.set()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, hurried) if main else None
    stages = pipe.collector.stages
    try:
        start = time.monotonic()
        deadline = start + timeout
        handled, moved, noticed = stages.n_handled, start, start
        while not hurry.is_set() and not pipe.wait(0.2):
            now = time.monotonic()
            if stages.n_handled != handled:
                handled, moved = stages.n_handled, now
            if now > deadline and (not stages.busy or (stop is not None and stop.is_set())):
                break  # nothing but the workers' overdue results (the collector gives them up), or asked to stop
            if stages.busy and now - moved > STAGE_STALL_S:
                log.error("the sweep stages handled nothing for %.0f s: writing the outputs without them",
                          STAGE_STALL_S)
                break
            if now > deadline and now - noticed > STAGE_NOTICE_S:
                noticed = now
                log.info("waiting for spot joining and indexing (%d items queued, %.0f s so far; Ctrl-C: write "
                         "the outputs without them)", stages.depth, now - start)
        if hurry.is_set():
            pipe.hurry()
            pipe.wait(5.0)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _write(collector, config, out: Path, per_series: set[str] | None = None) -> dict[str, Any]:
    """summary.json (the run's frame accounting; the stages' keys of the last closed series),
    per_image.csv, spots.csv and report.html of that series, config.yaml. With `per_series`
    (the ids written so far; a run that takes series after series), once a second series has
    closed each closed series also gets its own outputs, with its own frame accounting, in
    `series_<id>/` below `out` once its sweep stages have finished; after that, unless it is the
    latest, the collector forgets its per-image results and spots (`Collector.release`)."""
    closed = [collector.series[sid] for sid in collector.order if collector.series[sid].closed]
    done = [state for state in closed if state.done]  # outputs final: the sweep stages have finished
    for state in done if per_series is not None and len(closed) > 1 else []:  # one series: the top only
        if state.series.series_id not in per_series:
            _write_series(state, state.tally.as_dict(), config, out / series_folder(state.series.series_id))
            per_series.add(state.series.series_id)
        if state is not closed[-1]:  # written, and no longer the latest at the top: forgotten
            collector.release(state.series.series_id)
    return _write_series(closed[-1] if closed else None, collector.total.as_dict(), config, out)


def series_folder(series_id: str) -> str:
    """`series_<id>`, the id with anything but letters, digits and ._~- replaced (a safe file name)."""
    return "series_" + re.sub(r"[^A-Za-z0-9._~-]", "_", series_id)


def _write_series(state, frames: dict[str, Any], config, out: Path) -> dict[str, Any]:
    from streamer.summary import build_summary, per_image_rows, write_outputs
    from streamer.sweep_warnings import sweep_warnings

    outputs: dict[str, Any] = dict(state.outputs) if state is not None else {}
    rows = per_image_rows(state.series, state.results, state.dropped_images) if state is not None else []
    spots = outputs.pop("_spots", None)
    finished = state is None or state.done or not state.stages  # a series without stages has none to wait for
    if not finished and "indexing" not in outputs:
        outputs["indexing"] = {"indexed": False, "status": "not finished: indexing was still running when the "
                                                           "outputs were written"}
    summary = build_summary(frames, outputs)
    summary["warnings"] = sweep_warnings(summary, rows, state.series if state is not None else None,
                                         stage_skipped=state.stage_skipped if state is not None else 0,
                                         stages_finished=finished)
    title = f"xtalstream: series {state.series.series_id}" if state is not None else "xtalstream"
    write_outputs(out, config, summary, rows, spots, title)
    return summary


def _write_on_close(collector, config, out: Path, done: threading.Event, per_series: set[str] | None) -> None:
    """Live runs that take series after series: the outputs of each series as it closes, in
    its own folder, and the latest at the top (rewritten each time, not only at exit)."""
    n = 0
    while not done.is_set():
        if collector.wait_closed(n + 1, 0.5):
            n += 1
            _write(collector, config, out, per_series)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = parser("run", "live processing of a detector stream (DECTRIS SIMPLON stream v1/v2, PULL from URL)")
    p.add_argument("--connect", required=True, metavar="URL", help="the detector's stream endpoint, e.g. tcp://dcu:9999")
    p.add_argument("--format", choices=["auto", "v1", "v2"], default=None, help="stream protocol (default auto)")
    p.add_argument("--once", action="store_true", help="exit after the first series ends")
    add_pipeline_arguments(p)
    args = p.parse_args(argv)
    config = configure(args)
    if args.format:
        config = config.model_copy(update={"receiver": config.receiver.model_copy(update={"format": args.format})})

    import zmq

    from streamer.receiver import Receiver

    receiver = Receiver(zmq.Context.instance(), args.connect, config.receiver)
    started = time.monotonic()
    try:
        run_session(config, receiver.events, args.out, live=True, once=args.once, on_stop=receiver.stop)
    finally:
        receiver.close()
    log.info("run finished in %.1f s", time.monotonic() - started)
    return 0
