"""Spot centroids, variances, intensities, bounding boxes and peaks from labelled pixels.

Follows DIALS 3.12 spot finding (`PixelListShoeboxCreator`, `Shoebox::centroid_valid`,
`CentroidPoints`, `summed_intensity`, `peak_coordinates`): a spot's centroid is the mean of
its pixel-centre coordinates (x + 0.5, y + 0.5, z + 0.5) weighted by the raw pixel values;
its variance the unbiased weighted variance sum(w d^2) * W / (W^2 - sum(w^2)); its
intensity the sum of the raw values (no background subtracted); its bbox the half-open
pixel range [x0, x1, y0, y1, z0, z1]; its peak the centre of its first brightest pixel in
(z, y, x) order. A spot on one image has z = z0 + 0.5. A spot whose values sum to <= 0 gets
the bbox middle as centroid and zero variance, as DIALS does.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit


@njit
def _spot_moments(index, values, labels, n_labels, ny, nx, n_pixels, bbox, sums, peak_value, peak, centroid,
                  variance):
    plane = ny * nx
    n = index.shape[0]
    for s in range(n_labels):
        bbox[s, 0] = nx
        bbox[s, 1] = 0
        bbox[s, 2] = ny
        bbox[s, 3] = 0
        bbox[s, 4] = 1 << 62
        bbox[s, 5] = -(1 << 62)
        peak_value[s] = -np.inf
    # sums: 0 W, 1 sum w^2, 2..4 sum w*c
    for t in range(n):
        s = labels[t]
        p = index[t]
        z = p // plane
        rest = p - z * plane
        y = rest // nx
        x = rest - y * nx
        w = values[t]
        n_pixels[s] += 1
        if x < bbox[s, 0]:
            bbox[s, 0] = x
        if x + 1 > bbox[s, 1]:
            bbox[s, 1] = x + 1
        if y < bbox[s, 2]:
            bbox[s, 2] = y
        if y + 1 > bbox[s, 3]:
            bbox[s, 3] = y + 1
        if z < bbox[s, 4]:
            bbox[s, 4] = z
        if z + 1 > bbox[s, 5]:
            bbox[s, 5] = z + 1
        if w > peak_value[s]:
            peak_value[s] = w
            peak[s, 0] = x + 0.5
            peak[s, 1] = y + 0.5
            peak[s, 2] = z + 0.5
        sums[s, 0] += w
        sums[s, 1] += w * w
        sums[s, 2] += w * (x + 0.5)
        sums[s, 3] += w * (y + 0.5)
        sums[s, 4] += w * (z + 0.5)
    for s in range(n_labels):
        if sums[s, 0] > 0:
            for d in range(3):
                centroid[s, d] = sums[s, 2 + d] / sums[s, 0]
        else:
            centroid[s, 0] = 0.5 * (bbox[s, 0] + bbox[s, 1])
            centroid[s, 1] = 0.5 * (bbox[s, 2] + bbox[s, 3])
            centroid[s, 2] = 0.5 * (bbox[s, 4] + bbox[s, 5])
    for t in range(n):
        s = labels[t]
        if sums[s, 0] > 0:
            p = index[t]
            z = p // plane
            rest = p - z * plane
            y = rest // nx
            x = rest - y * nx
            w = values[t]
            variance[s, 0] += w * (x + 0.5 - centroid[s, 0]) ** 2
            variance[s, 1] += w * (y + 0.5 - centroid[s, 1]) ** 2
            variance[s, 2] += w * (z + 0.5 - centroid[s, 2]) ** 2
    for s in range(n_labels):
        big_w = sums[s, 0]
        denom = big_w * big_w - sums[s, 1]
        for d in range(3):
            variance[s, d] = variance[s, d] * big_w / denom if (big_w > 0) & (denom > 0) else 0.0
        if bbox[s, 5] == bbox[s, 4] + 1:
            centroid[s, 2] = bbox[s, 4] + 0.5


class SpotMoments:
    """Per-spot columns (one row per label), as numpy arrays.

    centroid (n, 3) px (x, y, z frames), variance (n, 3) px^2 (unbiased weighted variance of
    the pixel positions), intensity (n,) summed raw counts, n_pixels (n,), bbox (n, 6) int
    [x0, x1, y0, y1, z0, z1) half-open, peak (n, 3) brightest pixel centre.
    """

    __slots__ = ("centroid", "variance", "intensity", "intensity_sq", "n_pixels", "bbox", "peak")

    def __init__(self, centroid, variance, intensity, intensity_sq, n_pixels, bbox, peak):
        self.centroid = centroid
        self.variance = variance
        self.intensity = intensity
        self.intensity_sq = intensity_sq
        self.n_pixels = n_pixels
        self.bbox = bbox
        self.peak = peak

    def select(self, keep: np.ndarray) -> SpotMoments:
        return SpotMoments(*(getattr(self, name)[keep] for name in self.__slots__))

    def __len__(self) -> int:
        return int(self.n_pixels.shape[0])


def spot_moments(index: np.ndarray, values: np.ndarray, labels: np.ndarray, n_labels: int,
                 shape: tuple[int, ...]) -> SpotMoments:
    """Moments of each labelled spot; `index` flat indices into `shape` ((ny, nx) or (nz, ny, nx)),
    `values` the raw pixel values (any real dtype), `labels` in [0, n_labels)."""
    ny, nx = shape[-2], shape[-1]
    index = np.ascontiguousarray(index, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    if not (index.ndim == values.ndim == labels.ndim == 1 and index.size == values.size == labels.size):
        raise ValueError("index, values and labels must be 1D arrays of the same length")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError("labels must lie in [0, n_labels)")
    n_pixels = np.zeros(n_labels, dtype=np.int64)
    bbox = np.zeros((n_labels, 6), dtype=np.int64)
    sums = np.zeros((n_labels, 5), dtype=np.float64)
    peak_value = np.empty(n_labels, dtype=np.float64)
    peak = np.zeros((n_labels, 3), dtype=np.float64)
    centroid = np.zeros((n_labels, 3), dtype=np.float64)
    variance = np.zeros((n_labels, 3), dtype=np.float64)
    if n_labels:
        _spot_moments(index, values, labels, int(n_labels), int(ny), int(nx), n_pixels, bbox, sums, peak_value,
                      peak, centroid, variance)
    return SpotMoments(centroid, variance, sums[:, 0].copy(), sums[:, 1].copy(), n_pixels, bbox, peak)


def spot_filter(moments: SpotMoments, min_spot_size: int, max_spot_size: int,
                max_separation: float | None) -> np.ndarray:
    """Boolean selection of DIALS's spot filters: min_spot_size <= n_pixels <= max_spot_size
    and (unless None) |peak - centroid| <= max_separation (px, 3D)."""
    keep = (moments.n_pixels >= min_spot_size) & (moments.n_pixels <= max_spot_size)
    if max_separation is not None:
        keep &= np.linalg.norm(moments.peak - moments.centroid, axis=1) <= max_separation
    return keep
