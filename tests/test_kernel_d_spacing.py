"""d-spacing of spot positions (compiled) against the numpy geometry it replaces, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.d_spacing import d_spacing
from streamer.geometry import Beam, Detector, Experiment, s1_vectors


def geometry_args(detector, beam):
    return (np.asarray(detector.origin_mm), np.asarray(detector.fast_axis), np.asarray(detector.slow_axis),
            np.asarray(detector.pixel_size_mm), beam.wavelength_A, np.asarray(beam.s0))


def test_matches_s1_vectors_bit_for_bit():
    rng = np.random.default_rng(4)
    for k in range(300):
        fast = rng.normal(size=3) if k % 2 else np.array([1.0, 0.0, 0.0])  # tilted or flat-on detectors
        slow = np.cross(fast, rng.normal(size=3)) if k % 2 else np.array([0.0, -1.0, 0.0])
        detector = Detector.from_beam_centre(tuple(rng.uniform(0, 3000, 2)), float(rng.uniform(50, 1000)),
                                             tuple(rng.uniform(0.05, 0.2, 2)), (3000, 3000), tuple(fast), tuple(slow))
        beam = Beam(wavelength_A=float(rng.uniform(0.5, 2.5)))
        x, y = rng.uniform(0, 3000, 200), rng.uniform(0, 3000, 200)
        x[0], y[0] = detector.beam_centre_px(beam)  # d = inf along the beam
        experiment = Experiment(beam, detector)
        with np.errstate(divide="ignore"):
            expected = 1.0 / np.linalg.norm(s1_vectors(experiment, x, y) - beam.s0, axis=1)
        assert d_spacing(x, y, *geometry_args(detector, beam)).tobytes() == expected.tobytes()


def test_empty_and_bad_input():
    args = geometry_args(Detector((-30.0, 30.0, -100.0)), Beam(wavelength_A=1.0))
    assert d_spacing(np.zeros(0), np.zeros(0), *args).shape == (0,)
    with pytest.raises(ValueError):
        d_spacing(np.zeros(2), np.zeros(3), *args)
    with pytest.raises(ValueError):
        d_spacing(np.zeros(2), np.zeros(2), np.zeros(2), *args[1:])
