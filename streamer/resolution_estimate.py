"""Per-image resolution estimate from spot I/sigma against resolution (DIALS per-image analysis).

Re-implements DIALS 3.12 `per_image_analysis.estimate_resolution_limit` (the `estimated_d_min`
that beamlines read from `dials.find_spots_server`): with spot-finding intensities
(variance = |I|, no background), take ln(I/sigma) against d*^2 = 1/d^2; split the spots into
equal-population resolution bins (about 20 per bin, 5 to 20 bins); in each bin drop Wilson
outliers (normalised amplitude |E| >= sqrt(-ln 0.01), iterated; Read 1999, Acta Cryst. D55,
1759) and ice-ring spots, take the 10th and 90th percentile points; fit a line to each set
of percentile points; the estimate is the highest-resolution spot (not an outlier, not on
ice) lying below the upper line. -1 when it cannot be estimated (DIALS's value; the
caller needs more than 10 spots off the ice rings). The steps after the spot selection run
compiled (`kernels.resolution_limit`), with numpy's arithmetic, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from kernels import resolution_limit as kernel

E_CUTOFF = math.sqrt(-math.log(1e-2))


def equal_population_bins(d_star_sq: np.ndarray, target_per_bin: int = 20, max_bins: int = 20,
                          min_bins: int = 5) -> list[tuple[float, float]]:
    """(d_min, d_max) per bin (A), from low to high resolution, as DIALS's binner_equal_population."""
    d_min, d_max = kernel.equal_population_bins(d_star_sq, target_per_bin, max_bins, min_bins)
    return [(float(lo), float(hi)) for lo, hi in zip(d_min, d_max)]


def wilson_outliers(intensity: np.ndarray, ice: np.ndarray) -> np.ndarray:
    """Iterated Wilson outliers: sqrt(I / <I>_not_ice) >= E_CUTOFF."""
    return kernel.wilson_outliers(intensity, ice, E_CUTOFF)


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
    return kernel.resolution_limit(d_spacing, d_star_sq, intensity, log_i_over_sigma, ice, E_CUTOFF)
