"""The sweep-stage thread: spot joining and incremental indexing, off the per-image path.

The collector hands each processed result over in frame order (`feed`) and each closed series
(`close`); one thread runs every series' stages on them, so a slow stage never holds up the
per-image feedback. Live, past `queue_bound` waiting items, images are skipped (counted, logged
once, a warning of their series): a stage slower than the detector costs completeness, not unbounded
memory. Recorded data (`skip` off) are never skipped: their source waits instead while the queue
is full (`full`; `streamer.pipeline.Pipeline.feed`), and this thread's feeder, the collector,
never blocks (it answers the workers meanwhile). New crystal models
go to `models` (the model channel and the result stream) and to the series' live outputs.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from streamer.metrics import Metrics
from streamer.pipeline_messages import FrameResult
from streamer.series import SeriesInfo
from streamer.summary import jsonable

if TYPE_CHECKING:
    from streamer.series_state import SeriesState

log = logging.getLogger(__name__)


class SweepStage(Protocol):
    """A sweep-wide stage fed every processed frame in order (spot joiner, indexer)."""

    def add(self, series: SeriesInfo, result: FrameResult) -> None: ...

    def finish(self) -> Mapping[str, Any]:
        """Close the series; returns the summary.json keys this stage owns (e.g. `indexing`)."""
        ...


StageFactory = Callable[[SeriesInfo], SweepStage]


class SweepStageThread:
    """Runs the series' stages in one daemon thread, fed through a bounded queue.

    `lock` guards the series' `outputs` (read by the live summary); `on_closed(state)` is called
    in this thread once a closed series' stages have finished.
    """

    def __init__(self, metrics: Metrics, lock: threading.Lock, on_closed: Callable[[SeriesState], None],
                 queue_bound: int = 2000, skip: bool = True):
        self.metrics = metrics
        self.queue_bound = queue_bound
        self.skip = skip
        self.n_skipped = 0
        self.n_handled = 0  # items handled so far: the stages' progress, for a caller waiting on them
        self._n_put = 0  # items queued so far
        self._sync: tuple[threading.Event, int] | None = None  # the latest wait's marker, and its place
        self._sync_lock = threading.RLock()
        self.models: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self._lock = lock
        self._on_closed = on_closed
        self._queue: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="sweep-stages", daemon=True)
        self._thread.start()

    @property
    def native_id(self) -> int | None:
        """The thread's id for CPU accounting (`xtalstream bench e2e`)."""
        return self._thread.native_id

    def feed(self, state: SeriesState, result: FrameResult) -> None:
        """Queue a processed result for the series' stages; when `queue_bound` are waiting
        (and `skip`), skip it instead, counted, with its series."""
        depth = self._queue.qsize()
        self.metrics.queue["sweep_stages"].set(depth)
        if self.skip and depth >= self.queue_bound:
            self.metrics.stage_images_skipped.inc()
            self.n_skipped += 1
            state.stage_skipped += 1
            if self.n_skipped == 1:  # log once; the metric counts on
                log.warning("sweep stages %d images behind: skipping images until they catch up", depth)
            return
        self._put("add", state, result)

    def close(self, state: SeriesState) -> None:
        """The series is closed: its stages finish once they have handled what came before."""
        self._put("close", state)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the stages have handled everything queued so far. A caller polling in
        short waits reuses the marker it queued while nothing was queued after it (not one more
        marker in the queue per poll)."""
        with self._sync_lock:
            pending = self._sync
            if pending is None or pending[1] != self._n_put or pending[0].is_set():
                pending = self._sync = (threading.Event(), self._n_put + 1)
                self._put("sync", pending[0])
        return pending[0].wait(timeout)

    def _put(self, op: str, state: Any, result: Any = None) -> None:
        with self._sync_lock:
            self._n_put += 1
            self._queue.put((op, state, result))

    @property
    def busy(self) -> bool:
        """Something queued has not been handled yet (an item may be in a stage's hands)."""
        return self.n_handled < self._n_put

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def full(self) -> bool:
        """`queue_bound` items wait: a source of recorded data waits before it sends more."""
        return self._queue.qsize() >= self.queue_bound

    def _run(self) -> None:
        while True:
            op, state, result = self._queue.get()
            if op == "sync":
                self.n_handled += 1
                state.set()
                continue
            for stage in state.stages:
                try:
                    if op == "add":
                        stage.add(state.series, result)
                        self._pass_model_on(state, stage)
                    else:
                        outputs = stage.finish()
                        self._pass_model_on(state, stage)  # the last refinement's (or a short sweep's first)
                        with self._lock:
                            state.outputs.update(outputs)
                except Exception:  # keep per-image feedback alive whatever a stage does
                    log.exception("sweep stage %s failed on series %s", type(stage).__name__, state.series.series_id)
            if op == "close":
                state.stages = []  # their outputs are kept; what they held for the sweep (spots, models) goes
                self._on_closed(state)
            self.n_handled += 1

    def _pass_model_on(self, state: SeriesState, stage: SweepStage) -> None:
        """A stage's new crystal model, if any, to the model channel and the result stream."""
        model = getattr(stage, "take_model", lambda: None)()
        if model is not None:
            model = jsonable(model)  # plain types for msgpack and JSON
            self.models.put((state.series.series_id, model))
            with self._lock:  # the live summary shows the latest model
                state.outputs["indexing"] = model
