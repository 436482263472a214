"""What a worker has set up per series: headers, analysers (and their set-up errors), decode buffers.

Bounded caches: a worker has a few series in flight at most, and an analyser holds per-series
tables and buffers (hundreds of MB for a 16M detector). A series of the same detector and
geometry as one set up before reuses its analyser (`reuse_for`): no set-up between sweeps.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from streamer.errors import BadInput
from streamer.series import SeriesInfo

log = logging.getLogger(__name__)

SERIES_CACHE = 4  # series headers kept per worker (a few series in flight at most)
ANALYSER_CACHE = 2  # analysers hold per-series tables and buffers (hundreds of MB for a 16M detector)


class SeriesSetups:
    """A worker's per-series set-ups; `analyser_factory(series, config)` makes an analyser."""

    def __init__(self, analyser_factory: Callable[..., Any], config: Any):
        self.analyser_factory = analyser_factory
        self.config = config
        self.series: OrderedDict[str, SeriesInfo] = OrderedDict()
        self.analysers: dict[str, Any] = {}
        self.setup_errors: dict[str, BadInput] = {}
        self.buffers: dict[tuple[tuple[int, ...], str], np.ndarray] = {}

    def clear(self) -> None:
        """Forget every series (a new run joined); the decode buffers stay."""
        for cache in (self.series, self.analysers, self.setup_errors):
            cache.clear()

    def remember(self, series: SeriesInfo) -> None:
        self.series[series.series_id] = series
        while len(self.series) > SERIES_CACHE:
            self.series.popitem(last=False)

    def buffer(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A decode buffer reused for every frame of this shape and dtype (no page faults per frame)."""
        key = (tuple(shape), dtype)
        buf = self.buffers.get(key)
        if buf is None:
            if len(self.buffers) >= SERIES_CACHE:
                self.buffers.clear()
            buf = self.buffers[key] = np.empty(shape, dtype=np.dtype(dtype))
        return buf

    def analyser(self, series_id: str, header: Callable[[str], SeriesInfo]) -> Any:
        """The series' analyser, set up on first use from its `header` (asked of the collector);
        a set-up that failed fails again for every frame of that series, at once."""
        if series_id in self.analysers:
            return self.analysers[series_id]
        if series_id in self.setup_errors:
            raise self.setup_errors[series_id]
        series = header(series_id)
        try:
            analyser = None
            for previous in reversed(list(self.analysers.values())):  # same detector and geometry: no set-up
                reuse = getattr(previous, "reuse_for", None)
                analyser = reuse(series) if reuse is not None else None
                if analyser is not None:
                    break
            if analyser is None:
                analyser = self.analyser_factory(series, self.config)
        except BadInput as exc:
            self.setup_errors[series_id] = exc
            raise
        except Exception as exc:  # a bug or a header nobody foresaw: this series' frames are
            # dropped (counted, with the reason), not every series after it with a dead worker
            log.exception("series %s: analysis set-up failed", series_id)
            self.setup_errors[series_id] = BadInput(f"analysis set-up failed: {exc!r}", reason="worker_error")
            raise self.setup_errors[series_id] from exc
        if len(self.analysers) >= ANALYSER_CACHE:
            self.analysers.pop(next(iter(self.analysers)))
        self.analysers[series_id] = analyser
        return analyser
