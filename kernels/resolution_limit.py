"""Per-image resolution limit from spot I/sigma against d*^2 (DIALS 3.12 per-image analysis).

The compiled steps of `streamer.resolution_estimate.estimate_d_min` (see there for the
method): equal-population resolution bins, iterated Wilson outliers per bin, the 10th and
90th percentile points of ln(I/sigma) per bin, a line through each set of points, and the
highest-resolution spot below the upper line. The arithmetic is the numpy implementation's,
operation by operation, so the results are bit-identical to it (its copy in
tests/test_resolution_limit.py is the reference): every sum and mean reproduces numpy's
pairwise summation, and percentiles come from a stable sort (NaN last, as numpy's).
"""

from __future__ import annotations

import math

import numpy as np

from kernels.jit import njit
from kernels.pairwise import sum_like_numpy


@njit
def _equal_population_bins(d_star_sq, target_per_bin, max_bins, min_bins, d_min, d_max):
    """Fills d_min/d_max (A) of each bin (low to high resolution); returns the number of bins."""
    n = d_star_sq.shape[0]
    n_bins = max(min(n // target_per_bin, max_bins), min_bins)
    per_bin = n / n_bins
    d_sorted = 1.0 / np.sqrt(np.sort(d_star_sq))
    upper = d_sorted[0]
    for i in range(n_bins):
        k = int(math.floor((i + 1) * per_bin + 0.5)) - 1
        if k < 0:  # python's d_sorted[-1]
            k += n
        d_min[i] = d_sorted[k]
        d_max[i] = upper
        upper = d_sorted[k]
    return n_bins


@njit
def _wilson_outliers(intensity, ice, members, m, e_cutoff, out, keep, free):
    """out[k] = member k is a Wilson outlier (iterated; the mean over members not on ice)."""
    for k in range(m):
        out[k] = False
        keep[k] = k
    n_keep = m
    while n_keep > 0:
        n_free = 0
        for k in range(n_keep):
            j = members[keep[k]]
            if not ice[j]:
                free[n_free] = intensity[j]
                n_free += 1
        if n_free == 0:
            break
        root_sigma = math.sqrt(sum_like_numpy(free, n_free) / n_free)
        n_left = 0
        for k in range(n_keep):
            if np.sqrt(intensity[members[keep[k]]]) / root_sigma >= e_cutoff:
                out[keep[k]] = True
            else:
                keep[n_left] = keep[k]
                n_left += 1
        if n_left == n_keep:
            break
        n_keep = n_left


@njit
def _line(x, y, n, tmp):
    """Least-squares (slope, intercept) through (x[:n], y[:n])."""
    x_mean = sum_like_numpy(x, n) / n
    y_mean = sum_like_numpy(y, n) / n
    for i in range(n):
        dx = x[i] - x_mean
        tmp[i] = dx * dx
    sxx = sum_like_numpy(tmp, n)
    slope = 0.0
    if sxx > 0:
        for i in range(n):
            tmp[i] = (x[i] - x_mean) * (y[i] - y_mean)
        slope = sum_like_numpy(tmp, n) / sxx
    return slope, y_mean - slope * x_mean


@njit
def _resolution_limit(d_spacing, d_star_sq, intensity, log_i_over_sigma, ice, target_per_bin, max_bins, min_bins,
                      e_cutoff):
    n = d_spacing.shape[0]
    bin_d_min = np.empty(max(max_bins, min_bins))
    bin_d_max = np.empty(max(max_bins, min_bins))
    n_bins = _equal_population_bins(d_star_sq, target_per_bin, max_bins, min_bins, bin_d_min, bin_d_max)
    members = np.empty(n, dtype=np.int64)
    out = np.empty(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    free = np.empty(n)
    chosen = np.empty(n, dtype=np.int64)
    keys = np.empty(n)
    outliers = np.zeros(n, dtype=np.bool_)
    lower_x = np.empty(n_bins)
    lower_y = np.empty(n_bins)
    upper_x = np.empty(n_bins)
    upper_y = np.empty(n_bins)
    line_tmp = np.empty(n_bins)
    n_points = 0
    for b in range(n_bins):
        m = 0
        any_free = False
        for j in range(n):
            if (d_spacing[j] < bin_d_max[b]) & (d_spacing[j] >= bin_d_min[b]):
                members[m] = j
                m += 1
                any_free |= not ice[j]
        if not any_free:
            continue
        _wilson_outliers(intensity, ice, members, m, e_cutoff, out, keep, free)
        c = 0
        for k in range(m):
            j = members[k]
            outliers[j] = out[k]
            if not out[k] and not ice[j]:
                chosen[c] = j
                keys[c] = log_i_over_sigma[j]
                c += 1
        if c == 0:
            continue
        order = np.argsort(keys[:c], kind="mergesort")
        lo = chosen[order[int(math.floor(0.1 * c))]]
        hi = chosen[order[int(math.floor(0.9 * c))]]
        # DIALS pairs each percentile value with the other point's d*^2
        lower_y[n_points] = log_i_over_sigma[lo]
        upper_y[n_points] = log_i_over_sigma[hi]
        upper_x[n_points] = d_star_sq[lo]
        lower_x[n_points] = d_star_sq[hi]
        n_points += 1
    if n_points < 2:
        return -1.0
    m_upper, c_upper = _line(upper_x, upper_y, n_points, line_tmp)
    m_lower, _ = _line(lower_x, lower_y, n_points, line_tmp)
    if m_upper == m_lower:
        return -1.0
    best = -np.inf
    found = False
    for j in range(n):
        side = log_i_over_sigma[j] - c_upper - m_upper * d_star_sq[j]
        if (np.copysign(1.0, side) < 0) and not outliers[j] and not ice[j]:
            if not found or d_star_sq[j] > best:
                best = d_star_sq[j]
            found = True
    if not found:
        return -1.0
    return 1.0 / math.sqrt(best)


def resolution_limit(d_spacing: np.ndarray, d_star_sq: np.ndarray, intensity: np.ndarray,
                     log_i_over_sigma: np.ndarray, ice: np.ndarray, e_cutoff: float, target_per_bin: int = 20,
                     max_bins: int = 20, min_bins: int = 5) -> float:
    """Estimated resolution limit (A), or -1.

    Spots with finite positive d (A), d_star_sq = 1/d^2 (A^-2), nonzero intensity and its
    ln(I/sigma) (computed by the caller, with numpy's log), `ice` (bool) on an ice ring;
    `e_cutoff`: normalised amplitude from which a spot is a Wilson outlier.
    """
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (d_spacing, d_star_sq, intensity, log_i_over_sigma)]
    ice = np.ascontiguousarray(ice, dtype=np.bool_)
    if any(a.ndim != 1 or a.shape != ice.shape for a in arrays):
        raise ValueError("d_spacing, d_star_sq, intensity, log_i_over_sigma and ice must be 1D of one length")
    if target_per_bin < 1 or min_bins < 1 or max_bins < 1:
        raise ValueError("bin counts must be positive")
    if ice.size < 2:
        return -1.0
    return float(_resolution_limit(*arrays, ice, int(target_per_bin), int(max_bins), int(min_bins), float(e_cutoff)))


def equal_population_bins(d_star_sq: np.ndarray, target_per_bin: int = 20, max_bins: int = 20,
                          min_bins: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(d_min, d_max) arrays (A) of the resolution bins, low to high resolution, as DIALS's
    binner_equal_population: about `target_per_bin` spots each, min_bins to max_bins bins."""
    d_star_sq = np.ascontiguousarray(d_star_sq, dtype=np.float64)
    if d_star_sq.ndim != 1 or d_star_sq.size == 0:
        raise ValueError("d_star_sq must be a non-empty 1D array")
    if target_per_bin < 1 or min_bins < 1 or max_bins < 1:
        raise ValueError("bin counts must be positive")
    d_min, d_max = np.empty(max(max_bins, min_bins)), np.empty(max(max_bins, min_bins))
    n = _equal_population_bins(d_star_sq, int(target_per_bin), int(max_bins), int(min_bins), d_min, d_max)
    return d_min[:n], d_max[:n]


def wilson_outliers(intensity: np.ndarray, ice: np.ndarray, e_cutoff: float) -> np.ndarray:
    """Boolean: iterated Wilson outliers, sqrt(I / <I>) >= e_cutoff with <I> over spots not on ice."""
    intensity = np.ascontiguousarray(intensity, dtype=np.float64)
    ice = np.ascontiguousarray(ice, dtype=np.bool_)
    if intensity.ndim != 1 or intensity.shape != ice.shape:
        raise ValueError("intensity and ice must be 1D of one length")
    n = intensity.size
    out = np.zeros(n, dtype=np.bool_)
    _wilson_outliers(intensity, ice, np.arange(n, dtype=np.int64), n, float(e_cutoff), out,
                     np.empty(n, dtype=np.int64), np.empty(n))
    return out
