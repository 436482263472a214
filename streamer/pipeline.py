"""The process layout: one source -> fan-out -> N worker processes -> collector.

    detector --PULL--> receiver thread --frames--> workers (processes, local or remote)
                           |  (ROUTER, to the workers' DEALERs as they grant credit)   |
                           |  inproc feed (series, dispatch notices, drops, ends)      |
                           v                                                          v
                       collector thread <----------- PULL results ------------------+
                           |-- PUB result stream, /metrics + dashboard, summary.json
                           '-- PUB model channel --> workers (crystal model, when indexed)

Only the receiver thread talks to the detector. Workers are started as `xtalstream worker
--connect CONTROL` subprocesses, exactly as an extra worker on another host would be; they
learn every other endpoint from the collector. Internal sockets use ipc:// in a private
directory unless TCP ports are configured (needed for remote workers; loopback by default).
Clean shutdown: an inproc stop notice to the collector, SIGTERM to the local workers. The local
workers also stop when this process dies without that (`start_worker`).
"""

from __future__ import annotations

import ctypes
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from streamer import wire
from streamer.allocator import keep_freed_memory
from streamer.collector import Collector
from streamer.collector_service import CollectorService
from streamer.config import Config
from streamer.fanout import Fanout
from streamer.frame_store import FrameStore
from streamer.metrics import Metrics
from streamer.result_stream import ResultPublisher
from streamer.series import SeriesInfo
from streamer.sweep_stages import StageFactory

log = logging.getLogger(__name__)

STAGE_WAIT_S = 0.005  # how often a source of recorded data looks whether the sweep stages have room
WORKER_THREADS = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PR_SET_PDEATHSIG = 1  # prctl(2) option, <linux/prctl.h>


@functools.cache
def _prctl() -> Callable[..., int]:
    """libc's prctl, looked up before any fork (nothing is loaded in the forked child)."""
    return ctypes.CDLL(None, use_errno=True).prctl


def _term_with_parent(prctl: Callable[..., int]) -> None:
    """In the forked child, before exec: SIGTERM when the thread that forked it exits."""
    prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def start_worker(cmd: Sequence[str], env: dict[str, str]) -> subprocess.Popen:
    """Start a local worker (`xtalstream worker` command line) that stops when this process
    dies, even by SIGKILL: it gets `--parent-pid` and stops once its parent is another process
    (which also covers a parent that died before the child could ask for anything). On Linux,
    a fork from the main thread also asks for a SIGTERM at once when it dies (PR_SET_PDEATHSIG).
    Not from other threads: that signal comes when the forking *thread* exits, which may be
    long before this process does."""
    preexec = None
    if sys.platform == "linux" and threading.current_thread() is threading.main_thread():
        preexec = functools.partial(_term_with_parent, _prctl())
    return subprocess.Popen([*cmd, "--parent-pid", str(os.getpid())], env=env, stdin=subprocess.DEVNULL,
                            preexec_fn=preexec)


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
            stage_backpressure=not live,  # and the sweep stages see every image
            worker_silence_s=config.fanout.worker_silence_s,
        )
        self.service = CollectorService(self.ctx, self.collector, self.endpoints.control, self.endpoints.results,
                                        self.endpoints.model, self.endpoints.feed)
        store = FrameStore(config.fanout.frame_store_mb * 1024 * 1024, shared=config.fanout.shared_store) \
            if config.fanout.frame_store_mb else None
        self.fanout = Fanout(self.ctx, self.endpoints, config.fanout.hwm,
                             config.fanout.overload_wait_s if live else None, store, self.metrics, config.geometry)
        self.fanout.check_workers = self._check_workers
        self.service.exited_workers = self._exited_workers
        self.fanout.workers_alive = lambda: bool(self.collector.roster.joined)
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
            self.processes.append(start_worker(cmd, env))
        from streamer.sensor import attenuation_coefficient_per_mm
        from streamer.spot_joiner import warm_up_kernels

        warm_up_kernels()  # while the workers warm up theirs: no compiling once frames come
        attenuation_coefficient_per_mm("Si", 1.0)  # the sensor tables (0.5 s to load) for the sweep stages' geometry
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
        if names and self.live and not self.collector.roster.joined - set(names):
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
        open and stops once every frame is accounted for. Recorded data (not `live`) wait here
        while the sweep stages' queue is full, so that they see every image.
        """
        ended = self.fanout.n_series_ended
        stages = self.collector.stages
        try:
            for event in events:
                while not self.live and stages.full and not (stop is not None and stop.is_set()):
                    time.sleep(STAGE_WAIT_S)  # recorded data: the sweep stages see every image
                self.fanout.handle(event)
                if once and self.fanout.n_series_ended > ended:
                    break
                if stop is not None and stop.is_set():
                    break
        finally:
            if last:
                self.fanout.finish()

    def hurry(self) -> None:
        """Stop waiting for the workers: see `CollectorService.hurry`."""
        self.service.hurry()

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
    (`streamer.indexing.stage.IndexingStage`), in frame order, off the per-image path.

    `take_model()` passes each new crystal model on (model channel, result stream, dashboard);
    `finish()` gives `indexing` to summary.json and `_spots` (the joined spots) to spots.csv.
    """

    def __init__(self, series: SeriesInfo, config: Config):
        from streamer.indexing.stage import IndexingStage

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
