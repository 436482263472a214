"""d-spacing of spot positions (compiled) against the numpy geometry it replaces: bit for bit
without a sensor parallax, to 1e-13 relative with one."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.d_spacing import d_spacing, pixel_centre_d_spacing
from streamer.geometry import Beam, Detector, Experiment, s1_vectors
from streamer.pixel_maps import resolution_map


def geometry_args(detector, beam):
    return (np.asarray(detector.origin_mm), np.asarray(detector.fast_axis), np.asarray(detector.slow_axis),
            np.asarray(detector.pixel_size_mm), beam.wavelength_A, np.asarray(beam.s0), detector.sensor_mu_per_mm,
            detector.sensor_thickness_mm)


def random_cases(seed, sensor):
    """(d from the kernel, d from the numpy geometry) on flat-on and tilted detectors; `sensor`:
    (mu, t0) for every detector, or None for random sensors (Si to CdTe)."""
    rng = np.random.default_rng(seed)
    for k in range(300):
        fast = rng.normal(size=3) if k % 2 else np.array([1.0, 0.0, 0.0])  # tilted or flat-on detectors
        slow = np.cross(fast, rng.normal(size=3)) if k % 2 else np.array([0.0, -1.0, 0.0])
        mu, t0 = sensor or (float(rng.uniform(0.5, 50.0)), float(rng.uniform(0.3, 1.0)))
        detector = Detector.from_beam_centre(tuple(rng.uniform(0, 3000, 2)), float(rng.uniform(50, 1000)),
                                             tuple(rng.uniform(0.05, 0.2, 2)), (3000, 3000), tuple(fast), tuple(slow),
                                             sensor_mu_per_mm=mu, sensor_thickness_mm=t0)
        beam = Beam(wavelength_A=float(rng.uniform(0.5, 2.5)))
        x, y = rng.uniform(0, 3000, 200), rng.uniform(0, 3000, 200)
        x[0], y[0] = detector.beam_centre_px(beam)  # d = inf along the beam (no parallax there, either)
        experiment = Experiment(beam, detector)
        with np.errstate(divide="ignore"):
            expected = 1.0 / np.linalg.norm(s1_vectors(experiment, x, y) - beam.s0, axis=1)
        yield d_spacing(x, y, *geometry_args(detector, beam)), expected


@pytest.mark.parametrize("sensor", [(0.0, 0.0), (3.83, 0.0), (0.0, 0.45)])
def test_matches_s1_vectors_bit_for_bit_without_parallax(sensor):
    for got, expected in random_cases(4, sensor):
        assert got.tobytes() == expected.tobytes()


def test_matches_s1_vectors_with_parallax():
    for got, expected in random_cases(5, None):
        assert got[0] > 1e3 and expected[0] > 1e3  # the beam (d = inf when the beam is along the normal)
        np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-13)


def test_parallax_changes_d_as_the_geometry_does():
    """The check above could pass if neither applied the correction: the shift is real."""
    detector = Detector.from_beam_centre((1000.0, 1000.0), 100.0, (0.075, 0.075), (2000, 2000),
                                         sensor_mu_per_mm=3.83, sensor_thickness_mm=0.45)
    beam = Beam(wavelength_A=1.0)
    x, y = np.array([1900.0]), np.array([1500.0])
    with_parallax = d_spacing(x, y, *geometry_args(detector, beam))
    without = d_spacing(x, y, *geometry_args(detector, beam)[:6])
    assert with_parallax[0] > without[0] * (1 + 1e-4)  # moved inwards: lower angle, larger d


def test_empty_and_bad_input():
    args = geometry_args(Detector((-30.0, 30.0, -100.0)), Beam(wavelength_A=1.0))
    assert d_spacing(np.zeros(0), np.zeros(0), *args).shape == (0,)
    with pytest.raises(ValueError):
        d_spacing(np.zeros(2), np.zeros(3), *args)
    with pytest.raises(ValueError):
        d_spacing(np.zeros(2), np.zeros(2), np.zeros(2), *args[1:])


@pytest.mark.parametrize("tilted", [False, True])
@pytest.mark.parametrize("sensor", [(0.0, 0.0), (3.83, 0.45), (41.6, 1.0)])
def test_pixel_centre_map_matches_the_numpy_resolution_map(sensor, tilted):
    """The analyser's resolution map (compiled) against `pixel_maps.resolution_map` (numpy): both
    work d out in float64 and round it once to float32, so they differ by a float32 rounding at
    most; the beam's pixel is inf in both."""
    rng = np.random.default_rng(7)
    fast, slow = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0))
    if tilted:
        fast = tuple(np.array([1.0, 0.0, 0.3]) / np.hypot(1.0, 0.3))
        slow = tuple(np.cross(fast, (0.0, 0.0, 1.0)) / np.linalg.norm(np.cross(fast, (0.0, 0.0, 1.0))))
    detector = Detector.from_beam_centre((80.5, 60.5), 120.0, (0.075, 0.075), (173, 131), fast, slow,
                                         sensor_mu_per_mm=sensor[0], sensor_thickness_mm=sensor[1])
    beam = Beam(wavelength_A=float(rng.uniform(0.7, 1.5)))
    expected = resolution_map(detector, beam, rows_per_block=50)
    got = pixel_centre_d_spacing((131, 173), *geometry_args(detector, beam))
    assert got.dtype == np.float32 and got.shape == (131, 173)
    along_beam = expected > 1e4  # at the pixel centre the beam hits: inf, or huge after rounding
    assert np.array_equal(got > 1e4, along_beam) and along_beam.sum() <= 1  # (tilted, a sensor moves it)
    np.testing.assert_allclose(got[~along_beam], expected[~along_beam], rtol=1.2e-7, atol=0)
    if not tilted:
        assert np.isinf(got[60, 80]) and np.isinf(expected[60, 80])  # the beam hits that pixel's centre
