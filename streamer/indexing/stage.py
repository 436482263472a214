"""The indexing sweep stage: the collector's stage that joins each frame's strong pixels into 3D
spots and drives an `IncrementalIndexer` with them, within a share of the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamer.header_corrections import geometry_problems
from streamer.indexing.incremental import IncrementalIndexer


def _untruncated(spots, end_image: int | None = None) -> dict[str, np.ndarray]:
    """All finished 3D spots, with `refine` False for those that start on the first image: they
    may have begun before the sweep did, so their rotation centroid is biased late (they still
    help find the lattice). While the sweep runs the end needs no flag (spots open on the newest
    image are not finished yet); at the end, spots reaching `end_image` (exclusive) are flagged."""
    if not len(spots):
        return {"x_px": np.zeros(0), "y_px": np.zeros(0), "z_image": np.zeros(0)}
    bbox = np.asarray(spots.bbox)
    refine = bbox[:, 4] > 0
    if end_image is not None:
        refine &= bbox[:, 5] < end_image
    return {"x_px": spots.x_px, "y_px": spots.y_px, "z_image": spots.z_image, "refine": refine,
            "intensity": spots.intensity}


class IndexingStage:
    """The collector's sweep stage (streamer.collector.SweepStage): joins each frame's strong
    pixels into 3D spots (streamer.spot_joiner) and feeds them to an IncrementalIndexer;
    `take_model()` hands the collector each new model once."""

    def __init__(self, series: Any, config: Any = None):
        from streamer.spot_joiner import SpotJoinerStage

        self.joiner = SpotJoinerStage(series, config)
        cfg = getattr(config, "indexing", config)
        problems = geometry_problems(series)  # no resolutions: spots are joined, nothing is indexed
        self.no_geometry = "; ".join(problems) if problems else None
        self.indexer = IncrementalIndexer(series, cfg) if self.no_geometry is None else None
        self.max_cpu_fraction = float(getattr(cfg, "max_cpu_fraction", 0.3) or 0.3)
        self.hold_until = 0.0  # monotonic time before which no attempt starts (the CPU budget)
        self.held = 0  # images that arrived while held
        self._pending: dict[str, Any] | None = None

    def add(self, series: Any, result: Any) -> None:
        self.joiner.add(series, result)
        if self.indexer is None:
            return
        self.indexer.note_images(int(result.image_number) + 1)
        if time.monotonic() < self.hold_until:
            self.held += 1
            return
        # before the first attempt the spots' span decides when to try; after it, the spots are
        # gathered for each attempt only (O(spots): 26 ms per image 300,000 spots into a sweep)
        if self.indexer.model is None and self.indexer.last_attempt_image is None \
                and not self.indexer.experiment.scan.is_still:
            self.indexer.set_spots(_untruncated(self.joiner.spots()))
        if self.indexer.due() is None:
            return
        self.indexer.set_spots(_untruncated(self.joiner.spots()))
        t0 = time.monotonic()
        update = self.indexer.step()
        spent = time.monotonic() - t0
        self.hold_until = time.monotonic() + spent * (1.0 / self.max_cpu_fraction - 1.0)
        if update is not None:
            self._pending = update.model()

    def take_model(self) -> dict[str, Any] | None:
        model, self._pending = self._pending, None
        return model

    def finish(self) -> Mapping[str, Any]:
        """Close the series: a last re-refinement (or attempt) with every spot, then the summary."""
        self.joiner.finish()
        indexer = self.indexer
        if indexer is None:
            status = f"not indexed: the header's geometry gives no resolutions ({self.no_geometry})"
            return {"indexing": {"indexed": False, "status": status}}
        indexer.complete = True  # no more data: a short sweep gets its attempt now; the status is final
        if indexer.images_seen and not indexer.experiment.scan.is_still:
            indexer.set_spots(_untruncated(self.joiner.spots(), indexer.images_seen))
            indexer.last_refine_image = -indexer.refine_every  # due now, whatever the count
            if indexer.model is None:
                indexer.last_attempt_image = None
            update = indexer.step()
            if update is not None:
                self._pending = update.model()
        return {"indexing": indexer.summary()}
