"""The per-image statistics of one image's spots and background profile, in one compiled call.

Composes `kernels.powder_rings` (spots on ice rings, rings in the background) and
`kernels.resolution_limit` (estimated d_min) with the counts DIALS's per-image analysis
reports, so an image pays one call instead of some sixty small numpy operations (which
cost most with the caches cold, after the threshold pass). Same arithmetic as the separate
steps, so the same values bit for bit; sums in numpy's order (`kernels.pairwise`).
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit
from kernels.pairwise import sum_like_numpy
from kernels.powder_rings import _excess_variance, _near_rings, _ring_flags
from kernels.resolution_limit import _resolution_limit


@njit
def _image_statistics(d, intensity, log_i_over_sigma, rings, half, profile, counts, ring_d_star_sq,
                      inner_ptr, inner_bins, side_ptr, side_bins, min_pixels, min_excess, n_sigma, density_factor,
                      min_spots, d_4a, min_no_ice, e_cutoff, target_per_bin, max_bins, min_bins, ice, ring_flags):
    """Fills ice (per spot) and ring_flags (per ring); returns (n_no_ice, n_4A, total
    intensity off the ice, estimated d_min or -1)."""
    n = d.shape[0]
    # spots on ice rings: finite, positive d only
    finite = np.empty(n, dtype=np.bool_)
    n_finite = 0
    for i in range(n):
        finite[i] = np.isfinite(d[i]) and d[i] > 0
        n_finite += finite[i]
    d_star_sq = np.empty(n)
    for i in range(n):
        d_star_sq[i] = 1.0 / (d[i] * d[i])
    near = np.empty(n_finite, dtype=np.bool_)
    finite_ds2 = np.empty(n_finite)
    k = 0
    for i in range(n):
        if finite[i]:
            finite_ds2[k] = d_star_sq[i]
            k += 1
    _near_rings(finite_ds2, rings, half, near)
    k = 0
    n_no_ice = 0
    n_4a = 0
    off_ice = np.empty(n)
    for i in range(n):
        ice[i] = False
        if finite[i]:
            ice[i] = near[k]
            k += 1
        if not ice[i]:
            off_ice[n_no_ice] = intensity[i]
            n_no_ice += 1
        if d[i] > d_4a:
            n_4a += 1
    total = sum_like_numpy(off_ice, n_no_ice)
    # estimated d_min: spots with nonzero intensity and finite positive d
    d_min = -1.0
    if n_no_ice > min_no_ice:
        m = 0
        for i in range(n):
            m += (abs(intensity[i]) > 0) & finite[i]
        if m >= 2:
            use_d, use_ds2, use_i, use_log = np.empty(m), np.empty(m), np.empty(m), np.empty(m)
            use_ice = np.empty(m, dtype=np.bool_)
            k = 0
            for i in range(n):
                if (abs(intensity[i]) > 0) & finite[i]:
                    use_d[k], use_ds2[k], use_i[k], use_log[k] = d[i], d_star_sq[i], intensity[i], log_i_over_sigma[i]
                    use_ice[k] = ice[i]
                    k += 1
            d_min = _resolution_limit(use_d, use_ds2, use_i, use_log, use_ice, target_per_bin, max_bins, min_bins,
                                      e_cutoff)
    # ice rings in the background profile (all spots, as 1/d^2, count towards the ring density)
    _ring_flags(profile, counts, ring_d_star_sq, inner_ptr, inner_bins, side_ptr, side_bins, d_star_sq, n > 0, half,
                3 * half, min_pixels, min_excess, n_sigma, density_factor, min_spots,
                _excess_variance(profile, counts), ring_flags)
    return n_no_ice, n_4a, total, d_min


def image_statistics(d_spacing: np.ndarray, intensity: np.ndarray, log_i_over_sigma: np.ndarray,
                     profile: np.ndarray, counts: np.ndarray, ring_table: np.ndarray, half_width: float,
                     shells: tuple, detection: tuple, d_4a: float, min_no_ice: int, e_cutoff: float,
                     target_per_bin: int = 20, max_bins: int = 20, min_bins: int = 5) -> tuple:
    """(ice, n_no_ice, n_4A, total_intensity, estimated_d_min, ring_flags) of one image.

    Spots: d_spacing (A), intensity and ln(I / sqrt(|I|)) per spot (numpy's log, as the
    caller computes it). ice (bool per spot): finite positive d within half_width (A^-2) of
    a ring of the ascending 1/d^2 `ring_table`; n_no_ice, n_4A (d > d_4a) and the intensity
    summed over the spots off the ice; estimated_d_min (`kernels.resolution_limit`, spots
    with nonzero intensity and finite positive d) when more than min_no_ice spots are off
    the ice, else -1. ring_flags (bool per ring of `shells` = (ring_d_star_sq, inner_ptr,
    inner_bins, side_ptr, side_bins)): `kernels.powder_rings.ring_flags` with `detection` =
    (min_pixels, min_excess, n_sigma, density_factor, min_spots), from the mean background
    `profile` and pixel `counts` per radial bin and all spots.
    """
    d_spacing = np.ascontiguousarray(d_spacing, dtype=np.float64)
    intensity = np.ascontiguousarray(intensity, dtype=np.float64)
    log_i_over_sigma = np.ascontiguousarray(log_i_over_sigma, dtype=np.float64)
    if d_spacing.ndim != 1 or intensity.shape != d_spacing.shape or log_i_over_sigma.shape != d_spacing.shape:
        raise ValueError("d_spacing, intensity and log_i_over_sigma must be 1D of one length")
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    profile = np.ascontiguousarray(profile)
    if profile.ndim != 1 or profile.shape != counts.shape or profile.dtype.kind != "f":
        raise ValueError("profile (float) and counts must be 1D of one length")
    ring_d_star_sq, *index = (np.ascontiguousarray(a, dtype=t) for a, t in
                              zip(shells, (np.float64, np.int64, np.int64, np.int64, np.int64)))
    if len(index[0]) != ring_d_star_sq.size + 1 or len(index[2]) != ring_d_star_sq.size + 1:
        raise ValueError("inner_ptr and side_ptr need one entry per ring plus one")
    if any(a.size and (a.min() < 0 or a.max() >= counts.size) for a in (index[1], index[3])):
        raise ValueError("shell bins must index the profile")
    if target_per_bin < 1 or min_bins < 1 or max_bins < 1:
        raise ValueError("bin counts must be positive")
    min_pixels, min_excess, n_sigma, density_factor, min_spots = detection
    ice = np.empty(d_spacing.shape, dtype=np.bool_)
    ring_flags = np.empty(ring_d_star_sq.shape, dtype=np.bool_)
    n_no_ice, n_4a, total, d_min = _image_statistics(
        d_spacing, intensity, log_i_over_sigma, np.ascontiguousarray(ring_table, dtype=np.float64), float(half_width),
        profile, counts, ring_d_star_sq, *index, int(min_pixels), float(min_excess), float(n_sigma),
        float(density_factor), int(min_spots), float(d_4a), int(min_no_ice), float(e_cutoff), int(target_per_bin),
        int(max_bins), int(min_bins), ice, ring_flags)
    return ice, int(n_no_ice), int(n_4a), float(total), float(d_min), ring_flags
