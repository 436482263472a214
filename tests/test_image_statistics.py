"""The one-call per-image statistics against the separate steps (themselves checked against numpy in
test_ice_rings.py and test_resolution_limit.py), bit for bit."""

from __future__ import annotations

import numpy as np

from kernels.image_statistics import image_statistics
from kernels.powder_rings import near_rings
from streamer.ice_rings import STRONG_ICE_RINGS_A, IceRingShells, ice_ring_table, on_ice_rings
from streamer.resolution_estimate import E_CUTOFF, estimate_d_min


def separate_steps(d, intensity, profile, counts, shells, width):
    ice = on_ice_rings(d, width)
    n_no_ice = int(np.count_nonzero(~ice))
    d_min = estimate_d_min(d, intensity, ice) if n_no_ice > 10 else -1.0
    rings = shells.detect(profile, counts, d)
    return ice, n_no_ice, int(np.count_nonzero(d > 4.0)), float(np.sum(intensity[~ice])), d_min, rings


def one_call(d, intensity, profile, counts, shells, width):
    with np.errstate(invalid="ignore", divide="ignore"):
        log_i_over_sigma = np.log(intensity / np.sqrt(np.abs(intensity)))
    ice, n_no_ice, n_4a, total, d_min, flags = image_statistics(
        d, intensity, log_i_over_sigma, profile, counts, ice_ring_table(), width / 2.0, shells.shells,
        shells.detection, 4.0, 10, E_CUTOFF)
    return ice, n_no_ice, n_4a, total, d_min, tuple(r for r, f in zip(shells.rings_A, flags) if f)


def test_one_call_equals_the_separate_steps():
    rng = np.random.default_rng(21)
    edges = np.arange(0, 0.8, 0.002)
    centres = 0.5 * (edges[1:] + edges[:-1])
    estimated = with_ice = 0
    for k in range(1000):
        width = float(rng.choice([0.004, 0.002, 0.01]))
        shells = IceRingShells.build(edges, width)
        counts = rng.integers(0, rng.choice([60, 3000]), centres.size)
        profile = (rng.uniform(0.1, 20) + rng.normal(0, 0.3, centres.size)).astype(np.float32)
        profile[counts == 0] = np.nan
        for d_ring in rng.choice(STRONG_ICE_RINGS_A, rng.integers(0, 3)):
            profile[np.abs(centres - 1 / d_ring**2) < 0.002] += rng.uniform(0, 3)
        n = int(rng.integers(0, 600))
        d = 1.0 / np.sqrt(rng.uniform(0.002, rng.choice([0.3, 1.0, 4.0]), n))  # down to 0.5 A
        for d_ring in rng.choice(STRONG_ICE_RINGS_A, rng.integers(0, 3)):
            d = np.concatenate([d, 1.0 / np.sqrt(1 / d_ring**2 + rng.uniform(-0.003, 0.003, rng.integers(0, 60)))])
        intensity = 5000 * np.exp(-20 / d**2 * rng.uniform(0.5, 8)) * rng.lognormal(0, 1, d.size)
        if k % 3 == 0:
            intensity = np.round(intensity)
        if k % 5 == 0 and d.size:
            intensity[rng.random(d.size) < 0.1] *= rng.choice([0.0, -1.0])
        if k % 7 == 0 and d.size:
            d[rng.integers(0, d.size, 3)] = rng.choice([np.inf, np.nan, 0.0, -1.0], 3)
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = separate_steps(d, intensity, profile, counts, shells, width)
        got = one_call(d, intensity, profile, counts, shells, width)
        np.testing.assert_array_equal(got[0], expected[0])
        assert got[1:] == expected[1:], k
        assert all(type(a) is type(b) for a, b in zip(got[1:5], expected[1:5]))
        estimated += expected[4] != -1.0
        with_ice += len(expected[5]) > 0 or expected[0].any()
    assert estimated > 500 and with_ice > 500


def test_the_full_ring_table_gives_on_ice_rings_memberships():
    # on_ice_rings picks its ring set from the highest-resolution spot; the per-series table
    # goes down to 0.3 A; spots next to the edge of the set it would pick are the hard cases
    rng = np.random.default_rng(22)
    table = ice_ring_table()
    for _ in range(3000):
        d_top = float(rng.choice([rng.uniform(0.25, 2.0), np.round(rng.uniform(0.3, 1.2), 1) + rng.normal(0, 1e-9)]))
        d = np.concatenate([[d_top], 1.0 / np.sqrt(rng.uniform(0.0, 1.0 / d_top**2, 200))])
        ring_near = 1.0 / np.sqrt(table[(table < 1.0 / d_top**2 + 0.02)])
        d = np.concatenate([d, ring_near * (1 + rng.normal(0, 3e-4, ring_near.size))])
        d = d[d >= d_top]
        np.testing.assert_array_equal(near_rings(1.0 / d**2, table, 0.002), on_ice_rings(d, 0.004))
