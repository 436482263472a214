"""The process layout: one source -> fan-out -> N worker processes -> collector.

    detector --PULL--> receiver thread --PUSH frames--> workers (processes, local or remote)
                           |  inproc feed (series, dispatch notices, drops, ends)      |
                           v                                                          v
                       collector thread <----------- PULL results ------------------+
                           |-- PUB result stream, /metrics + dashboard, summary.json
                           '-- PUB model channel --> workers (crystal model, when indexed)

Only the receiver thread talks to the detector. Workers are started as `xtalstream worker
--connect CONTROL` subprocesses, exactly as an extra worker on another host would be; they
learn every other endpoint from the collector. Internal sockets use ipc:// in a private
directory unless TCP ports are configured (needed for remote workers; loopback by default).
Clean shutdown: an inproc stop notice to the collector, SIGTERM to the local workers.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from streamer import header_corrections, pipeline_messages, wire
from streamer.allocator import keep_freed_memory
from streamer.collector import Collector, StageFactory
from streamer.collector_service import CollectorService
from streamer.config import Config, GeometryOverride
from streamer.frame_store import FrameStore
from streamer.metrics import Metrics
from streamer.result_stream import ResultPublisher
from streamer.series import Dropped, EncodedFrame, SeriesEnd, SeriesInfo

log = logging.getLogger(__name__)

MISSING_END = "missing_end_of_series"
WORKER_THREADS = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def default_workers(requested: int = 0) -> int:
    """0 means cores - 1, at least 1 (CONTRACT.md)."""
    return requested if requested > 0 else max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class Endpoints:
    """URLs the pipeline binds: control (workers join here), frames, results, model, feed."""

    control: str
    frames: str
    results: str
    model: str
    feed: str

    @classmethod
    def make(cls, config: Config, private_dir: str) -> Endpoints:
        f = config.fanout

        def url(name: str, port: int) -> str:
            return f"tcp://{f.bind_host}:{port}" if port > 0 else f"ipc://{private_dir}/{name}"

        return cls(
            control=url("control", f.control_port),
            frames=url("frames", f.frame_port),
            results=url("results", f.result_port),
            model=url("model", f.model_port),
            feed=f"inproc://feed-{id(private_dir)}",
        )


def _is_frame(dropped: Dropped) -> bool:
    """Whether a message the receiver refused counts as a lost frame.

    A refused series header, or the end of a series that never started, is not a frame; any
    other unusable message is taken for one (detectors send images, and an unreadable message
    may have been one): the accounting errs on the side of showing a loss.
    """
    if dropped.reason == "bad_header":
        return False
    return not (dropped.reason == "no_series" and dropped.image_number is None and "end of series" in dropped.message)


FANOUT_DROPS = {"overload": "no worker was free in time", "no_worker": "no worker is alive",
                "duplicate_image": "its image number came before in this series"}


class Fanout:
    """The receiver side: sends frames to the workers, tells the collector what it did.

    `overload_wait_s` None blocks until a worker takes the frame (recorded data: as fast as
    the workers go); a number is how long a live frame may wait before it is dropped as
    "overload" (the detector does not wait for us).

    With a shared store, each frame is copied into it first and the workers are sent its place
    there (pinned until the collector has its result), unless a worker that cannot map the
    store has joined or the store has no room that no worker may still be reading.
    """

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, hwm: int, overload_wait_s: float | None,
                 store: FrameStore | None = None, metrics: Metrics | None = None,
                 geometry: GeometryOverride | None = None):
        self.frames = ctx.socket(zmq.PUSH)
        self.frames.setsockopt(zmq.LINGER, 0)
        self.frames.setsockopt(zmq.SNDHWM, hwm)
        self.frames.bind(endpoints.frames)
        self.frames_url = self.frames.getsockopt_string(zmq.LAST_ENDPOINT)
        self.feed = ctx.socket(zmq.PUSH)
        self.feed.setsockopt(zmq.LINGER, 0)
        self.feed.setsockopt(zmq.SNDHWM, 0)
        self.feed.connect(endpoints.feed)
        self.overload_wait_s = overload_wait_s
        self.store = store
        self.by_reference = store is not None and store.shared  # until a worker cannot map it
        self.n_by_reference = 0  # frames sent as their place in the store
        self.metrics = metrics
        self.check_workers: Callable[[], None] = lambda: None  # raises when no worker is left
        self.workers_alive: Callable[[], bool] = lambda: True  # False once every known worker has exited
        self.open: dict[str, int] = {}  # series id -> frames dispatched so far
        self.images: dict[str, set[int]] = {}  # series id -> image numbers dispatched (duplicates are dropped)
        self.seen: set[str] = set()  # series ids announced so far, and the aliases given
        self.aliases: dict[str, str] = {}  # a repeated series id -> the id it has in this run
        self.n_series_ended = 0  # ends received, of series open here or never started
        self.n_dropped: dict[str, int] = {}  # frames the fan-out itself dropped, by reason (for its log)
        self.run = uuid.uuid4().hex[:16]  # this run's token, in every frame and in the workers' endpoints
        self.geometry = geometry or GeometryOverride()  # the configured header corrections

    def handle(self, event: Any) -> None:
        """Dispatch one source event (SeriesInfo, EncodedFrame, SeriesEnd, Dropped)."""
        if isinstance(event, EncodedFrame):
            alias = self.aliases.get(event.series_id)
            self._frame(event if alias is None else dataclasses.replace(event, series_id=alias))
        elif isinstance(event, SeriesInfo):
            event = header_corrections.entering(event, self.geometry)  # what every later stage sees
            series_id = event.series_id
            for other in list(self.open):
                if other != self.aliases.get(series_id, series_id):
                    log.warning("series %s started before %s ended", series_id, other)
                    self._end(other, MISSING_END)
            if series_id in self.seen and self.aliases.get(series_id, series_id) not in self.open:
                # the same id again (a detector restarted its numbering): a new series for us,
                # with a name no series of this run has had (the id may come back many times)
                n = 1
                while f"{series_id}~{n}" in self.seen:
                    n += 1
                self.aliases[series_id] = f"{series_id}~{n}"
                self.seen.add(self.aliases[series_id])
                event = dataclasses.replace(event, series_id=self.aliases[series_id])
            self.seen.add(series_id)
            if event.series_id not in self.open:
                self.open[event.series_id] = 0
                self.feed.send_multipart(pipeline_messages.encode_series(event), copy=False)
        elif isinstance(event, SeriesEnd):
            series_id = self.aliases.get(event.series_id, event.series_id)
            if series_id in self.open:
                self._end(series_id, "end" if event.reason == "end" else MISSING_END)
        elif isinstance(event, Dropped):
            is_frame = _is_frame(event)
            series_id = self.aliases.get(event.series_id, event.series_id) if event.series_id else event.series_id
            self._drop(event.reason, series_id, event.image_number, is_frame=is_frame)
            if not is_frame and event.reason == "no_series" and not self.open:
                # the end of a series joined too late to see its start (its frames dropped): it has
                # ended for `--once` too; while a series is open, a stray end is only counted
                self.n_series_ended += 1
        else:
            raise TypeError(f"unexpected source event {type(event).__name__}")

    def _frame(self, frame: EncodedFrame) -> None:
        seq = self.open.get(frame.series_id)
        if seq is None:
            log.warning("frame %d of series %s that never started: dropped", frame.image_number, frame.series_id)
            self._drop("unknown_series", frame.series_id, frame.image_number)
            return
        images = self.images.setdefault(frame.series_id, set())
        if frame.image_number in images:  # sent twice: one row per image, one count per frame
            self._drop("duplicate_image", frame.series_id, frame.image_number)
            return
        images.add(frame.image_number)
        received_at = frame.received_at or time.monotonic()
        if frame.received_at == 0.0:
            frame = dataclasses.replace(frame, received_at=received_at)
        pin = (frame.series_id, seq)
        by_reference = self.store is not None and self.by_reference
        stored_at = self.store.add(frame, pin=pin) if by_reference else None
        parts = pipeline_messages.encode_frame(frame, seq, stored_at, self.run)  # stored: read from the store
        try:
            self.frames.send_multipart(parts, copy=False, flags=zmq.NOBLOCK)
        except zmq.Again:
            if self.overload_wait_s is not None:
                if not self.workers_alive():  # waiting would only put the receiver behind the detector
                    if stored_at is not None:
                        self.store.release(pin)
                    self._drop("no_worker", frame.series_id, frame.image_number)
                    return
                if not self.frames.poll(int(self.overload_wait_s * 1000), zmq.POLLOUT):
                    if stored_at is not None:
                        self.store.release(pin)
                    self._drop("overload", frame.series_id, frame.image_number)
                    return
            else:  # recorded data: wait for a worker, as long as there is one
                while not self.frames.poll(1000, zmq.POLLOUT):
                    self.check_workers()
            self.frames.send_multipart(parts, copy=False)
        self.open[frame.series_id] = seq + 1
        self.n_by_reference += stored_at is not None
        self.feed.send_multipart(wire.encode("dispatched", {
            "series_id": frame.series_id, "seq": seq, "image_number": frame.image_number, "received_at": received_at}))
        if self.store is not None:
            if not by_reference:  # kept for re-integration (one refused by reference had no room then)
                self.store.add(frame)
            if self.metrics is not None:
                self.metrics.queue["store"].set(len(self.store.frames))

    def storeless_worker(self, name: str) -> None:
        """A worker that cannot map the shared store joins (another host): send bytes from now on.

        Called from the collector's thread before that worker connects for frames, so no frame
        sent by reference can reach it.
        """
        if self.by_reference:
            log.warning("worker %s cannot map the frame store (another host?): every frame goes as bytes now", name)
        self.by_reference = False

    def _drop(self, reason: str, series_id: str | None, image_number: int | None, is_frame: bool = True) -> None:
        if reason in FANOUT_DROPS:  # the fan-out's own reasons (the receiver logs its own)
            n = self.n_dropped[reason] = self.n_dropped.get(reason, 0) + 1
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...: visible, never a flood
                log.warning("series %s image %s dropped: %s (%d so far)", series_id, image_number,
                            FANOUT_DROPS[reason], n)
        self.feed.send_multipart(wire.encode("received_drop", {
            "reason": reason, "series_id": series_id, "image_number": image_number, "frame": is_frame}))

    def _end(self, series_id: str, how: str) -> None:
        n = self.open.pop(series_id)
        self.images.pop(series_id, None)
        self.feed.send_multipart(wire.encode("series_end", {"series_id": series_id, "n_dispatched": n, "how": how}))
        self.n_series_ended += 1

    def finish(self) -> None:
        """The source is exhausted: close what is open as missing its end, then stop the collector."""
        for series_id in list(self.open):
            self._end(series_id, MISSING_END)
        self.feed.send_multipart(wire.encode("stop"))

    def close(self) -> None:
        self.frames.close(linger=0)
        self.feed.close(linger=0)
        if self.store is not None:
            self.store.close()


def connect_service(fanout: Fanout, service: CollectorService, collector: Collector) -> None:
    """What the collector service tells the workers that join about the fan-out: where its
    frames come from, the run's token (in every frame) and its shared frame store, whose
    frames are unpinned once the collector has their result (or gave it up)."""
    service.frames_url = fanout.frames_url
    service.run_token = fanout.run
    store = fanout.store
    if store is not None and store.shared:
        service.store_info = store.share()
        service.storeless_worker = fanout.storeless_worker
        collector.settled = store.release


class Pipeline:
    """Everything but the source: collector, result stream, local workers, fan-out.

    Use as a context manager; `feed(events, once=...)` runs a source through it in the calling
    thread (the receiver thread), then `wait()` for the collector to finish.
    """

    def __init__(
        self,
        config: Config,
        ctx: zmq.Context | None = None,
        metrics: Metrics | None = None,
        n_workers: int | None = None,
        live: bool = True,
        stage_factories: Sequence[StageFactory] = (),
        worker_args: Sequence[str] = (),
        worker_env: dict[str, str] | None = None,
        result_stream: str | None = None,
        result_timeout_s: float | None = None,
    ):
        keep_freed_memory()  # frames pass through this process: reuse their memory
        self.config = config
        self.ctx = ctx or zmq.Context.instance()
        self.metrics = metrics or Metrics()
        self.n_workers = default_workers(config.fanout.workers if n_workers is None else n_workers)
        self.live = live
        self.publisher = ResultPublisher(self.ctx, result_stream)  # first: a user's address may be refused
        self._dir = tempfile.TemporaryDirectory(prefix="xtalstream-")
        self.endpoints = Endpoints.make(config, self._dir.name)
        self.collector = Collector(
            self.metrics, self.publisher, stage_factories,
            reorder_bound=config.fanout.reorder_bound,
            result_timeout_s=config.fanout.result_timeout_s if result_timeout_s is None else result_timeout_s,
            timeout_from_progress=not live,  # recorded data queue for as long as the workers take
        )
        self.service = CollectorService(self.ctx, self.collector, self.endpoints.control, self.endpoints.results,
                                        self.endpoints.model, self.endpoints.feed)
        store = FrameStore(config.fanout.frame_store_mb * 1024 * 1024, shared=config.fanout.shared_store) \
            if config.fanout.frame_store_mb else None
        self.fanout = Fanout(self.ctx, self.endpoints, config.fanout.hwm,
                             config.fanout.overload_wait_s if live else None, store, self.metrics, config.geometry)
        self.fanout.check_workers = self._check_workers
        self.service.exited_workers = self._exited_workers
        self.fanout.workers_alive = lambda: bool(self.collector.joined)
        self._reported_exits: set[int] = set()
        self._next_exit_check = 0.0
        self._closing = False
        connect_service(self.fanout, self.service, self.collector)
        self.control_url = self.service.urls["control"]
        self._thread = threading.Thread(target=self.service.run, name="collector", daemon=True)
        self.worker_args = list(worker_args)
        self.worker_env = worker_env
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self, worker_timeout_s: float = 120.0) -> None:
        """Start the collector and the local workers; return when every worker has joined."""
        self._thread.start()
        if self.live and self.fanout.store is not None:  # map the store while waiting for the detector
            self.fanout.store.start_mapping()
        cmd = [sys.executable, "-m", "streamer.cli", "worker", "--connect", self.control_url, *self.worker_args]
        # One process per core: no thread pools inside a worker (unless the user set them).
        env = {**WORKER_THREADS, **os.environ, **(self.worker_env or {})}
        for _ in range(self.n_workers):
            self.processes.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
        from streamer.spot_joiner import warm_up_kernels

        warm_up_kernels()  # while the workers warm up theirs: no compiling once frames come
        deadline = time.monotonic() + worker_timeout_s
        while not self.service.wait_workers(self.n_workers, 0.5):
            dead = [p for p in self.processes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"worker process exited with status {dead[0].returncode} during start-up")
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers did not join {self.control_url} within {worker_timeout_s} s")
        log.info("%d local workers joined %s", self.n_workers, self.control_url)

    def _exited_workers(self) -> list[str]:
        """Names of local worker processes that exited since the last call (checked at most
        four times a second), each logged once: the frames in their queues are lost."""
        now = time.monotonic()
        if self._closing or now < self._next_exit_check:
            return []
        self._next_exit_check = now + 0.25
        names = []
        for proc in self.processes:
            if proc.pid in self._reported_exits or proc.poll() is None:
                continue
            self._reported_exits.add(proc.pid)
            names.append(f"{socket.gethostname()}:{proc.pid}")  # the worker's own default name
            log.warning("worker process %d exited with status %s: the frames in its queue are dropped as "
                        "worker_lost", proc.pid, proc.returncode)
        if names and self.live and not self.collector.joined - set(names):
            log.error("no worker left: frames are dropped (no_worker) until a worker joins "
                      "(xtalstream worker --connect %s)", self.control_url)
        return names

    def _check_workers(self) -> None:
        """Raise when every local worker has exited (and none joined from elsewhere)."""
        if self.processes and all(p.poll() is not None for p in self.processes) \
                and len(self.service.hellos) <= len(self.processes):
            codes = sorted({p.returncode for p in self.processes})
            raise RuntimeError(f"all {len(self.processes)} worker processes exited (status {codes})")

    def feed(self, events: Iterable[Any], once: bool = False, stop: threading.Event | None = None,
             last: bool = True) -> None:
        """Run a source's events through the fan-out; `once` returns after the next series ends.

        `last` (default) tells the collector that no more sources follow: it closes what is
        open and stops once every frame is accounted for.
        """
        ended = self.fanout.n_series_ended
        try:
            for event in events:
                self.fanout.handle(event)
                if once and self.fanout.n_series_ended > ended:
                    break
                if stop is not None and stop.is_set():
                    break
        finally:
            if last:
                self.fanout.finish()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the collector to account for every frame and the sweep stages to finish."""
        if not self.service.stopped.wait(timeout):
            return False
        return self.collector.wait_stages(timeout)

    def close(self) -> None:
        self._closing = True  # the workers are stopped on purpose now: no more exit warnings
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread.is_alive():
            self.fanout.feed.send_multipart(wire.encode("stop"))
            self._thread.join(self.service.drain_timeout_s + 5)
        self.fanout.close()
        self.service.close()
        self.publisher.close()
        self._dir.cleanup()




class SweepAnalysis:
    """The collector's sweep stage: 3D spot joining and incremental indexing
    (`streamer.indexing.incremental.IndexingStage`), in frame order, off the per-image path.

    `take_model()` passes each new crystal model on (model channel, result stream, dashboard);
    `finish()` gives `indexing` to summary.json and `_spots` (the joined spots) to spots.csv.
    """

    def __init__(self, series: SeriesInfo, config: Config):
        from streamer.indexing.incremental import IndexingStage

        self.stage = IndexingStage(series, config)

    def add(self, series: SeriesInfo, result: Any) -> None:
        self.stage.add(series, result)

    def take_model(self) -> dict[str, Any] | None:
        return self.stage.take_model()

    def finish(self) -> dict[str, Any]:
        outputs = dict(self.stage.finish())
        outputs["_spots"] = self.stage.joiner.spots()
        return outputs


def default_stages(config: Config) -> list[StageFactory]:
    """The sweep-wide stages the collector runs on every series."""
    return [functools.partial(SweepAnalysis, config=config)]
