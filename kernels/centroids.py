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
    """Fills the per-label outputs; returns False, before summing anything, if a label lies
    outside [0, n_labels)."""
    n = index.shape[0]
    for s in range(n_labels):
        bbox[s, 0] = nx
        bbox[s, 1] = 0
        bbox[s, 2] = ny
        bbox[s, 3] = 0
        bbox[s, 4] = 1 << 62
        bbox[s, 5] = -(1 << 62)
        peak_value[s] = -np.inf
    for t in range(n):
        if labels[t] < 0 or labels[t] >= n_labels:
            return False
    # pixels are taken in runs: consecutive entries of one label on one row, ascending; a
    # run's sums are accumulated in registers, in the same order as pixel by pixel
    row_start = np.int64(0)
    row_end = np.int64(0)
    y = np.int64(0)
    z = np.int64(0)
    t = 0
    while t < n:
        s = labels[t]
        p = np.int64(index[t])
        if p >= row_end or p < row_start:
            row = p // nx
            row_start = row * nx
            row_end = row_start + nx
            z = row // ny
            y = row - z * ny
        x_first = p - row_start
        w_sum = sums[s, 0]
        w2_sum = sums[s, 1]
        wx_sum = sums[s, 2]
        wy_sum = sums[s, 3]
        wz_sum = sums[s, 4]
        best = peak_value[s]
        best_x = np.int64(-1)  # the run's brightest pixel so far, if brighter than the spot's before
        count = 0
        while True:
            x = p - row_start
            w = values[t]
            brighter = w > best  # selects, not a branch (which the rise and fall of a spot mispredicts)
            best = w if brighter else best
            best_x = x if brighter else best_x
            w_sum += w
            w2_sum += w * w
            wx_sum += w * (x + 0.5)
            wy_sum += w * (y + 0.5)
            wz_sum += w * (z + 0.5)
            count += 1
            if t + 1 < n and labels[t + 1] == s:
                q = np.int64(index[t + 1])
                if (q > p) & (q < row_end):
                    t += 1
                    p = q
                    continue
            break
        x_last = p - row_start
        if best_x >= 0:
            peak[s, 0] = best_x + 0.5
            peak[s, 1] = y + 0.5
            peak[s, 2] = z + 0.5
        sums[s, 0] = w_sum
        sums[s, 1] = w2_sum
        sums[s, 2] = wx_sum
        sums[s, 3] = wy_sum
        sums[s, 4] = wz_sum
        peak_value[s] = best
        n_pixels[s] += count
        if x_first < bbox[s, 0]:
            bbox[s, 0] = x_first
        if x_last + 1 > bbox[s, 1]:
            bbox[s, 1] = x_last + 1
        if y < bbox[s, 2]:
            bbox[s, 2] = y
        if y + 1 > bbox[s, 3]:
            bbox[s, 3] = y + 1
        if z < bbox[s, 4]:
            bbox[s, 4] = z
        if z + 1 > bbox[s, 5]:
            bbox[s, 5] = z + 1
        t += 1
    for s in range(n_labels):
        if sums[s, 0] > 0:
            for d in range(3):
                centroid[s, d] = sums[s, 2 + d] / sums[s, 0]
        else:
            centroid[s, 0] = 0.5 * (bbox[s, 0] + bbox[s, 1])
            centroid[s, 1] = 0.5 * (bbox[s, 2] + bbox[s, 3])
            centroid[s, 2] = 0.5 * (bbox[s, 4] + bbox[s, 5])
    row_start = np.int64(0)
    row_end = np.int64(0)
    t = 0
    while t < n:
        s = labels[t]
        p = np.int64(index[t])
        if sums[s, 0] > 0:
            if p >= row_end or p < row_start:
                row = p // nx
                row_start = row * nx
                row_end = row_start + nx
                z = row // ny
                y = row - z * ny
            cx = centroid[s, 0]
            cy = centroid[s, 1]
            cz = centroid[s, 2]
            vx = variance[s, 0]
            vy = variance[s, 1]
            vz = variance[s, 2]
            while True:
                x = p - row_start
                w = values[t]
                vx += w * (x + 0.5 - cx) ** 2
                vy += w * (y + 0.5 - cy) ** 2
                vz += w * (z + 0.5 - cz) ** 2
                if t + 1 < n and labels[t + 1] == s:
                    q = np.int64(index[t + 1])
                    if (q > p) & (q < row_end):
                        t += 1
                        p = q
                        continue
                break
            variance[s, 0] = vx
            variance[s, 1] = vy
            variance[s, 2] = vz
        t += 1
    for s in range(n_labels):
        big_w = sums[s, 0]
        denom = big_w * big_w - sums[s, 1]
        for d in range(3):
            variance[s, d] = variance[s, d] * big_w / denom if (big_w > 0) & (denom > 0) else 0.0
        if bbox[s, 5] == bbox[s, 4] + 1:
            centroid[s, 2] = bbox[s, 4] + 0.5
    return True


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
    """Moments of each labelled spot; `index` flat indices (int32 or int64) into `shape` ((ny, nx)
    or (nz, ny, nx)), `values` the raw pixel values (any real dtype), `labels` in [0, n_labels)."""
    ny, nx = shape[-2], shape[-1]
    index = np.asarray(index)
    index = np.ascontiguousarray(index if index.dtype in (np.int32, np.int64) else index.astype(np.int64))
    values = np.ascontiguousarray(values, dtype=np.float64)
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    if not (index.ndim == values.ndim == labels.ndim == 1 and index.size == values.size == labels.size):
        raise ValueError("index, values and labels must be 1D arrays of the same length")
    n_pixels = np.zeros(n_labels, dtype=np.int64)
    bbox = np.zeros((n_labels, 6), dtype=np.int64)
    sums = np.zeros((n_labels, 5), dtype=np.float64)
    peak_value = np.empty(n_labels, dtype=np.float64)
    peak = np.zeros((n_labels, 3), dtype=np.float64)
    centroid = np.zeros((n_labels, 3), dtype=np.float64)
    variance = np.zeros((n_labels, 3), dtype=np.float64)
    if (n_labels or index.size) and not _spot_moments(index, values, labels, int(n_labels), int(ny), int(nx), n_pixels,
                                                      bbox, sums, peak_value, peak, centroid, variance):
        raise ValueError("labels must lie in [0, n_labels)")
    return SpotMoments(centroid, variance, sums[:, 0].copy(), sums[:, 1].copy(), n_pixels, bbox, peak)


def spot_filter(moments: SpotMoments, min_spot_size: int, max_spot_size: int,
                max_separation: float | None) -> np.ndarray:
    """Boolean selection of DIALS's spot filters: min_spot_size <= n_pixels <= max_spot_size
    and (unless None) |peak - centroid| <= max_separation (px, 3D)."""
    keep = (moments.n_pixels >= min_spot_size) & (moments.n_pixels <= max_spot_size)
    if max_separation is not None:
        keep &= np.linalg.norm(moments.peak - moments.centroid, axis=1) <= max_separation
    return keep
