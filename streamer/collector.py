"""The collector: per-image results back in frame order, and the one accounting of frames.

Accounting (summary.json `frames`, the `xtal_frames_*` metrics): every frame the receiver
saw is `received`; it ends either `processed` (a per-image result was published) or
`dropped` with a reason (refused by the receiver, refused by a worker, lost with a dead
worker, ...). After a series closes, received = processed + sum(dropped).

Order: the receiver numbers the frames it dispatches per series (seq 0, 1, 2, ... without
gaps). Results wait in a bounded reorder buffer until all earlier frames are published. A
frame is dropped as "worker_lost":
- at once, when a worker has exited (`worker_gone`) or fallen silent (`check_silence`) and
  every worker still alive has returned a later frame of the series, or said it is idle since
  (`worker_idle`): each worker takes its frames in dispatch order, so the frame was in the
  queue of the one that died (`streamer.worker_roster`);
- when it blocks a full reorder buffer (its worker died unnoticed while others go on);
- when `result_timeout_s` has passed since its dispatch (live: the fan-out bounds how long a
  frame waits for a worker) or, for recorded data (`timeout_from_progress`), also since the
  last result of any series: `process` queues frames for as long as the workers take (a
  series' frames may wait behind the series before it), so only a lack of progress (all
  workers died, or a message was lost) is loss there.
A late result of a dropped frame is ignored (never counted twice).

Sweep-wide stages (spot joining, incremental indexing) run in their own thread
(`streamer.sweep_stages`), fed the results in order, so they never hold up the per-image path.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from streamer.metrics import Metrics
from streamer.pipeline_messages import FrameResult
from streamer.result_stream import ResultPublisher, series_start_payload
from streamer.series import SeriesInfo
from streamer.series_book import SeriesBook
from streamer.series_state import SeriesState
from streamer.sweep_stages import StageFactory, SweepStageThread
from streamer.worker_roster import SILENCE_S, WorkerRoster

log = logging.getLogger(__name__)

IMAGE_KEYS = (
    "n_spots", "n_spots_no_ice", "n_spots_4A", "total_intensity", "estimated_d_min",
    "background", "n_overloads", "ice_rings", "strong_pixels",
)


class Collector:
    """Frame accounting, ordering and publishing; driven by `CollectorService` or by tests.

    Thread-safety: the event methods are called by one thread; the views (`summary()`,
    `recent_images()`, `wait_closed()`) may be called from others (HTTP, pipeline): they read
    the `SeriesBook`, under its lock.
    """

    def __init__(
        self,
        metrics: Metrics,
        publisher: ResultPublisher | None = None,
        stage_factories: Sequence[StageFactory] = (),
        reorder_bound: int = 256,
        result_timeout_s: float = 10.0,
        recent: int = 2000,
        clock: Callable[[], float] = time.monotonic,
        stage_queue_bound: int = 2000,
        stage_backpressure: bool = False,
        timeout_from_progress: bool = False,
        worker_silence_s: float = SILENCE_S,
    ):
        self.metrics = metrics
        self.timeout_from_progress = timeout_from_progress
        self.last_progress = 0.0  # clock at the latest worker result handled (any series)
        self.publisher = publisher
        self.stage_factories = list(stage_factories)
        self.reorder_bound = reorder_bound
        self.result_timeout_s = result_timeout_s
        self.clock = clock
        self.book = SeriesBook(recent)  # the series, the run's tally, and the views other threads read
        self.series, self.open, self.order, self.total = (self.book.series, self.book.open, self.book.order,
                                                          self.book.total)
        self._lock = self.book.lock
        self.roster = WorkerRoster(worker_silence_s, clock)
        self.stages = SweepStageThread(metrics, self._lock, self.book.stages_finished, stage_queue_bound,
                                       skip=not stage_backpressure)
        self.models = self.stages.models  # (series_id, model) for the model channel and the result stream
        # told (series_id, seq) once no worker reads that frame any more: result or given up
        self.settled: Callable[[tuple[str, int]], None] = lambda key: None

    # ------------------------------------------------------------------ events
    def series_start(self, series: SeriesInfo) -> None:
        if series.series_id in self.series:
            log.warning("series %s started twice; keeping the first header", series.series_id)
            return
        stages = []
        for factory in self.stage_factories:
            try:
                stages.append(factory(series))
            except Exception:  # a sweep stage must not take down per-image feedback
                log.exception("cannot set up sweep stage %r for series %s", factory, series.series_id)
        self.book.add(SeriesState(series, stages=stages))
        self.metrics.series_started.inc()
        if self.publisher:
            self.publisher.publish("series_start", series_start_payload(series))
        log.info("series %s started (%s, %s images)", series.series_id, series.source, series.n_images)

    def dispatched(self, series_id: str, seq: int, image_number: int, received_at: float) -> None:
        """The receiver sent frame `seq` of a series to the workers."""
        state = self.series.get(series_id)
        if state is None:
            log.error("frame %d dispatched for unknown series %s", image_number, series_id)
            return
        with self._lock:
            state.tally.received += 1
            self.total.received += 1
        self.metrics.frames_received.inc()
        if seq >= state.next_seq:
            state.dispatched[seq] = (image_number, received_at, self.clock())

    def received_drop(self, reason: str, series_id: str | None = None, image_number: int | None = None) -> None:
        """The receiver got a frame (or message) it could not use: received and dropped at once."""
        state = self.series.get(series_id) if series_id else None
        with self._lock:
            self.total.received += 1
            self.total.drop(reason)
            if state is not None:
                state.tally.received += 1
                state.tally.drop(reason)
                if image_number is not None:
                    state.dropped_images.append(int(image_number))
        self.metrics.frames_received.inc()
        self.metrics.dropped(reason)
        payload = {"series_id": series_id or "", "image": image_number, "phi_deg": None, "dropped": reason,
                   "worker": None}
        if self.publisher:
            self.publisher.publish("image", payload)
        self.book.note_image(payload)

    def result(self, result: FrameResult) -> None:
        """A worker's result (processed or dropped) for one dispatched frame."""
        self.settled((result.series_id, result.seq))
        state = self.series.get(result.series_id)
        now = self.roster.result_from(result.worker)
        self.last_progress = now
        if state is not None:
            state.last_result = now
            state.worker_seq[result.worker] = max(result.seq, state.worker_seq.get(result.worker, -1))
        if state is None or state.closed or result.seq < state.next_seq or result.seq in state.buffer:
            log.warning("late or unknown result for series %s frame %d ignored", result.series_id, result.image_number)
            return
        state.buffer[result.seq] = result
        self._advance(state)
        self.last_progress = self.clock()  # after the sweep stages took it: recorded data may wait for them

    def series_end(self, series_id: str, n_dispatched: int, how: str = "end") -> None:
        """The receiver will send no more frames of this series (`how`: end, missing_end_of_series)."""
        state = self.series.get(series_id)
        if state is None or state.closed:
            return
        state.n_dispatched = n_dispatched
        state.how_ended = how
        self._advance(state)

    def worker_joined(self, name: str) -> None:
        """A worker said it is ready (it takes frames from now on)."""
        self.roster.joined_now(name)

    def worker_idle(self, name: str, sent_at: Any = None) -> None:
        """A worker has had no frame to work on for a while (it says so every IDLE_NOTICE_S)."""
        self.roster.idle_notice(name, sent_at)

    def worker_alive(self, name: str, refusals: Any = None) -> None:
        """A worker's heartbeat (`worker_roster.HEARTBEAT_S`), with its running count of the
        messages it could not read, by reason (`Metrics.worker_refusals`)."""
        self.roster.alive_notice(name)
        self.metrics.worker_refusals(name, refusals)

    def worker_gone(self, name: str) -> None:
        """A worker exited: the frames in its queue are lost; those that every worker still
        alive has passed are given up now, not after the timeout."""
        if name not in self.roster.gone:  # not counted twice: given up as silent, then its process ended
            self.metrics.workers_lost.labels(how="exited").inc()
        self.roster.exited(name)
        self._advance_open()

    def check_silence(self) -> None:
        """Give up the workers not heard from for the roster's `silence_s`, as if they had exited.
        The service calls it only when it has read every result message waiting."""
        silent = self.roster.fall_silent()
        if silent:
            self.metrics.workers_lost.labels(how="silent").inc(len(silent))
            self._advance_open()

    def _advance_open(self, expire: bool = False) -> None:
        for state in list(self.open.values()):
            self._advance(state, expire=expire)

    def tick(self, expire: bool = True) -> None:
        """Drop frames whose results are overdue (`expire`: the service has read every result that
        came), update the gauges; called regularly by the service loop."""
        self.roster.present()
        self._advance_open(expire=expire)
        self.metrics.workers_seen.set(self.roster.n_seen())
        self._update_depths()

    def finish(self) -> None:
        """Close every open series now (shutdown): frames still out are dropped as worker_lost."""
        for state in list(self.series.values()):
            if state.closed:
                continue
            if state.n_dispatched is None:
                state.n_dispatched = max([state.next_seq - 1, *state.dispatched, *state.buffer]) + 1
                state.how_ended = state.how_ended or "missing_end_of_series"
            self._advance(state, force=True)

    def wait_stages(self, timeout: float | None = None) -> bool:
        """Wait until the sweep stages have handled everything queued so far."""
        return self.stages.wait(timeout)

    @property
    def n_stage_skipped(self) -> int:
        return self.stages.n_skipped

    # ------------------------------------------------------------------ ordering
    def _advance(self, state: SeriesState, force: bool = False, expire: bool = False) -> None:
        """Publish what is next in frame order; drop frames known lost, and overdue ones only when
        `expire` (the service's tick, with every result that came read: after a pause of its loop,
        a result waiting unread in the socket is no lost frame)."""
        now = self.clock()
        while True:
            seq = state.next_seq
            if state.n_dispatched is not None and seq >= state.n_dispatched:
                self._close(state)
                break
            if seq in state.buffer:
                self._emit(state, state.buffer.pop(seq))
                continue
            sent = state.dispatched.get(seq)
            if sent is not None:
                # recorded data: since the frame was handed to the workers (its source may have
                # waited for the sweep stages after reading it), or the latest progress
                since = max(sent[2], self.last_progress) if self.timeout_from_progress else sent[1]
                lost = (expire and now - since > self.result_timeout_s) or \
                    self.roster.passed_by_the_living(state.worker_seq, seq, sent[2])
            else:
                lost = state.n_dispatched is not None  # its dispatch notice never came
            if force or lost or len(state.buffer) > self.reorder_bound:
                self._lose(state, seq)
                continue
            break

    def _drop_image(self, state: SeriesState, reason: str, image_number: int) -> None:
        """Count a dispatched frame of `state` as dropped: tallies, its per_image.csv row, metrics."""
        with self._lock:
            state.tally.drop(reason)
            self.total.drop(reason)
            state.dropped_images.append(image_number)
        self.metrics.dropped(reason)

    def _lose(self, state: SeriesState, seq: int) -> None:
        self.settled((state.series.series_id, seq))
        image_number, _, _ = state.dispatched.pop(seq, (None, 0.0, 0.0))
        state.next_seq = seq + 1
        if image_number is None:  # the dispatch notice itself never came: nothing was received
            return
        log.warning("series %s image %d: no result from any worker, dropped", state.series.series_id, image_number)
        self._drop_image(state, "worker_lost", image_number)
        payload = {"series_id": state.series.series_id, "image": image_number,
                   "phi_deg": state.series.phi_deg(image_number + 0.5), "dropped": "worker_lost", "worker": None}
        if self.publisher:
            self.publisher.publish("image", payload)
        self.book.note_image(payload)

    def _emit(self, state: SeriesState, result: FrameResult) -> None:
        series = state.series
        _, received_at, _ = state.dispatched.pop(result.seq, (None, None, None))
        state.next_seq = result.seq + 1
        payload: dict[str, Any] = {
            "series_id": series.series_id,
            "image": result.image_number,
            "phi_deg": result.stats.get("phi_deg", series.phi_deg(result.image_number + 0.5)),
            "dropped": result.drop_reason,
            "worker": result.worker,
        }
        m = self.metrics
        if result.dropped:
            self._drop_image(state, result.drop_reason or "bad_frame", result.image_number)
            log.info("series %s image %d dropped: %s (%s)", series.series_id, result.image_number,
                     result.drop_reason, result.drop_message)
        else:
            for key in IMAGE_KEYS:
                if key in result.stats:
                    payload[key] = result.stats[key]
            with self._lock:
                state.tally.processed += 1
                self.total.processed += 1
            # kept for per_image.csv: the statistics only (spot tables go to the sweep stages)
            state.results.append(dataclasses.replace(result, spots={}, profiles={}))
            m.image_processed(result.image_number, result.stats, result.decode_s, result.analyse_s)
            if state.stages:
                self.stages.feed(state, result)
        if received_at is not None:
            latency = self.clock() - received_at
            payload["latency_s"] = latency
            state.latencies_s.append(latency)
            m.stage["end_to_end"].observe(latency)
        if self.publisher:
            self.publisher.publish("image", payload)
        self.book.note_image(payload)

    def _close(self, state: SeriesState) -> None:
        how = state.how_ended or "end"
        with self._lock:
            state.closed = True
        self.open.pop(state.series.series_id, None)
        self.metrics.series_ended.labels(how=how).inc()
        log.info("series %s closed (%s): %s", state.series.series_id, how, state.tally.as_dict())
        if self.publisher:
            self.publisher.publish("series_end", {"series_id": state.series.series_id, "how": how,
                                                  "frames": state.tally.as_dict()})
        self.stages.close(state)

    def _update_depths(self) -> None:
        self.metrics.queue["in_flight"].set(sum(len(s.dispatched) for s in self.open.values()))
        self.metrics.queue["reorder"].set(sum(len(s.buffer) for s in self.open.values()))
        self.metrics.queue["sweep_stages"].set(self.stages.depth)  # also once idle: it drains

    # ------------------------------------------------------------------ views (any thread)
    @property
    def n_closed(self) -> int:
        return self.book.n_closed

    def frames(self) -> dict[str, Any]:
        return self.book.frames()

    def summary(self, latest: int | None = None) -> dict[str, Any]:
        return self.book.summary(latest)

    def recent_images(self, limit: int = 500) -> list[dict[str, Any]]:
        return self.book.recent_images(limit)

    def release(self, series_id: str) -> None:
        self.book.release(series_id)

    def wait_closed(self, n: int, timeout: float | None = None) -> bool:
        return self.book.wait_closed(n, timeout)
