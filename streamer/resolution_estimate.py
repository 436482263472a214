"""Per-image resolution estimate from spot I/sigma against resolution (DIALS per-image analysis).

Re-implements DIALS 3.12 `per_image_analysis.estimate_resolution_limit` (the `estimated_d_min`
that beamlines read from `dials.find_spots_server`): with spot-finding intensities
(variance = |I|, no background), take ln(I/sigma) against d*^2 = 1/d^2; split the spots into
equal-population resolution bins (about 20 per bin, 5 to 20 bins); in each bin drop Wilson
outliers (normalised amplitude |E| >= sqrt(-ln 0.01), iterated; Read 1999, Acta Cryst. D55,
1759) and ice-ring spots, take the 10th and 90th percentile points; fit a line to each set
of percentile points; the estimate is the highest-resolution spot (not an outlier, not on
ice) lying below the upper line. -1 when it cannot be estimated (DIALS's value; the
caller needs more than 10 spots off the ice rings).
"""

from __future__ import annotations

import math

import numpy as np

E_CUTOFF = math.sqrt(-math.log(1e-2))


def _nint(x: float) -> int:
    return int(math.floor(x + 0.5))


def equal_population_bins(d_star_sq: np.ndarray, target_per_bin: int = 20, max_bins: int = 20,
                          min_bins: int = 5) -> list[tuple[float, float]]:
    """(d_min, d_max) per bin (A), from low to high resolution, as DIALS's binner_equal_population."""
    n_bins = min(len(d_star_sq) // target_per_bin, max_bins)
    n_bins = max(n_bins, min_bins)
    per_bin = len(d_star_sq) / n_bins
    d_sorted = 1.0 / np.sqrt(np.sort(d_star_sq))
    bins = []
    d_max = d_sorted[0]
    for i in range(n_bins):
        d_min = d_sorted[_nint((i + 1) * per_bin) - 1]
        bins.append((float(d_min), float(d_max)))
        d_max = d_min
    return bins


def wilson_outliers(intensity: np.ndarray, ice: np.ndarray) -> np.ndarray:
    """Iterated Wilson outliers: sqrt(I / <I>_not_ice) >= E_CUTOFF."""
    outliers = np.zeros(intensity.shape, dtype=bool)
    keep = np.arange(intensity.size)
    while keep.size:
        free = intensity[keep][~ice[keep]]
        if free.size == 0:
            break
        sigma_n = float(np.mean(free))
        with np.errstate(invalid="ignore", divide="ignore"):
            new = np.sqrt(intensity[keep]) / math.sqrt(sigma_n) >= E_CUTOFF
        if not new.any():
            break
        outliers[keep[new]] = True
        keep = keep[~new]
    return outliers


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    x_mean, y_mean = float(np.mean(x)), float(np.mean(y))
    sxx = float(np.sum((x - x_mean) ** 2))
    slope = float(np.sum((x - x_mean) * (y - y_mean)) / sxx) if sxx > 0 else 0.0
    return slope, y_mean - slope * x_mean


def estimate_d_min(d_spacing: np.ndarray, intensity: np.ndarray, ice: np.ndarray | None = None) -> float:
    """Estimated resolution limit (A) of one image's spots, or -1."""
    d_spacing = np.asarray(d_spacing, dtype=np.float64)
    intensity = np.asarray(intensity, dtype=np.float64)
    ice = np.zeros(d_spacing.shape, dtype=bool) if ice is None else np.asarray(ice, dtype=bool)
    use = (np.abs(intensity) > 0) & np.isfinite(d_spacing) & (d_spacing > 0)
    d_spacing, intensity, ice = d_spacing[use], intensity[use], ice[use]
    if d_spacing.size < 2:
        return -1.0
    d_star_sq = 1.0 / d_spacing**2
    with np.errstate(invalid="ignore", divide="ignore"):
        log_i_over_sigma = np.log(intensity / np.sqrt(np.abs(intensity)))
    lower_x, lower_y, upper_x, upper_y = [], [], [], []
    outliers_all = np.zeros(d_spacing.shape, dtype=bool)
    for d_min, d_max in equal_population_bins(d_star_sq):
        in_bin = (d_spacing < d_max) & (d_spacing >= d_min)
        if not (in_bin & ~ice).any():
            continue
        members = np.flatnonzero(in_bin)
        out = wilson_outliers(intensity[members], ice[members])
        outliers_all[members] = out
        chosen = members[~out & ~ice[members]]
        if chosen.size == 0:
            continue
        order = np.argsort(log_i_over_sigma[chosen], kind="stable")
        lo = chosen[order[int(math.floor(0.1 * order.size))]]
        hi = chosen[order[int(math.floor(0.9 * order.size))]]
        # DIALS pairs each percentile value with the other point's d*^2; kept for identical results
        lower_y.append(log_i_over_sigma[lo])
        upper_y.append(log_i_over_sigma[hi])
        upper_x.append(d_star_sq[lo])
        lower_x.append(d_star_sq[hi])
    if len(upper_x) < 2:
        return -1.0
    m_upper, c_upper = _line(np.array(upper_x), np.array(upper_y))
    m_lower, _ = _line(np.array(lower_x), np.array(lower_y))
    if m_upper == m_lower:
        return -1.0
    side = log_i_over_sigma - c_upper - m_upper * d_star_sq
    inside = (np.copysign(1.0, side) < 0) & ~outliers_all & ~ice
    if not inside.any():
        return -1.0
    return float(1.0 / math.sqrt(np.max(d_star_sq[inside])))
