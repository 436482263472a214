"""Powder (ice) rings on one image: spots close to a ring, and rings that stand out of the background.

Compiled steps of `streamer.ice_rings` (see there for the method and its DIALS origin),
with the arithmetic of the numpy implementation they replace, operation by operation, so
the answers are the same bit for bit (sums in numpy's pairwise order, `kernels.pairwise`).
Ring positions and which radial bins form each ring's shell are set up once per series by
the caller; per image the kernels only read the profile, the counts and the spots.
"""

from __future__ import annotations

import math

import numpy as np

from kernels.jit import njit
from kernels.pairwise import sum_like_numpy


@njit
def _near_rings(d_star_sq, rings, half, out):
    """out[i] = some ring lies within `half` of d_star_sq[i] (the two rings around it in the
    sorted `rings` are compared, as numpy's searchsorted then clip would pick them)."""
    n_rings = rings.shape[0]
    for i in range(d_star_sq.shape[0]):
        x = d_star_sq[i]
        pos = np.searchsorted(rings, x)
        near = np.inf
        if n_rings:
            for shift in (-1, 0):
                k = min(max(pos + shift, 0), n_rings - 1)
                dist = abs(x - rings[k])
                if dist < near:
                    near = dist
        out[i] = near < half


@njit
def _shell_mean(profile, counts, bins, lo, hi, n, tmp):
    """Count-weighted mean profile over bins[lo:hi] (numpy: (profile * counts).sum() / n)."""
    for k in range(lo, hi):
        b = bins[k]
        tmp[k - lo] = np.float64(profile[b]) * np.float64(counts[b])
    return sum_like_numpy(tmp, hi - lo) / np.float64(n)


CHI2_1_MEDIAN = 0.454936423119572  # the median of chi-squared with one degree of freedom
MIN_SCATTER_BINS = 20  # fewer usable bins: no estimate of the excess variance (0)


@njit
def _excess_variance(profile, counts):
    """Per-pixel variance of the background beyond Poisson's (its mean), from the profile's
    bin-to-bin scatter: each bin against the mean of its two neighbours, r = p1 - (p0 + p2)/2,
    whose variance is sigma^2 (1/c1 + 1/(4 c0) + 1/(4 c2)); the median of those estimates
    (over the median of chi-squared(1)) less the median of the three bins' mean, at least 0.
    A CCD's read noise shows here; a photon counter's background has none (about 0)."""
    n = profile.shape[0]
    v = np.empty(max(n - 2, 0))
    e = np.empty(max(n - 2, 0))
    k = 0
    for b in range(1, n - 1):
        c0, c1, c2 = counts[b - 1], counts[b], counts[b + 1]
        p0, p1, p2 = np.float64(profile[b - 1]), np.float64(profile[b]), np.float64(profile[b + 1])
        if c0 <= 0 or c1 <= 0 or c2 <= 0 or not (np.isfinite(p0) and np.isfinite(p1) and np.isfinite(p2)):
            continue
        r = p1 - 0.5 * (p0 + p2)
        w = 1.0 / np.float64(c1) + 0.25 / np.float64(c0) + 0.25 / np.float64(c2)
        v[k] = r * r / w
        mean = (p0 + p1 + p2) / 3.0
        e[k] = mean if mean > 0.0 else 0.0
        k += 1
    if k < MIN_SCATTER_BINS:
        return 0.0
    excess = np.median(v[:k]) / CHI2_1_MEDIAN - np.median(e[:k])
    return excess if excess > 0.0 else 0.0


def excess_variance(profile: np.ndarray, counts: np.ndarray) -> float:
    """`_excess_variance` of one image's radial profile (mean per bin) and pixel counts."""
    return float(_excess_variance(np.ascontiguousarray(profile), np.ascontiguousarray(counts, dtype=np.int64)))


@njit
def _ring_flags(profile, counts, ring_d_star_sq, inner_ptr, inner_bins, side_ptr, side_bins, spot_d_star_sq,
                use_spots, half, three_half, min_pixels, min_excess, n_sigma, density_factor, min_spots, excess_var,
                out):
    tmp = np.empty(max(inner_bins.shape[0], side_bins.shape[0]) + 1)
    for r in range(ring_d_star_sq.shape[0]):
        out[r] = False
        n_in = np.int64(0)
        for k in range(inner_ptr[r], inner_ptr[r + 1]):
            n_in += counts[inner_bins[k]]
        n_side = np.int64(0)
        for k in range(side_ptr[r], side_ptr[r + 1]):
            n_side += counts[side_bins[k]]
        if n_in < min_pixels or n_side < min_pixels:
            continue
        mean_in = _shell_mean(profile, counts, inner_bins, inner_ptr[r], inner_ptr[r + 1], n_in, tmp)
        mean_side = _shell_mean(profile, counts, side_bins, side_ptr[r], side_ptr[r + 1], n_side, tmp)
        excess = mean_in - mean_side
        floor = 1e-9 if 1e-9 > mean_side else mean_side  # python's max(mean_side, 1e-9)
        # Poisson noise of the difference of the two means if both shells had the background of
        # the pixels of both (the pooled mean); the side shells' mean alone is the noisiest
        # estimate where the background is a few photons (0 over 700 pixels against 4 over 700
        # is no ring: a 6% chance, not the 60 sigma it would make)
        pooled = (mean_in * np.float64(n_in) + mean_side * np.float64(n_side)) / np.float64(n_in + n_side)
        pooled = 1e-9 if 1e-9 > pooled else pooled
        # ... plus the variance beyond Poisson's the profile shows (a CCD's read noise: on a
        # background of a few tenths of a photon it is most of the noise)
        pooled = pooled + excess_var
        sigma = np.sqrt(pooled / np.float64(n_in) + pooled / np.float64(n_side))
        ice = (excess > min_excess * floor) and (excess > n_sigma * sigma)
        if not ice and use_spots:
            ring = ring_d_star_sq[r]
            s_in = 0
            s_side = 0
            for i in range(spot_d_star_sq.shape[0]):
                dist = abs(spot_d_star_sq[i] - ring)
                if dist < half:
                    s_in += 1
                if (dist >= half) & (dist < three_half):
                    s_side += 1
            expected = np.float64(s_side * n_in) / np.float64(n_side)
            floor_expected = 1.0 if 1.0 > expected else expected
            # were the spots of both shells spread evenly over their pixels, the ring shell's
            # share would be binomial (share p of the pixels): the test of the background above,
            # for counts. The side shells' count alone is the noisiest estimate of a few spots
            # (Bragg spots of one image cluster: 11 against 4 is no ring)
            p = np.float64(n_in) / np.float64(n_in + n_side)
            pair = np.float64(s_in + s_side)
            ice = (s_in >= min_spots and s_in > density_factor * floor_expected
                   and s_in - pair * p > n_sigma * math.sqrt(pair * p * (1.0 - p)))
        out[r] = ice


def near_rings(d_star_sq: np.ndarray, rings: np.ndarray, half_width: float) -> np.ndarray:
    """Boolean per value of `d_star_sq` (A^-2): within `half_width` of one of the ascending `rings`."""
    d_star_sq = np.ascontiguousarray(d_star_sq, dtype=np.float64)
    rings = np.ascontiguousarray(rings, dtype=np.float64)
    if d_star_sq.ndim != 1 or rings.ndim != 1:
        raise ValueError("d_star_sq and rings must be 1D")
    out = np.empty(d_star_sq.shape, dtype=np.bool_)
    _near_rings(d_star_sq, rings, float(half_width), out)
    return out


def ring_flags(profile: np.ndarray, counts: np.ndarray, ring_d_star_sq: np.ndarray, inner_ptr: np.ndarray,
               inner_bins: np.ndarray, side_ptr: np.ndarray, side_bins: np.ndarray,
               spot_d_star_sq: np.ndarray | None, half_width: float, min_pixels: int, min_excess: float,
               n_sigma: float, density_factor: float, min_spots: int) -> np.ndarray:
    """Boolean per ring: its shell's mean background (bins inner_bins[inner_ptr[r]:inner_ptr[r+1]])
    exceeds the side shells' by `min_excess` relative and `n_sigma` sigmas (Poisson's, of the
    pooled mean of both, with the profile's excess variance, `_excess_variance`), or (with
    spots) the shell holds at least `min_spots` spots, `density_factor` times and `n_sigma`
    sigmas above the side shells' density. Rings with < `min_pixels` pixels in a shell: False.
    """
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    profile = np.ascontiguousarray(profile)
    if profile.ndim != 1 or profile.shape != counts.shape or profile.dtype.kind != "f":
        raise ValueError("profile (float) and counts must be 1D of one length")
    index = [np.ascontiguousarray(a, dtype=np.int64) for a in (inner_ptr, inner_bins, side_ptr, side_bins)]
    n_rings = len(ring_d_star_sq)
    if len(index[0]) != n_rings + 1 or len(index[2]) != n_rings + 1:
        raise ValueError("inner_ptr and side_ptr need one entry per ring plus one")
    if any(a.size and (a.min() < 0 or a.max() >= counts.size) for a in (index[1], index[3])):
        raise ValueError("shell bins must index the profile")
    use_spots = spot_d_star_sq is not None and len(spot_d_star_sq) > 0
    spots = np.ascontiguousarray(spot_d_star_sq if use_spots else np.zeros(0), dtype=np.float64)
    half = float(half_width)
    out = np.empty(n_rings, dtype=np.bool_)
    _ring_flags(profile, counts, np.ascontiguousarray(ring_d_star_sq, dtype=np.float64), *index, spots, use_spots,
                half, 3 * half, int(min_pixels), float(min_excess), float(n_sigma), float(density_factor),
                int(min_spots), _excess_variance(profile, counts), out)
    return out
