"""Hexagonal ice rings: which spots lie on them, and is there ice on an image.

Ring positions are the d-spacings of hexagonal ice Ih (P 6_3/m m c, a = 4.498, c = 7.338 A,
the cell DIALS uses), generated with gemmi. A spot is "on a ring" when |1/d^2 - 1/d_ring^2|
< width / 2 with DIALS's per-image-analysis width 0.004 A^-2 (dials PowderRingFilter as
called by `per_image_analysis.ice_rings_selection`).

Ice on an image (`detect_ice_rings`) is judged from the azimuthally averaged background in
resolution bins: a ring counts when the mean background in its shell is well above the
neighbouring shells on both sides (by `min_excess` relative and `n_sigma` sigmas: Poisson's
noise of the mean background of the ring and side shells together, plus any variance beyond
Poisson's that the profile's bin-to-bin scatter shows, as a CCD's read noise), or
when the shell holds at least `min_spots` spots, more than `density_factor` times what the
neighbouring shells' spot density predicts and `n_sigma` binomial sigmas above its share of
the spots of ring and side shells together.
The shells of each ring are set up once per series (`IceRingShells`); the per-image tests
run compiled (`kernels.powder_rings`), with numpy's arithmetic, bit for bit.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from kernels.powder_rings import near_rings, ring_flags

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
    d = d_spacing[finite]
    # rings beyond the highest-resolution spot by more than half a width cannot match: DIALS
    # generates them down to that limit; generating a fixed, wider set gives the same answer
    d_limit = 1.0 / np.sqrt(1.0 / np.min(d) ** 2 + half)
    rings = ice_ring_d_star_sq(max(0.3, min(1.0, math.floor(d_limit * 10.0) / 10.0)))
    out[finite] = near_rings(1.0 / d**2, rings, half)
    return out


def ice_ring_table() -> np.ndarray:
    """1/d^2 (A^-2) of every ice ring down to 0.3 A, the deepest set `on_ice_rings` generates.

    Spot memberships against it are those of `on_ice_rings`: its rings beyond the set that
    function would pick lie further than half a width beyond the highest-resolution spot.
    """
    return ice_ring_d_star_sq(0.3)


@dataclass(frozen=True)
class IceRingShells:
    """Which radial-profile bins (1/d^2 edges, A^-2) form the shell of each strong ice ring
    (|bin centre - ring| < width/2) and its two side shells (width/2 to 3 width/2), set up
    once per series, and the detection thresholds (`detect_ice_rings`); `detect` then judges
    one image from its profile, counts and spots."""

    rings_A: tuple[float, ...]
    ring_d_star_sq: np.ndarray
    inner_ptr: np.ndarray
    inner_bins: np.ndarray
    side_ptr: np.ndarray
    side_bins: np.ndarray
    width: float
    min_excess: float = 0.1
    n_sigma: float = 5.0
    density_factor: float = 3.0
    min_spots: int = 10
    min_pixels: int = 50

    @classmethod
    def build(cls, bin_edges_ds2: np.ndarray, width: float = ICE_RING_WIDTH,
              rings_A: tuple[float, ...] = STRONG_ICE_RINGS_A, **thresholds) -> IceRingShells:
        edges = np.asarray(bin_edges_ds2, dtype=np.float64)
        centres = 0.5 * (edges[:-1] + edges[1:])
        half = width / 2.0
        ring_ds2 = np.array([1.0 / d_ring**2 for d_ring in rings_A], dtype=np.float64)
        inner, side = [], []
        for ring in ring_ds2:
            distance = np.abs(centres - ring)
            inner.append(np.flatnonzero(distance < half))
            side.append(np.flatnonzero((distance >= half) & (distance < 3 * half)))

        def csr(parts):
            ptr = np.zeros(len(parts) + 1, dtype=np.int64)
            ptr[1:] = np.cumsum([len(p) for p in parts])
            return ptr, (np.concatenate(parts) if parts else np.zeros(0)).astype(np.int64)

        return cls(tuple(rings_A), ring_ds2, *csr(inner), *csr(side), float(width), **thresholds)

    @property
    def shells(self) -> tuple[np.ndarray, ...]:
        """(ring_d_star_sq, inner_ptr, inner_bins, side_ptr, side_bins), as the kernels take them."""
        return self.ring_d_star_sq, self.inner_ptr, self.inner_bins, self.side_ptr, self.side_bins

    @property
    def detection(self) -> tuple[int, float, float, float, int]:
        """(min_pixels, min_excess, n_sigma, density_factor, min_spots), as the kernels take them."""
        return self.min_pixels, self.min_excess, self.n_sigma, self.density_factor, self.min_spots

    def detect(self, profile: np.ndarray, counts: np.ndarray, spot_d: np.ndarray | None = None) -> tuple[float, ...]:
        """d-spacings (A) of the rings that show on this image (`detect_ice_rings`)."""
        spot_ds2 = None if spot_d is None or len(spot_d) == 0 else 1.0 / np.asarray(spot_d, dtype=np.float64) ** 2
        flags = ring_flags(profile, counts, *self.shells, spot_ds2, self.width / 2.0, *self.detection)
        return tuple(d for d, ice in zip(self.rings_A, flags) if ice)


def detect_ice_rings(profile: np.ndarray, counts: np.ndarray, bin_edges_ds2: np.ndarray,
                     spot_d: np.ndarray | None = None, width: float = ICE_RING_WIDTH, min_excess: float = 0.1,
                     n_sigma: float = 5.0, density_factor: float = 3.0, min_spots: int = 10) -> tuple[float, ...]:
    """d-spacings (A) of the strong ice rings that show on this image.

    `profile`/`counts`: mean background and pixel count per 1/d^2 bin (`bin_edges_ds2`). A
    ring needs at least 50 pixels in its shell and in its side shells. Per series, build
    `IceRingShells` once and call its `detect` instead.
    """
    shells = IceRingShells.build(bin_edges_ds2, width, min_excess=min_excess, n_sigma=n_sigma,
                                 density_factor=density_factor, min_spots=min_spots)
    return shells.detect(profile, counts, spot_d)
