"""Incremental indexing as images arrive: the controller the collector runs off the per-image path.

    indexer = IncrementalIndexer(series_info_or_experiment, config.indexing)
    indexer.add_spots(spot_table)        # columns x_px, y_px, z_image (mapping or attributes)
    update = indexer.step()              # None, or an IndexingUpdate to publish
    indexer.status(); indexer.summary()  # reason when not indexed yet; CONTRACT.md `indexing`

Policy: the first attempt waits for `min_images` images and `min_degrees` of rotation (a sweep
that ends short of that is tried once at its end, with every spot); failed
attempts are retried every `retry_every_images` new images (with all spots so far); a solution
is accepted by fraction indexed and RMSDs (px and images); when every spot fails, the strongest
fractions alone are tried (`_index_strongest`); once accepted, the model is re-refined every
`refine_every_images` images, re-indexing from scratch if it stops fitting.
Everything runs in the caller's thread (the collector's sweep-stage thread); numpy and scipy
release the GIL in their heavy parts, so the per-image path keeps running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamer.geometry import Experiment
from streamer.indexing.autoindex import IndexingOptions, IndexingResult, index_rotation, refine_model
from streamer.indexing.rlp import BadSpots, Spots

log = logging.getLogger(__name__)

STRONGEST_FRACTIONS = (0.25, 0.1)  # tried in turn when indexing with every spot fails
MIN_STRONGEST_SPOTS = 200  # the fewest strong spots such an attempt takes
STRONGEST_MIN_DEGREES = 10.0  # ... once every spot has failed over this much rotation (or at the end)


def _strongest(spots: Spots, fraction: float) -> Spots:
    """The `fraction` strongest of the spots that may enter refinement (not those cut by the
    sweep's start, whose rotation centroids are biased); all spots for 1."""
    if fraction >= 1.0:
        return spots
    return (spots if spots.refine is None else spots.select(spots.refine)).strongest(fraction)


@dataclass(frozen=True)
class IndexingUpdate:
    """A new model to publish: kind is "indexed" (first acceptance or re-index) or "refined"."""

    kind: str
    image: int  # images seen when the update was made (the model uses spots up to here)
    result: IndexingResult
    seconds: float  # wall time of the attempt or re-refinement

    @property
    def experiment(self) -> Experiment | None:
        """The refined experiment (None for a still indexed from reciprocal vectors alone)."""
        return self.result.experiment

    def model(self) -> dict[str, Any]:
        """The published form: the `indexing` summary plus the experiment (for workers)."""
        out = self.result.summary()
        out["update"] = self.kind
        out["image"] = self.image
        out["experiment"] = None if self.result.experiment is None else self.result.experiment.to_dict()
        return out


def _spots_from(table) -> Spots:
    if isinstance(table, Spots):
        return table
    if isinstance(table, Mapping) or hasattr(table, "dtype"):
        return Spots.from_table(table)
    return Spots.from_table({k: getattr(table, k) for k in ("x_px", "y_px", "z_image")})


class IncrementalIndexer:
    """Holds the spots of one sweep and the current model; see the module docstring."""

    def __init__(self, series_or_experiment: Any, config: Any = None):
        if isinstance(series_or_experiment, Experiment):
            self.experiment = series_or_experiment.replace(crystal=None)
        else:
            self.experiment = Experiment.from_series(series_or_experiment)
        cfg = getattr(config, "indexing", config)  # the whole Config or its indexing section
        self.options = IndexingOptions.from_config(cfg)
        self.min_images = getattr(cfg, "min_images", 5)
        self.min_degrees = getattr(cfg, "min_degrees", 3.0)
        self.retry_every = getattr(cfg, "retry_every_images", 5)
        self.refine_every = getattr(cfg, "refine_every_images", 10)
        self.want_second = getattr(cfg, "second_lattice", False)
        self.block_deg = getattr(cfg, "scan_varying_block_deg", 0.0)
        self.scan_varying = None  # ScanVaryingModel once the sweep spans two blocks
        self._parts: list[Spots] = []
        self.images_seen = 0
        self.complete = False  # the sweep has ended: its spots are all there will be
        self.last_attempt_image: int | None = None
        self.last_refine_image: int | None = None
        self.result: IndexingResult | None = None  # last attempt (accepted or not)
        self.model: IndexingResult | None = None  # last accepted
        self.second: IndexingResult | None = None
        self.n_attempts = 0
        self.n_stills_indexed = 0
        self.strongest = 1.0  # the fraction of the spots (the strongest) that indexing and refinement use
        self.n_bad_tables = 0
        self.timings: list[tuple[str, float]] = []

    # -- input ------------------------------------------------------------------------------
    def add_spots(self, table, images_seen: int | None = None) -> None:
        """Add spots (any columnar table with x_px, y_px, z_image); `images_seen` defaults to
        the highest frame the spots reach."""
        try:
            spots = _spots_from(table)
        except BadSpots as exc:
            self.n_bad_tables += 1
            log.warning("spot table skipped: %s", exc)
            return
        if len(spots):
            self._parts.append(spots)
            self.images_seen = max(self.images_seen, int(np.floor(spots.z_image.max())) + 1)
        if images_seen is not None:
            self.images_seen = max(self.images_seen, int(images_seen))

    def set_spots(self, table) -> None:
        """Replace the spot list (e.g. with a spot joiner's full, growing list)."""
        self._parts = []
        self.add_spots(table)

    def note_images(self, images_seen: int) -> None:
        self.images_seen = max(self.images_seen, int(images_seen))

    @property
    def spots(self) -> Spots:
        if len(self._parts) > 1:
            self._parts = [Spots.concatenate(self._parts)]
        return self._parts[0] if self._parts else Spots.concatenate([])

    @property
    def spot_degrees(self) -> float:
        """Rotation range (degrees) the spots span: what indexing can use, which lags the images
        seen while 3D spots are still open on the newest images."""
        spots = self.spots
        return float(np.ptp(spots.z_image)) * abs(self.experiment.scan.width_deg) if len(spots) > 1 else 0.0

    @property
    def degrees_seen(self) -> float:
        return self.images_seen * abs(self.experiment.scan.width_deg)

    # -- control ----------------------------------------------------------------------------
    def due(self) -> str | None:
        """What step() would do now: "index", "refine", "still" or None (and why not, in status())."""
        if self.experiment.scan.is_still:
            return "still" if self.images_seen > (self.last_attempt_image or 0) else None
        if self.model is None:
            if self._waiting():
                return None
            if self.last_attempt_image is not None and self.images_seen - self.last_attempt_image < self.retry_every:
                return None
            return "index"
        if self.images_seen - (self.last_refine_image or 0) >= self.refine_every:
            return "refine"
        return None

    def _waiting(self) -> bool:
        """Whether the first attempt waits for more data: `min_images` images and, while the
        sweep runs, `min_degrees` of spots (a sweep that ended short is tried with what it has)."""
        return self.images_seen < self.min_images or (self.spot_degrees < self.min_degrees and not self.complete)

    def step(self) -> IndexingUpdate | None:
        """Try indexing or re-refinement if due; returns an update when a new model is accepted."""
        action = self.due()
        if action is None:
            return None
        t0 = time.perf_counter()
        spots = self.spots
        image = self.images_seen
        if action == "still":
            return self._step_still(spots, image, t0)
        everything, spots = spots, _strongest(spots, self.strongest)
        if action == "index":
            self.last_attempt_image = image
            self.n_attempts += 1
            result = index_rotation(self.experiment, spots, self.options)
            if not result.indexed:
                result, spots = self._index_strongest(result, spots)
            self.result = result
            seconds = time.perf_counter() - t0
            self.timings.append(("index", seconds))
            if not result.indexed:
                log.info("image %d: not indexed yet: %s", image, result.reason)
                return None
            self.model, self.last_refine_image = result, image
            self._look_for_second_lattice(spots, result)
            return IndexingUpdate("indexed", image, result, seconds)
        result = None
        if self.strongest < 1.0:  # a model found by the strongest spots may fit every spot once more data came
            result = refine_model(self.model.experiment, self.model.lattice, everything, self.options, self.model)
            if result.indexed:
                log.info("image %d: the model fits every spot: refinement uses all of them again", image)
                self.strongest, spots = 1.0, everything
        if result is None or not result.indexed:
            result = refine_model(self.model.experiment, self.model.lattice, spots, self.options, self.model)
        seconds = time.perf_counter() - t0
        self.timings.append(("refine", seconds))
        self.last_refine_image = image
        if result.indexed:
            self.model = self.result = result
            self._refine_scan_varying(spots, result)
            seconds = time.perf_counter() - t0
            return IndexingUpdate("refined", image, result, seconds)
        log.warning("image %d: model no longer fits (%s); indexing again", image, result.reason)
        self.model, self.last_attempt_image = None, None
        return self.step()

    def _step_still(self, spots: Spots, image: int, t0: float) -> IndexingUpdate | None:
        """Stills: index the newest image on its own (one orientation per image)."""
        from streamer.indexing.autoindex import index_still
        from streamer.indexing.rlp import rlps_of_still

        self.last_attempt_image = image
        self.n_attempts += 1
        mine = np.floor(spots.z_image) == image - 1
        rlps = rlps_of_still(self.experiment, spots.x_px[mine], spots.y_px[mine])
        result = index_still(rlps, self.options)
        self.result = result
        seconds = time.perf_counter() - t0
        self.timings.append(("still", seconds))
        if not result.indexed:
            return None
        self.n_stills_indexed += 1
        self.model = result
        return IndexingUpdate("indexed", image, result, seconds)

    def _index_strongest(self, failed: IndexingResult, spots: Spots) -> tuple[IndexingResult, Spots]:
        """After a failed attempt, the strongest spots alone (each of STRONGEST_FRACTIONS below
        the fraction in use): a very mosaic crystal's reflections span many images, and the
        joined spots of their weak ends, or a reflection split in two, have rotation centroids
        that fit no lattice; the strong spots' centroids are good. Only once every spot has
        failed over STRONGEST_MIN_DEGREES (or the sweep has ended): early on, every spot simply
        needs more rotation, and the strongest finished spots are then mostly the long ones cut
        by the sweep's start, whose centroids are biased. On acceptance the indexer keeps that
        fraction (refinement and re-indexing use it, until the model fits every spot again; the
        summary says so)."""
        if self.spots.intensity is None or not (self.complete or self.spot_degrees >= STRONGEST_MIN_DEGREES):
            return failed, spots
        for fraction in (f for f in STRONGEST_FRACTIONS if f < self.strongest):
            subset = _strongest(self.spots, fraction)
            if len(subset) < MIN_STRONGEST_SPOTS:
                break
            result = index_rotation(self.experiment, subset, self.options)
            if result.indexed:
                log.info("indexed with the strongest %.0f%% of the spots (%d); with all: %s", 100 * fraction,
                         len(subset), failed.reason)
                self.strongest = fraction
                return result, subset
        return failed, spots

    def _refine_scan_varying(self, spots: Spots, result: IndexingResult) -> None:
        width = abs(self.experiment.scan.width_deg)
        if self.block_deg <= 0 or width <= 0 or result.indexed_mask is None:
            return
        block_images = max(1, int(round(self.block_deg / width)))
        if self.images_seen < 2 * block_images:
            return
        from streamer.indexing.refinement import Observations
        from streamer.indexing.scan_varying import refine_scan_varying

        ok = result.indexed_mask
        obs = Observations(result.hkl[ok], spots.x_px[ok], spots.y_px[ok], spots.z_image[ok])
        self.scan_varying = refine_scan_varying(result.experiment, obs, block_images)

    def _look_for_second_lattice(self, spots: Spots, result: IndexingResult) -> None:
        if not self.want_second or result.indexed_mask is None:
            return
        from streamer.indexing.second_lattice import find_second_lattice

        self.second = find_second_lattice(result.experiment, spots, result.indexed_mask, self.options)
        if self.second is None or not self.second.indexed:
            log.info("no second lattice among the %d spots the model leaves unindexed",
                     int(np.count_nonzero(~result.indexed_mask)))
        else:
            log.info("second lattice: %s %s", self.second.lattice, np.round(self.second.unit_cell, 2))

    # -- reporting --------------------------------------------------------------------------
    def status(self) -> str:
        """"indexed", or "not indexed yet: <reason>" while the sweep runs and "not indexed:
        <reason>" once it has ended (`complete`): then no more data will come."""
        if self.model is not None:
            return "indexed"
        prefix = "not indexed" if self.complete else "not indexed yet"
        if self.experiment.scan.is_still:
            return f"{prefix}: no image" if self.result is None else f"{prefix}: {self.result.reason}"
        if self._waiting():
            if self.complete:
                return f"not indexed: too few images ({self.images_seen}; needs {self.min_images})"
            return (f"not indexed yet: waiting for data ({self.images_seen} images, spots over "
                    f"{self.spot_degrees:.1f} deg; needs {self.min_images} images and {self.min_degrees:.1f} deg)")
        if self.result is None:
            return f"{prefix}: no attempt"
        return f"{prefix}: {self.result.reason}"

    def summary(self) -> dict[str, Any]:
        """CONTRACT.md `indexing`: the accepted model, or the last attempt's figures of merit
        with indexed = False (never a cell presented as accepted when it was not)."""
        shown = self.model or self.result
        if shown is None:
            out = IndexingResult(False, "").summary()
        else:
            out = shown.summary()
        out["indexed"] = self.model is not None
        out["status"] = self.status()
        out["attempts"] = self.n_attempts
        if self.experiment.scan.is_still:
            out["stills_indexed"] = self.n_stills_indexed
        out["images_seen"] = self.images_seen
        out["spots_used"] = "all" if self.strongest >= 1.0 else f"strongest {100 * self.strongest:.0f}% by intensity"
        if self.model is None and shown is not None:
            out["candidate"] = {"lattice": out.get("lattice"), "unit_cell": out.get("unit_cell")}
            out.update({"lattice": None, "space_group": None, "unit_cell": None, "UB": None})
        if self.scan_varying is not None and self.model is not None:
            out["scan_varying"] = self.scan_varying.to_dict()
        if self.second is not None:
            s = self.second.summary()
            out["second_lattice"] = {k: s[k] for k in ("lattice", "unit_cell", "UB", "fraction_indexed", "rmsd_px")}
        return out
