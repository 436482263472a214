"""Radial background profile: per-series segments and per-frame sums against a pixel-by-pixel reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.radial import _integer_limits, bin_map, radial_profile, radial_segments, radial_sums


def reference_profile(image, mask, bins, n_bins, exclude, trusted_range, row_step):
    """The definition, slowly: float64 sums in row-major order of the usable pixels of every row_step-th row."""
    lower, upper = trusted_range
    sums = np.zeros(n_bins)
    counts = np.zeros(n_bins, dtype=np.int64)
    for j in range(0, image.shape[0], row_step):
        for i in range(image.shape[1]):
            b, v = int(bins[j, i]), float(image[j, i])
            if 0 <= b < n_bins and mask[j, i] and not exclude[j, i] and lower < v < upper:
                sums[b] += v
                counts[b] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).astype(np.float32), counts


def random_case(rng, shape, dtype, n_bins=7):
    if np.dtype(dtype).kind == "f":
        image = (rng.gamma(2.0, 3.0, shape) * rng.choice([1.0, -0.1], shape, p=[0.9, 0.1])).astype(dtype)
    else:
        info = np.iinfo(dtype)
        image = rng.integers(max(info.min, -3), min(info.max, 60), shape, endpoint=True).astype(dtype)
        image[rng.random(shape) < 0.02] = info.max  # saturated
    mask = (rng.random(shape) > 0.15).astype(np.uint8)
    mask[:, rng.integers(0, shape[1])] = 0  # a gap column
    exclude = (rng.random(shape) > 0.9).astype(np.uint8) * rng.choice([1, 2], shape).astype(np.uint8)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    ds2 = np.hypot(yy - shape[0] / 3, xx - shape[1] / 2) / max(shape) * 0.1
    ds2[rng.random(shape) < 0.01] = np.inf
    bins = bin_map(ds2, np.linspace(0, 0.1, n_bins + 1))
    return image, mask, bins, exclude


def assert_same(got, ref):
    np.testing.assert_array_equal(got[1], ref[1])
    assert got[0].dtype == np.float32 and got[0].tobytes() == ref[0].tobytes()  # bit for bit, NaN where empty


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.float32, np.float64, np.int64])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (31, 29), (64, 37)])
@pytest.mark.parametrize("row_step", [1, 3, 8])
def test_matches_pixel_by_pixel_reference(dtype, shape, row_step):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1] + row_step)
    image, mask, bins, exclude = random_case(rng, shape, dtype)
    upper = float(np.iinfo(dtype).max) if np.dtype(dtype).kind in "iu" else 40.0
    for trusted in [(-1.0, upper), (-0.5, 30.5), (2.0, 20.0), (-math.inf, math.inf), (5.0, 5.0)]:
        ref = reference_profile(image, mask, bins, 7, exclude, trusted, row_step)
        assert_same(radial_profile(image, mask, bins, 7, exclude, trusted, row_step), ref)
        segments = radial_segments(mask, bins, 7, row_step)
        assert_same(radial_sums(image, segments, exclude, trusted), ref)


def test_segments_cover_the_sampled_usable_pixels_once():
    rng = np.random.default_rng(7)
    _, mask, bins, _ = random_case(rng, (40, 33), np.uint16)
    seg = radial_segments(mask, bins, 7, 3)
    covered = np.zeros(mask.size, dtype=np.int64)
    for a, b, k in zip(seg.starts, seg.stops, seg.bins):
        assert a < b and a // 33 == (b - 1) // 33  # within one row
        assert np.all(bins.reshape(-1)[a:b] == k)
        covered[a:b] += 1
    usable = np.zeros(mask.shape, dtype=bool)
    usable[::3] = (mask[::3] != 0) & (bins[::3] >= 0) & (bins[::3] < 7)
    np.testing.assert_array_equal(covered, usable.reshape(-1))
    assert np.all(np.diff(seg.starts) > 0)  # row-major order


def test_empty_and_all_excluded_frames():
    image = np.zeros((5, 6), np.uint32)
    mask = np.ones(image.shape, np.uint8)
    bins = np.zeros(image.shape, np.int16)
    mean, counts = radial_profile(image, mask, bins, 2, np.ones(image.shape, np.uint8), (-1, 10), 1)
    assert np.all(np.isnan(mean)) and counts.sum() == 0
    mean, counts = radial_profile(image, np.zeros_like(mask), bins, 2, np.zeros_like(mask), (-1, 10), 1)
    assert counts.sum() == 0
    mean, counts = radial_profile(image, mask, bins, 2, np.zeros_like(mask), (-1, 10), 1)
    assert list(counts) == [30, 0] and mean[0] == 0 and np.isnan(mean[1])


def test_integer_limits_match_the_open_float_interval():
    values = np.arange(-300, 300)
    for dtype in (np.int8, np.uint8, np.int16, np.int32, np.uint32):
        info = np.iinfo(dtype)
        for lower, upper in [(-1.0, 255.0), (-0.5, 7.5), (3.0, 3.0), (-math.inf, math.inf), (math.nan, 1.0),
                             (1e30, 2e30), (-2e30, -1e30), (float(info.max), math.inf), (-math.inf, float(info.min))]:
            lo, hi = _integer_limits(np.dtype(dtype), lower, upper)
            inside = values[(values >= info.min) & (values <= info.max)]
            expected = inside[(inside > lower) & (inside < upper)]
            got = inside[(inside >= lo) & (inside <= hi)]
            np.testing.assert_array_equal(got, expected)


def test_bad_input():
    mask = np.ones((4, 4), np.uint8)
    bins = np.zeros((4, 4), np.int16)
    seg = radial_segments(mask, bins, 1, 1)
    with pytest.raises(ValueError):
        radial_sums(np.zeros((4, 5), np.uint16), seg, np.zeros((4, 4), np.uint8), (-1, 10))
    with pytest.raises(ValueError):
        radial_sums(np.zeros((4, 4), np.uint16), seg, np.zeros((4, 4), bool), (-1, 10))
    with pytest.raises(ValueError):
        radial_segments(mask, bins.astype(np.int32), 1, 1)
    with pytest.raises(ValueError):
        radial_segments(mask, bins, 1, 0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000), ny=st.integers(1, 24), nx=st.integers(1, 24), row_step=st.integers(1, 5))
def test_property_counts_are_the_selected_pixels_and_sums_conserved(seed, ny, nx, row_step):
    rng = np.random.default_rng(seed)
    image, mask, bins, exclude = random_case(rng, (ny, nx), np.uint16, n_bins=4)
    mean, counts = radial_profile(image, mask, bins, 4, exclude, (-1, 65535), row_step)
    rows = np.zeros(image.shape, dtype=bool)
    rows[::row_step] = True
    use = rows & (mask != 0) & (exclude == 0) & (bins >= 0) & (image < 65535)
    assert counts.sum() == use.sum()
    filled = counts > 0
    assert np.isclose((mean[filled].astype(np.float64) * counts[filled]).sum(), image[use].astype(np.float64).sum(),
                      rtol=1e-6)


def test_bins_of_a_resolution_map_equal_the_numpy_binning():
    """`bin_map_of_d` (the analyser's set-up, compiled) against `bin_map(1 / d**2, edges)` in
    numpy: the same bin for every pixel, also for d whose d* squared sits on an edge, for d = inf
    (the beam: bin 0), 0, NaN and beyond the last edge (-1)."""
    from kernels.radial import bin_map_of_d, largest_d_star_sq
    from streamer.geometry import Beam, Detector
    from streamer.pixel_maps import resolution_map

    width = 0.002
    detector = Detector.from_beam_centre((150.5, 100.5), 80.0, (0.172, 0.172), (301, 211), sensor_mu_per_mm=3.8,
                                         sensor_thickness_mm=0.45)
    d_map = resolution_map(detector, Beam(0.98))
    rng = np.random.default_rng(3)
    on_edges = (1.0 / np.sqrt(width * rng.integers(1, 60, 2000))).astype(np.float32)  # d* squared near an edge
    extra = np.array([np.inf, 0.0, np.nan, 0.5, 40.0, 2.0], dtype=np.float32)
    for d in (d_map, np.concatenate([on_edges, np.nextafter(on_edges, 0), np.nextafter(on_edges, 9), extra])[None]):
        with np.errstate(divide="ignore"):
            d_star_sq = 1.0 / d.astype(np.float64) ** 2
        top = float(np.nanmax(np.where(np.isfinite(d_star_sq), d_star_sq, 0.0)))
        assert largest_d_star_sq(d) == top
        edges = np.arange(int(np.ceil(min(top, 0.25) / width)) + 1, dtype=np.float64) * width
        np.testing.assert_array_equal(bin_map_of_d(d, edges), bin_map(d_star_sq, edges))
    assert largest_d_star_sq(np.full((2, 2), np.nan, np.float32)) == 0.0
