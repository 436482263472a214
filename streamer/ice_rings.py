"""Hexagonal ice rings: which spots lie on them, and is there ice on an image.

Ring positions are the d-spacings of hexagonal ice Ih (P 6_3/m m c, a = 4.498, c = 7.338 A,
the cell DIALS uses), generated with gemmi. A spot is "on a ring" when |1/d^2 - 1/d_ring^2|
< width / 2 with DIALS's per-image-analysis width 0.004 A^-2 (dials PowderRingFilter as
called by `per_image_analysis.ice_rings_selection`).

Ice on an image (`detect_ice_rings`) is judged from the azimuthally averaged background in
resolution bins: a ring counts when the mean background in its shell is well above the
neighbouring shells on both sides (by `min_excess` relative and `n_sigma` in Poisson
terms), or when the shell holds at least `min_spots` spots, more than `density_factor` times
and `n_sigma` Poisson sigmas above what the neighbouring shells' spot density predicts.
"""

from __future__ import annotations

import functools
import math

import numpy as np

ICE_CELL = (4.498, 4.498, 7.338, 90.0, 90.0, 120.0)
ICE_SPACE_GROUP = "P 63/m m c"
ICE_RING_WIDTH = 0.004  # A^-2, DIALS per-image analysis default
STRONG_ICE_RINGS_A = (3.897, 3.669, 3.441, 2.671, 2.249, 2.072, 1.948, 1.918, 1.883, 1.721)


@functools.lru_cache(maxsize=16)
def ice_ring_d_star_sq(d_min: float) -> np.ndarray:
    """Sorted distinct 1/d^2 (A^-2) of allowed ice reflections with d >= d_min."""
    import gemmi

    cell = gemmi.UnitCell(*ICE_CELL)
    sg = gemmi.SpaceGroup(ICE_SPACE_GROUP)
    ops = sg.operations()
    hmax = int(np.ceil(max(ICE_CELL[:3]) / d_min)) + 1
    values = set()
    for h in range(-hmax, hmax + 1):
        for k in range(-hmax, hmax + 1):
            for l in range(0, hmax + 1):
                if h == k == l == 0:
                    continue
                d = cell.calculate_d([h, k, l])
                if d >= d_min and not ops.is_systematically_absent([h, k, l]):
                    values.add(round(1.0 / (d * d), 10))
    return np.array(sorted(values), dtype=np.float64)


def on_ice_rings(d_spacing: np.ndarray, width: float = ICE_RING_WIDTH) -> np.ndarray:
    """Boolean: spot d-spacings (A) within width/2 (in 1/d^2) of an ice ring (DIALS's filter)."""
    d_spacing = np.asarray(d_spacing, dtype=np.float64)
    out = np.zeros(d_spacing.shape, dtype=bool)
    finite = np.isfinite(d_spacing) & (d_spacing > 0)
    if not finite.any():
        return out
    half = width / 2.0
    # rings beyond the highest-resolution spot by more than half a width cannot match: DIALS
    # generates them down to that limit; generating a fixed, wider set gives the same answer
    d_limit = 1.0 / np.sqrt(1.0 / np.min(d_spacing[finite]) ** 2 + half)
    rings = ice_ring_d_star_sq(max(0.3, min(1.0, math.floor(d_limit * 10.0) / 10.0)))
    ds2 = 1.0 / d_spacing[finite] ** 2
    pos = np.searchsorted(rings, ds2)
    near = np.full(ds2.shape, np.inf)
    for shift in (-1, 0):
        idx = np.clip(pos + shift, 0, len(rings) - 1)
        if len(rings):
            near = np.minimum(near, np.abs(ds2 - rings[idx]))
    out[finite] = near < half
    return out


def detect_ice_rings(profile: np.ndarray, counts: np.ndarray, bin_edges_ds2: np.ndarray,
                     spot_d: np.ndarray | None = None, width: float = ICE_RING_WIDTH, min_excess: float = 0.1,
                     n_sigma: float = 5.0, density_factor: float = 3.0, min_spots: int = 10) -> tuple[float, ...]:
    """d-spacings (A) of the strong ice rings that show on this image.

    `profile`/`counts`: mean background and pixel count per 1/d^2 bin (`bin_edges_ds2`).
    """
    found = []
    centres = 0.5 * (bin_edges_ds2[:-1] + bin_edges_ds2[1:])
    spot_ds2 = None if spot_d is None or len(spot_d) == 0 else 1.0 / np.asarray(spot_d, dtype=np.float64) ** 2
    half = width / 2.0
    for d_ring in STRONG_ICE_RINGS_A:
        ring = 1.0 / d_ring**2
        inner = np.abs(centres - ring) < half
        side = (np.abs(centres - ring) >= half) & (np.abs(centres - ring) < 3 * half)
        n_in, n_side = counts[inner].sum(), counts[side].sum()
        if n_in < 50 or n_side < 50:
            continue
        mean_in = float((profile[inner] * counts[inner]).sum() / n_in)
        mean_side = float((profile[side] * counts[side]).sum() / n_side)
        excess = mean_in - mean_side
        sigma = np.sqrt(max(mean_side, 1e-9) / n_in + max(mean_side, 1e-9) / n_side)
        ice = excess > min_excess * max(mean_side, 1e-9) and excess > n_sigma * sigma
        if not ice and spot_ds2 is not None:
            s_in = int(np.count_nonzero(np.abs(spot_ds2 - ring) < half))
            s_side = int(np.count_nonzero((np.abs(spot_ds2 - ring) >= half) & (np.abs(spot_ds2 - ring) < 3 * half)))
            expected = s_side * n_in / n_side
            ice = (s_in >= min_spots and s_in > density_factor * max(expected, 1.0)
                   and s_in - expected > n_sigma * math.sqrt(expected + 1.0))
        if ice:
            found.append(d_ring)
    return tuple(found)
