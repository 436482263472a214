"""Ice-ring membership and detection (compiled, shells set up per series) against the numpy implementation."""

from __future__ import annotations

import math

import numpy as np

from kernels.powder_rings import excess_variance, near_rings
from streamer.ice_rings import (STRONG_ICE_RINGS_A, IceRingShells, detect_ice_rings, ice_ring_d_star_sq,
                                on_ice_rings)


# ---------------------------------------------------------------- numpy reference
def reference_on_ice(d_spacing, width=0.004):
    d_spacing = np.asarray(d_spacing, dtype=np.float64)
    out = np.zeros(d_spacing.shape, dtype=bool)
    finite = np.isfinite(d_spacing) & (d_spacing > 0)
    if not finite.any():
        return out
    half = width / 2.0
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


def reference_excess_variance(profile, counts):
    p = profile.astype(np.float64)
    c = counts.astype(np.float64)
    ok = (counts > 0) & np.isfinite(p)
    use = ok[:-2] & ok[1:-1] & ok[2:]
    p0, p1, p2 = p[:-2][use], p[1:-1][use], p[2:][use]
    c0, c1, c2 = c[:-2][use], c[1:-1][use], c[2:][use]
    if use.sum() < 20:
        return 0.0
    v = (p1 - 0.5 * (p0 + p2)) ** 2 / (1.0 / c1 + 0.25 / c0 + 0.25 / c2)
    e = np.maximum((p0 + p1 + p2) / 3.0, 0.0)
    return max(0.0, float(np.median(v) / 0.454936423119572 - np.median(e)))


def reference_detect(profile, counts, bin_edges_ds2, spot_d=None, width=0.004, min_excess=0.1, n_sigma=5.0,
                     density_factor=3.0, min_spots=10):
    found = []
    extra = reference_excess_variance(profile, counts)
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
        pooled = max((mean_in * n_in + mean_side * n_side) / (n_in + n_side), 1e-9) + extra
        sigma = np.sqrt(pooled / n_in + pooled / n_side)
        ice = excess > min_excess * max(mean_side, 1e-9) and excess > n_sigma * sigma
        if not ice and spot_ds2 is not None:
            s_in = int(np.count_nonzero(np.abs(spot_ds2 - ring) < half))
            s_side = int(np.count_nonzero((np.abs(spot_ds2 - ring) >= half) & (np.abs(spot_ds2 - ring) < 3 * half)))
            expected = s_side * n_in / n_side
            p = n_in / (n_in + n_side)
            pair = s_in + s_side
            ice = (s_in >= min_spots and s_in > density_factor * max(expected, 1.0)
                   and s_in - pair * p > n_sigma * math.sqrt(pair * p * (1.0 - p)))
        if ice:
            found.append(d_ring)
    return tuple(found)


# ---------------------------------------------------------------- tests
def random_image_statistics(rng):
    width = float(rng.choice([0.004, 0.002, 0.01]))
    edges = np.arange(0, rng.uniform(0.1, 0.7), rng.choice([0.002, 0.001, 0.0003, 0.0001]))  # up to ~40 bins a shell
    centres = 0.5 * (edges[1:] + edges[:-1])
    counts = rng.integers(0, rng.choice([60, 500, 3000]), centres.size)
    counts[rng.random(centres.size) < 0.05] = 0
    profile = (rng.uniform(0.1, 20) + rng.normal(0, 0.3, centres.size)).astype(np.float32)
    profile[counts == 0] = np.nan
    for d_ring in rng.choice(STRONG_ICE_RINGS_A, rng.integers(0, 4)):
        profile[np.abs(centres - 1 / d_ring**2) < 0.002] += rng.uniform(0, 3)
    d = 1.0 / np.sqrt(rng.uniform(0.003, 0.6, rng.integers(0, 800)))
    for d_ring in rng.choice(STRONG_ICE_RINGS_A, rng.integers(0, 3)):
        on_ring = 1.0 / np.sqrt(1 / d_ring**2 + rng.uniform(-0.002, 0.002, rng.integers(0, 80)))
        d = np.concatenate([d, on_ring])
    if d.size and rng.random() < 0.3:
        d[rng.integers(0, d.size)] = rng.choice([np.inf, np.nan, 0.0, -1.0])
    return width, edges, counts, profile, d


def test_detection_and_membership_match_the_numpy_implementation():
    rng = np.random.default_rng(9)
    rings_found = 0
    for _ in range(800):
        width, edges, counts, profile, d = random_image_statistics(rng)
        thresholds = dict(min_excess=float(rng.choice([0.1, 0.02])), n_sigma=float(rng.choice([5.0, 2.0])))
        kw = dict(width=width, **thresholds)
        shells = IceRingShells.build(edges, width, **thresholds)
        assert excess_variance(profile, counts) == reference_excess_variance(profile, counts)
        with np.errstate(divide="ignore", invalid="ignore"):  # d = 0 and NaN spots
            for spot_d in (d, None, d[:0]):
                expected = reference_detect(profile, counts, edges, spot_d, **kw)
                assert detect_ice_rings(profile, counts, edges, spot_d, **kw) == expected
                assert shells.detect(profile, counts, spot_d) == expected
                rings_found += len(expected) > 0
            np.testing.assert_array_equal(on_ice_rings(d, width), reference_on_ice(d, width))
    assert rings_found > 300  # the comparison covers images with ice


def test_near_rings_picks_the_closest_ring_on_either_side():
    rings = np.array([0.1, 0.2, 0.4])
    ds2 = np.array([0.0, 0.099, 0.1015, 0.15, 0.1985, 0.3, 0.401, 0.5])
    assert list(near_rings(ds2, rings, 0.002)) == [False, True, True, False, True, False, True, False]
    assert not near_rings(ds2, np.zeros(0), 0.002).any()
