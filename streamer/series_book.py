"""The collector's book of series: every series seen, the run's frame tally, and the views that
other threads read from them (the live summary for HTTP, recent images for the dashboard, the
wait for closed series).

The collector's loop is the only writer of the book's structure; the views take its lock. The
lock is also the one the sweep stages take to publish a series' outputs (`streamer.sweep_stages`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from typing import Any

from streamer.series_state import SeriesState, Tally
from streamer.summary import per_image_rows
from streamer.sweep_warnings import sweep_warnings

log = logging.getLogger(__name__)


class SeriesBook:
    """Series by id (`series`: all; `open`: not closed yet, as a run may see thousands), in the
    order they started, and the run's tally of frames (summary.json `frames`)."""

    def __init__(self, recent: int = 2000):
        self.series: dict[str, SeriesState] = {}
        self.open: dict[str, SeriesState] = {}
        self.order: list[str] = []
        self.total = Tally()
        self.lock = threading.Lock()
        self.closed = threading.Condition(self.lock)  # notified when a series' stages have finished
        self.n_closed = 0
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)

    def add(self, state: SeriesState) -> None:
        with self.lock:
            self.series[state.series.series_id] = self.open[state.series.series_id] = state
            self.order.append(state.series.series_id)

    def note_image(self, payload: dict[str, Any]) -> None:
        """Keep an image's published payload for `recent_images` (a bounded ring)."""
        with self.lock:
            self._recent.append(payload)

    def recent_images(self, limit: int = 500) -> list[dict[str, Any]]:
        with self.lock:
            items = list(self._recent)
        return items[-limit:]

    def stages_finished(self, state: SeriesState) -> None:
        """(sweep-stage thread) A closed series' stages are done: its warnings are final (kept,
        not worked out again on every poll of the live summary) and `wait_closed` may return."""
        try:
            with self.lock:
                entry, rows = self._entry(state), (list(state.results), list(state.dropped_images))
            warnings = sweep_warnings(entry, per_image_rows(state.series, *rows), state.series, final=True,
                                      stage_skipped=state.stage_skipped)
        except Exception:  # the live summary then works them out on each poll
            log.exception("warnings of series %s", state.series.series_id)
            warnings = None
        with self.closed:
            state.final_warnings = warnings
            state.done = True
            self.n_closed += 1
            self.closed.notify_all()

    def release(self, series_id: str) -> None:
        """Forget the per-image results and spot table of a closed series whose outputs have been
        written (a run that takes series after series keeps only their accounting, indexing and
        warnings): its memory does not grow with every sweep of a beamline shift."""
        with self.lock:
            state = self.series.get(series_id)
            if state is None or not state.done:
                return
            state.results, state.dropped_images, state.latencies_s = [], [], []
            state.outputs.pop("_spots", None)
            state.series = dataclasses.replace(state.series, pixel_mask=None, flatfield=None)  # 18 MB for 4M
            state.released = True

    @staticmethod
    def _entry(state: SeriesState) -> dict[str, Any]:
        """A series in the live summary, without its warnings (call with the lock held)."""
        s = state
        return {"series_id": s.series.series_id, "source": s.series.source, "n_images": s.series.n_images,
                "closed": s.closed, "how_ended": s.how_ended, "frames": s.tally.as_dict(),
                **{k: v for k, v in s.outputs.items() if not k.startswith("_")}}

    def frames(self) -> dict[str, Any]:
        """The run's frame accounting so far (summary.json `frames`)."""
        with self.lock:
            return self.total.as_dict()

    def summary(self, latest: int | None = None) -> dict[str, Any]:
        """The live summary: the frames accounting, the number of series, and the state of each
        series (of the `latest` ones only if given) with its warnings so far
        (`streamer.sweep_warnings`; final once its stages have finished)."""
        with self.lock:
            order = self.order if latest is None else self.order[max(len(self.order) - latest, 0):]
            states = [self.series[sid] for sid in order]
            n_series = len(self.order)
            series = [self._entry(s) for s in states]
            rows = [None if s.done and s.final_warnings is not None else (list(s.results), list(s.dropped_images))
                    for s in states]
            total = self.total.as_dict()
        for entry, state, row in zip(series, states, rows):
            if row is None:
                entry["warnings"] = state.final_warnings
            else:
                entry["warnings"] = sweep_warnings(entry, per_image_rows(state.series, *row), state.series,
                                                   final=state.closed, stage_skipped=state.stage_skipped)
        return {"frames": total, "n_series": n_series, "series": series}

    def wait_closed(self, n: int, timeout: float | None = None) -> bool:
        """Block until `n` series have closed and their sweep stages finished."""
        with self.closed:
            return self.closed.wait_for(lambda: self.n_closed >= n, timeout)
