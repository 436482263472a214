"""Azimuthal (radial) average of the background in resolution bins.

The bin of every pixel (int16, -1 = no bin) is computed once per series from the resolution
map; per frame the kernel sums the values of valid, non-spot pixels per bin. Rows are
sampled every `row_step` rows (the background is smooth; this keeps the pass cheap).
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit


@njit
def _radial_sums(image, mask, bins, exclude, lower, upper, row_step, sums, counts):
    ny, nx = image.shape
    for j in range(0, ny, row_step):
        for i in range(nx):
            b = bins[j, i]
            v = np.float64(image[j, i])
            if (b >= 0) & (mask[j, i] != 0) & (exclude[j, i] == 0) & (v > lower) & (v < upper):
                sums[b] += v
                counts[b] += 1


def bin_map(d_star_sq: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int16 bin index of every pixel for ascending bin `edges` (-1 outside)."""
    if len(edges) - 1 > np.iinfo(np.int16).max:
        raise ValueError("too many bins")
    idx = np.searchsorted(edges, d_star_sq, side="right") - 1
    idx[(idx < 0) | (idx >= len(edges) - 1) | ~np.isfinite(d_star_sq)] = -1
    return idx.astype(np.int16)


def radial_profile(image: np.ndarray, mask: np.ndarray, bins: np.ndarray, n_bins: int, exclude: np.ndarray,
                   trusted_range: tuple[float, float], row_step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(mean value per bin as float32 (NaN where empty), pixel count per bin as int64).

    `mask` uint8 nonzero = usable; `exclude` uint8 nonzero = leave out (spot pixels).
    """
    if not (image.shape == mask.shape == bins.shape == exclude.shape):
        raise ValueError("image, mask, bins and exclude must have the same shape")
    if mask.dtype != np.uint8 or exclude.dtype != np.uint8 or bins.dtype != np.int16:
        raise ValueError("mask/exclude must be uint8 and bins int16")
    if row_step < 1:
        raise ValueError("row_step must be >= 1")
    sums = np.zeros(n_bins, dtype=np.float64)
    counts = np.zeros(n_bins, dtype=np.int64)
    _radial_sums(image, mask, bins, exclude, float(trusted_range[0]), float(trusted_range[1]), int(row_step),
                 sums, counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (sums / counts).astype(np.float32)
    return mean, counts
