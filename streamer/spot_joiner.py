"""Join the per-image strong pixels of a rotation sweep into 3D spots, as images arrive.

DIALS labels the strong pixels of a whole sweep in 3D (6-connectivity: x, y and the next
image; `PixelListLabeller.labels_3d`). The collector gets per-image results one at a time
(possibly out of order), so `SpotJoiner` keeps only the spots still *open* (touching the
last image joined): each new image's pixels are labelled in 2D (4-connectivity), pixels at
the same (x, y) on consecutive images are united (union-find over 2D pieces), and a 3D spot
whose last image is behind the newest one can grow no more: it is finished and emitted
with the same centroid/intensity/filters as DIALS (`kernels.centroids`). The result is
identical to labelling the whole stack at once (tests/test_spot_joiner.py checks this).
Images are taken in order; early arrivals wait in a buffer; a missing image (dropped frame)
ends every open spot when a later image is joined, or at `finish()`. Stills
(`still=True`) never connect across images.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from kernels.centroids import spot_filter, spot_moments
from kernels.labelling import label_pixels

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spots3D:
    """Finished spots, columnar: centroid x_px, y_px, z_image (0-based frame units), intensity
    (summed raw counts), n_pixels, bbox (n, 6) [x0, x1, y0, y1, z0, z1) half-open, variance (n, 3),
    first_pixel (n,) the smallest stack index z*ny*nx + y*nx + x (DIALS's spot order)."""

    x_px: np.ndarray
    y_px: np.ndarray
    z_image: np.ndarray
    intensity: np.ndarray
    n_pixels: np.ndarray
    bbox: np.ndarray
    variance: np.ndarray
    first_pixel: np.ndarray

    def __len__(self) -> int:
        return int(self.x_px.shape[0])

    @classmethod
    def empty(cls) -> Spots3D:
        f = np.zeros(0)
        return cls(f, f, f, f, np.zeros(0, np.int64), np.zeros((0, 6), np.int64), np.zeros((0, 3)),
                   np.zeros(0, np.int64))

    @classmethod
    def concatenate(cls, parts: list[Spots3D]) -> Spots3D:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        merged = cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__))
        order = np.argsort(merged.first_pixel, kind="stable")
        return cls(*(getattr(merged, name)[order] for name in cls.__dataclass_fields__))


class SpotJoiner:
    """Incremental 3D labelling of per-image strong pixels; `add` returns the spots it finished.

    The open spots are kept as arrays (their pixels, each with its open spot's number), so
    joining an image is a few array passes whatever its number of spots: its 2D pieces and the
    open spots they touch on the previous image are the nodes of a graph whose connected
    components (scipy) are the spots after it; a component without a piece of the new image
    is finished. (A union-find over Python objects cost ~2 us per piece: 20 ms per image with
    10,000 strong pixels, slower than the workers.)
    """

    def __init__(self, image_shape: tuple[int, int], min_spot_size: int = 3, max_spot_size: int = 1000,
                 max_separation: float | None = 2.0, still: bool = False, first_image: int = 0):
        self.ny, self.nx = (int(n) for n in image_shape)
        self.plane = self.ny * self.nx
        self.min_spot_size = min_spot_size
        self.max_spot_size = max_spot_size
        self.max_separation = max_separation
        self.still = still
        self.next_image = first_image
        self.pending: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.n_open = 0  # open spots (touching the last image joined), numbered 0..n_open-1
        self.open_index = np.zeros(0, dtype=np.int64)  # their pixels: stack index z*ny*nx + y*nx + x,
        self.open_value = np.zeros(0, dtype=np.float64)  # raw value,
        self.open_spot = np.zeros(0, dtype=np.int64)  # and spot number
        self.last_index = np.zeros(0, dtype=np.int64)  # flat 2D indices of the last image joined
        self.last_spot = np.zeros(0, dtype=np.int64)  # their open spot numbers
        self.last_image: int | None = None
        self.n_finished = 0

    # ------------------------------------------------------------------ public
    def add(self, image_number: int, pixel_index: np.ndarray, pixel_value: np.ndarray) -> Spots3D:
        """Strong pixels (ascending flat y*nx + x, raw values) of one image; returns finished spots."""
        if image_number < self.next_image or image_number in self.pending:
            log.warning("image %d joined already or twice; ignored", image_number)
            return Spots3D.empty()
        self.pending[image_number] = (np.asarray(pixel_index, dtype=np.int64), np.asarray(pixel_value, np.float64))
        finished = []
        while self.next_image in self.pending:
            index, value = self.pending.pop(self.next_image)
            finished.append(self._join(self.next_image, index, value))
            self.next_image += 1
        return Spots3D.concatenate(finished)

    def skip(self, image_number: int) -> Spots3D:
        """An image that will never come (dropped): ends the spots open across it."""
        return self.add(image_number, np.zeros(0, np.int64), np.zeros(0))

    def finish(self) -> Spots3D:
        """Join whatever waits (gaps end spots) and finish every open spot."""
        finished = []
        for image_number in sorted(self.pending):
            index, value = self.pending.pop(image_number)
            finished.append(self._join(image_number, index, value))
        finished.append(self._end_open())
        return Spots3D.concatenate(finished)

    # ------------------------------------------------------------------ internals
    def _keep_open(self, n: int, index: np.ndarray, value: np.ndarray, spot: np.ndarray) -> None:
        self.n_open, self.open_index, self.open_value, self.open_spot = n, index, value, spot

    def _end_open(self) -> Spots3D:
        """Finish every open spot (a gap, a still, the end): nothing is left to grow."""
        spots = self._emit(self.open_index, self.open_value, self.open_spot)
        self._keep_open(0, np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))
        self.last_index = np.zeros(0, dtype=np.int64)
        self.last_spot = np.zeros(0, dtype=np.int64)
        return spots

    def _join(self, image_number: int, index: np.ndarray, value: np.ndarray) -> Spots3D:
        adjacent = not self.still and self.last_image is not None and image_number == self.last_image + 1
        done = []
        if not adjacent:  # nothing open can grow into this image
            done.append(self._end_open())
        labels, n = label_pixels(index, (self.ny, self.nx))
        m = self.n_open
        # nodes: the open spots 0..m-1 and the image's pieces m..m+n-1; edges: same (x, y) on both images
        _, a, b = np.intersect1d(self.last_index, index, assume_unique=True, return_indices=True)
        graph = coo_matrix((np.ones(a.size, np.int8), (self.last_spot[a], labels[b].astype(np.int64) + m)),
                           shape=(m + n, m + n))
        n_comp, comp = connected_components(graph, directed=False)
        grows = np.zeros(n_comp, dtype=bool)
        grows[comp[m:]] = True  # components with a piece of this image stay open
        old_comp = comp[self.open_spot]
        ends = ~grows[old_comp]
        done.append(self._emit(self.open_index[ends], self.open_value[ends], old_comp[ends]))
        number = np.cumsum(grows) - 1  # the open components, renumbered 0..
        new_spot = number[comp[labels.astype(np.int64) + m]]
        stays = ~ends
        self._keep_open(int(grows.sum()),
                        np.concatenate((self.open_index[stays], index + np.int64(image_number) * self.plane)),
                        np.concatenate((self.open_value[stays], value)),
                        np.concatenate((number[old_comp[stays]], new_spot)))
        self.last_index = index
        self.last_spot = new_spot
        self.last_image = image_number
        return Spots3D.concatenate(done)

    def _emit(self, index: np.ndarray, value: np.ndarray, spot: np.ndarray) -> Spots3D:
        """The spots made of these pixels (each with its spot's number), centroided and filtered."""
        if not index.size:
            return Spots3D.empty()
        numbers, labels = np.unique(spot, return_inverse=True)
        labels = labels.astype(np.int32)
        order = np.lexsort((index, labels))  # by spot, then pixel
        index = index[order]
        labels = labels[order]
        moments = spot_moments(index, value[order], labels, len(numbers), (self.ny, self.nx))
        self.n_finished += len(numbers)
        starts = np.searchsorted(labels, np.arange(len(numbers)))
        first = index[starts].astype(np.int64)
        keep = spot_filter(moments, self.min_spot_size, self.max_spot_size, self.max_separation)
        m = moments.select(keep)
        spots = Spots3D(m.centroid[:, 0].copy(), m.centroid[:, 1].copy(), m.centroid[:, 2].copy(), m.intensity,
                        m.n_pixels, m.bbox, m.variance, first[keep])
        return Spots3D.concatenate([spots])


def warm_up_kernels() -> None:
    """Compile (or load from numba's cache) the kernels joining uses, before a run starts:
    compiling later would hold the collector process's GIL while frames arrive."""
    joiner = SpotJoiner((8, 8), min_spot_size=1)
    pixels = np.array([9, 10, 17], dtype=np.int64)
    for image in range(2):
        joiner.add(image, pixels, np.full(3, 5.0, dtype=np.float32))
    joiner.finish()


class SpotJoinerStage:
    """The collector's sweep stage (`streamer.collector.SweepStage`): joins each processed
    frame's strong pixels (`result.spots["pixel_index"/"pixel_value"]`) and keeps the
    finished 3D spots (`self.spots()`); stills keep their 2D pieces per image."""

    def __init__(self, series: Any, config: Any = None):
        from streamer.perimage import default_min_spot_size

        sf = getattr(config, "spotfinding", None)
        self.joiner = SpotJoiner(
            tuple(series.image_shape),
            min_spot_size=(sf.min_spot_size if sf and sf.min_spot_size else default_min_spot_size(series)),
            max_spot_size=sf.max_spot_size if sf else 1000,
            max_separation=sf.max_separation if sf else 2.0,
            still=bool(series.is_still),
        )
        self._parts: list[Spots3D] = []

    def add(self, series: Any, result: Any) -> None:
        spots = getattr(result, "spots", {}) or {}
        if "pixel_index" not in spots:
            return
        self._parts.append(self.joiner.add(int(result.image_number), spots["pixel_index"], spots["pixel_value"]))

    def finish(self) -> Mapping[str, Any]:
        self._parts.append(self.joiner.finish())
        return {}

    def spots(self) -> Spots3D:
        """All spots finished so far, in DIALS order (first pixel)."""
        merged = Spots3D.concatenate(self._parts)
        self._parts = [merged]
        return merged
