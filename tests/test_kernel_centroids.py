"""Spot moments and filters against a per-spot numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.centroids import spot_filter, spot_moments
from kernels.labelling import label_pixels


def reference_spot(index, values, shape):
    ny, nx = shape[-2:]
    z, rest = np.divmod(index, ny * nx)
    y, x = np.divmod(rest, nx)
    coords = np.stack([x + 0.5, y + 0.5, z + 0.5], axis=1)
    w = values.astype(np.float64)
    total = w.sum()
    bbox = [x.min(), x.max() + 1, y.min(), y.max() + 1, z.min(), z.max() + 1]
    if total > 0:
        centroid = (coords * w[:, None]).sum(0) / total
        denom = total**2 - (w**2).sum()  # one pixel: DIALS's variance fails and is set to 0
        var = (w[:, None] * (coords - centroid) ** 2).sum(0) * total / denom if denom > 0 else np.zeros(3)
    else:
        centroid = np.array([(bbox[0] + bbox[1]) / 2, (bbox[2] + bbox[3]) / 2, (bbox[4] + bbox[5]) / 2])
        var = np.zeros(3)
    if bbox[5] == bbox[4] + 1:
        centroid[2] = bbox[4] + 0.5
    peak = coords[np.argmax(w)]  # first maximum in (z, y, x) order
    return centroid, var, total, len(index), bbox, peak


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.float32])
@pytest.mark.parametrize("shape", [(31, 45), (3, 17, 19)])
def test_matches_reference(dtype, shape):
    rng = np.random.default_rng(5)
    image = rng.poisson(30, shape).astype(dtype)
    strong = rng.random(shape) < 0.35
    index = np.flatnonzero(strong)
    values = image.reshape(-1)[index]
    labels, n = label_pixels(index, shape)
    m = spot_moments(index, values, labels, n, shape)
    assert len(m) == n
    for k in range(n):
        sel = labels == k
        c, v, total, npix, bbox, peak = reference_spot(index[sel], values[sel], shape)
        np.testing.assert_allclose(m.centroid[k], c, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.variance[k], v, rtol=1e-9, atol=1e-12)
        assert m.intensity[k] == total and m.n_pixels[k] == npix
        assert list(m.bbox[k]) == bbox
        np.testing.assert_array_equal(m.peak[k], peak)


def test_zero_sum_spot_falls_back_to_bbox_middle():
    index = np.array([0, 1, 2])
    m = spot_moments(index, np.zeros(3), np.zeros(3, np.int32), 1, (4, 4))
    np.testing.assert_array_equal(m.centroid[0], [1.5, 0.5, 0.5])
    np.testing.assert_array_equal(m.variance[0], [0, 0, 0])


def test_filters_size_and_peak_separation():
    shape = (20, 40)
    image = np.zeros(shape)
    image[2, 2:4] = 10  # 2 pixels: too small
    image[5, 5:10] = 10  # 5 pixels, even
    image[10, 10:20] = 20
    image[10, 10] = 100  # bright end of a long streak: peak 3.2 px from the centroid
    index = np.flatnonzero(image)
    labels, n = label_pixels(index, shape)
    m = spot_moments(index, image.reshape(-1)[index], labels, n, shape)
    assert list(spot_filter(m, 3, 1000, 2.0)) == [False, True, False]
    assert list(spot_filter(m, 3, 1000, None)) == [False, True, True]
    assert list(spot_filter(m, 1, 6, None)) == [True, True, False]


def test_bad_input():
    with pytest.raises(ValueError):
        spot_moments(np.array([0, 1]), np.array([1.0]), np.array([0, 0]), 1, (2, 2))
    with pytest.raises(ValueError):
        spot_moments(np.array([0, 1]), np.array([1.0, 2.0]), np.array([0, 1]), 1, (2, 2))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 100_000), fraction=st.floats(0.0, 1.0))
def test_property_intensity_and_pixels_conserved(seed, fraction):
    rng = np.random.default_rng(seed)
    shape = (2, 13, 17)
    strong = rng.random(shape) < fraction
    index = np.flatnonzero(strong)
    values = rng.integers(0, 1000, index.size).astype(np.float64)
    labels, n = label_pixels(index, shape)
    m = spot_moments(index, values, labels, n, shape)
    assert m.intensity.sum() == values.sum()
    assert m.n_pixels.sum() == index.size
    ok = m.intensity > 0
    assert np.all((m.centroid[ok, 0] >= m.bbox[ok, 0]) & (m.centroid[ok, 0] <= m.bbox[ok, 1]))
    assert np.all((m.centroid[ok, 1] >= m.bbox[ok, 2]) & (m.centroid[ok, 1] <= m.bbox[ok, 3]))


def sequential_reference(index, values, labels, n_labels, shape):
    """DIALS's accumulation, pixel by pixel in the given order (python floats): the kernel's sums bit for bit."""
    ny, nx = shape[-2:]
    sums = np.zeros((n_labels, 5))
    var = np.zeros((n_labels, 3))
    coords = []
    for p, w, s in zip(index.tolist(), values.astype(np.float64).tolist(), labels.tolist()):
        z, rest = divmod(p, ny * nx)
        y, x = divmod(rest, nx)
        coords.append((x + 0.5, y + 0.5, z + 0.5))
        for k, term in enumerate((w, w * w, w * (x + 0.5), w * (y + 0.5), w * (z + 0.5))):
            sums[s, k] += term
    centroid = np.zeros((n_labels, 3))
    for s in range(n_labels):
        if sums[s, 0] > 0:
            centroid[s] = [sums[s, 2 + d] / sums[s, 0] for d in range(3)]
    for c, w, s in zip(coords, values.astype(np.float64).tolist(), labels.tolist()):
        if sums[s, 0] > 0:
            for d in range(3):
                dv = c[d] - centroid[s, d]
                var[s, d] += w * (dv * dv)
    for s in range(n_labels):
        big_w = sums[s, 0]
        denom = big_w * big_w - sums[s, 1]
        var[s] = var[s] * big_w / denom if big_w > 0 and denom > 0 else 0.0
    return sums, centroid, var


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("order", ["raster", "shuffled", "by_spot"])
def test_sums_are_those_of_pixel_by_pixel_accumulation(index_dtype, order):
    """Runs of one label (kept in registers) must not change a bit: raster order, any order, and
    the spot joiner's (spot after spot, 3D stack indices with a 2D shape)."""
    rng = np.random.default_rng(11)
    stack = (3, 23, 29)
    strong = rng.random(stack) < 0.45
    index = np.flatnonzero(strong)
    values = rng.lognormal(3, 1.5, index.size) * rng.choice([1.0, -0.2], index.size, p=[0.95, 0.05])
    labels, n = label_pixels(index, stack)
    if order == "shuffled":
        perm = rng.permutation(index.size)
    elif order == "by_spot":
        perm = np.argsort(labels, kind="stable")
    else:
        perm = np.arange(index.size)
    index, values, labels = index[perm], values[perm], labels[perm]
    for shape in (stack, stack[1:]):
        m = spot_moments(index.astype(index_dtype), values, labels, n, shape)
        sums, centroid, var = sequential_reference(index, values, labels, n, shape)
        ok = sums[:, 0] > 0
        assert m.intensity.tobytes() == sums[:, 0].tobytes() and m.intensity_sq.tobytes() == sums[:, 1].tobytes()
        single = m.bbox[:, 5] == m.bbox[:, 4] + 1
        centroid[single, 2] = m.bbox[single, 4] + 0.5
        assert m.centroid[ok].tobytes() == centroid[ok].tobytes()
        assert m.variance.tobytes() == var.tobytes()


def test_a_label_continuing_past_a_row_end_starts_a_new_run():
    # flat indices 4 and 5 of a 4x5 image are on different rows: the bbox must span both rows
    index = np.array([3, 4, 5, 6])
    m = spot_moments(index, np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4, np.int32), 1, (4, 5))
    assert list(m.bbox[0]) == [0, 5, 0, 2, 0, 1]
    np.testing.assert_array_equal(m.peak[0], [1.5, 1.5, 0.5])
