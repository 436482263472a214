"""One-call spot table columns against the separate kernels (labelling, moments, filters, d-spacing), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.centroids import spot_filter, spot_moments
from kernels.d_spacing import d_spacing
from kernels.image_spots import image_spots
from kernels.labelling import label_pixels

GEOMETRY = (np.array([-30.0, 25.0, -150.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0]),
            np.array([0.075, 0.075]), 0.9, np.array([0.0, 0.0, -1.0 / 0.9]), 4.2, 0.45)  # Si sensor: parallax


def separate_steps(index, values, shape, min_size, max_size, max_separation, image_number):
    labels, n = label_pixels(index, shape)
    m = spot_moments(index, values, labels, n, shape)
    m = m.select(spot_filter(m, min_size, max_size, max_separation))
    x, y = m.centroid[:, 0].copy(), m.centroid[:, 1].copy()
    bbox = m.bbox.astype(np.int32)
    bbox[:, 4:] += image_number
    return (x, y, m.centroid[:, 2] + image_number, m.intensity, m.n_pixels.astype(np.int32), bbox, m.variance,
            d_spacing(x, y, *GEOMETRY))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.float32])
@pytest.mark.parametrize("max_separation", [2.0, 0.5, None])
def test_matches_the_separate_steps(dtype, max_separation):
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (1, 40), (40, 1), (57, 63), (200, 300)]:
        for fraction in (0.0, 0.05, 0.3, 0.7, 1.0):
            image = rng.poisson(20, shape).astype(dtype)
            index = np.flatnonzero(rng.random(shape) < fraction).astype(rng.choice([np.int32, np.int64]))
            values = image.reshape(-1)[index]
            for min_size, max_size, image_number in [(1, 1000, 0), (3, 40, 17)]:
                expected = separate_steps(index, values, shape, min_size, max_size, max_separation, image_number)
                got = image_spots(index, values, shape, min_size, max_size, max_separation, image_number, GEOMETRY)
                for a, b in zip(got, expected):
                    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_bad_input():
    with pytest.raises(ValueError):
        image_spots(np.array([3, 2]), np.ones(2), (4, 4), 1, 10, None, 0, GEOMETRY)
    with pytest.raises(ValueError):
        image_spots(np.array([2, 16]), np.ones(2), (4, 4), 1, 10, None, 0, GEOMETRY)
    with pytest.raises(ValueError):
        image_spots(np.array([2, 3]), np.ones(3), (4, 4), 1, 10, None, 0, GEOMETRY)


def test_geometry_without_a_sensor_has_no_parallax():
    index, values = np.array([0, 1, 2, 9000, 9001, 9200]), np.array([5.0, 9.0, 4.0, 7.0, 8.0, 6.0])
    without = image_spots(index, values, (100, 200), 1, 10, None, 0, GEOMETRY[:6])
    zeros = image_spots(index, values, (100, 200), 1, 10, None, 0, (*GEOMETRY[:6], 0.0, 0.0))
    with_parallax = image_spots(index, values, (100, 200), 1, 10, None, 0, GEOMETRY)
    assert without[-1].tobytes() == zeros[-1].tobytes()
    assert np.all(with_parallax[-1] != without[-1])
