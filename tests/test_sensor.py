"""Sensor parallax (streamer.sensor) and the detector model that applies it (streamer.geometry)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from streamer.geometry import Beam, Detector, Experiment, rotation_matrix, s1_vectors
from streamer.pixel_maps import resolution_map
from streamer.sensor import attenuation_coefficient_per_mm, attenuation_length_mm, parallax_shift_mm
from streamer.series import SeriesInfo

MU_SI = 3.8326187041206916  # dials.import's mu (1/mm) for the thaumatin PILATUS3 6M: Si at 0.96859 A
T0 = 0.45


def pilatus(mu=MU_SI, t0=T0, **kw):
    args = dict(beam_centre_px=(1261.61, 1306.96), distance_mm=351.0, pixel_size_mm=(0.172, 0.172),
                image_size=(2463, 2527), sensor_mu_per_mm=mu, sensor_thickness_mm=t0)
    args.update(kw)
    return Detector.from_beam_centre(**args)


def tilted(mu=MU_SI, t0=T0, angle=25.0, distance=120.0):
    r = rotation_matrix((0, 1, 0), angle) @ rotation_matrix((1, 0, 0), -7.0)
    return pilatus(mu, t0, fast_axis=r @ [1.0, 0, 0], slow_axis=r @ [0, -1.0, 0], distance_mm=distance)


def test_no_thickness_or_no_mu_is_the_detector_without_parallax_bit_for_bit():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 2463, 500), rng.uniform(0, 2527, 500)
    plain = pilatus(0.0, 0.0)
    assert not plain.has_parallax and not pilatus(MU_SI, 0.0).has_parallax and not pilatus(0.0, T0).has_parallax
    beam = Beam(0.96859)
    for det in (pilatus(MU_SI, 0.0), pilatus(0.0, T0)):
        assert det.pixel_to_lab(x, y).tobytes() == plain.pixel_to_lab(x, y).tobytes()
        rays = plain.pixel_to_lab(x, y)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(det.lab_to_pixel(rays), plain.lab_to_pixel(rays)))
        assert resolution_map(det, beam).tobytes() == resolution_map(plain, beam).tobytes()


@pytest.mark.parametrize("make", [pilatus, tilted])
def test_pixel_lab_pixel_round_trip_with_parallax(make):
    det = make()
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 2463, 2000), rng.uniform(0, 2527, 2000)
    x2, y2, valid = det.lab_to_pixel(det.pixel_to_lab(x, y) * 2.5)
    assert valid.all()
    assert np.abs(x2 - x).max() < 1e-9 and np.abs(y2 - y).max() < 1e-9
    shift = np.hypot(*(det.pixel_to_lab(x, y) - make(0.0, 0.0).pixel_to_lab(x, y)).T[:2])
    assert shift.max() > 0.02  # mm: the correction is there to be inverted


def test_shift_points_inwards_and_grows_with_angle():
    """px -> lab (dxtbx's px -> mm) moves a pixel back along its ray, towards the foot of the
    normal (here the beam centre): a ray is counted further out than where it met the plane."""
    det, plain = pilatus(), pilatus(0.0, 0.0)
    bx, by = det.beam_centre_px(Beam(1.0))
    r_px = np.linspace(0.0, 1200.0, 61)
    for angle in np.radians([0.0, 40.0, 135.0, 250.0]):
        x, y = bx + r_px * math.cos(angle), by + r_px * math.sin(angle)
        lab, lab0 = det.pixel_to_lab(x, y), plain.pixel_to_lab(x, y)
        centre = plain.pixel_to_lab(bx, by)[0]
        inward = np.linalg.norm(lab0 - centre, axis=1) - np.linalg.norm(lab - centre, axis=1)
        assert inward[0] == pytest.approx(0.0, abs=1e-12)
        assert np.all(np.diff(inward) > 0)
        assert 0.05 < inward[-1] < 0.15  # mm at 2theta ~ 31 deg: o ~ 0.13 mm, sin ~ 0.5
        # the shift is along the ray's in-plane direction: lab points stay on the radial line
        side = np.cross(lab - centre, lab0 - centre) @ det.normal
        assert np.abs(side).max() < 1e-9


def test_attenuation_length_limits():
    mu = MU_SI
    assert attenuation_length_mm(mu, 100.0, 1.0) == pytest.approx(1.0 / mu)  # thick: the mean free path
    thin = 1e-4
    assert attenuation_length_mm(mu, thin, 0.5) == pytest.approx(mu * (thin / 0.5) ** 2 / 2, rel=1e-3)
    cos_t = np.linspace(0.3, 1.0, 20)
    assert np.all(np.diff(attenuation_length_mm(mu, T0, cos_t)) < 0)  # longer paths at oblique incidence


def test_shift_matches_dxtbx_forward_map_to_its_approximation():
    """dxtbx maps mm -> px by adding the shift of the ray to the plane point; ours inverts its
    px -> mm exactly. The two differ by far less than a thousandth of a pixel."""
    det = tilted(distance=100.0)
    rng = np.random.default_rng(2)
    x_mm, y_mm = rng.uniform(0, 2463 * 0.172, 1000), rng.uniform(0, 2527 * 0.172, 1000)
    lab = np.asarray(det.origin_mm) + np.outer(x_mm, det.fast_axis) + np.outer(y_mm, det.slow_axis)
    x, y, _ = det.lab_to_pixel(lab)
    dx, dy = parallax_shift_mm(det.origin_mm, det.fast_axis, det.slow_axis, MU_SI, T0, x_mm, y_mm)
    assert np.abs(x - (x_mm + dx) / 0.172).max() < 1e-3
    assert np.abs(y - (y_mm + dy) / 0.172).max() < 1e-3


def test_with_beam_centre_on_a_tilted_detector_with_parallax():
    det, beam = tilted(), Beam(0.9)
    moved = det.with_beam_centre(beam, (1000.25, 1100.5))
    assert moved.beam_centre_px(beam) == pytest.approx((1000.25, 1100.5), abs=1e-9)
    assert moved.distance_mm == pytest.approx(det.distance_mm)
    assert (moved.sensor_mu_per_mm, moved.sensor_thickness_mm) == (MU_SI, T0)


def test_resolution_map_applies_the_parallax():
    det, beam = pilatus(), Beam(0.96859)
    dmap = resolution_map(det, beam, rows_per_block=100)
    rows, cols = np.array([0, 1306, 2526, 40]), np.array([0, 1261, 2462, 2000])
    s1 = s1_vectors(Experiment(beam, det), cols + 0.5, rows + 0.5)
    with np.errstate(divide="ignore"):
        expected = 1.0 / np.linalg.norm(s1 - beam.s0, axis=1)
    np.testing.assert_allclose(dmap[rows, cols], expected, rtol=1e-6)
    assert not np.allclose(dmap[0, 0], resolution_map(pilatus(0.0, 0.0), beam)[0, 0], rtol=1e-5, atol=0)


def test_attenuation_coefficients():
    # cctbx's table (what dials.import stores) gives 3.8326 for Si at 0.96859 A
    assert attenuation_coefficient_per_mm("Si", 0.96859) == pytest.approx(MU_SI, rel=1e-3)
    assert attenuation_coefficient_per_mm("silicon", 0.96859) == attenuation_coefficient_per_mm("Si", 0.96859)
    assert attenuation_coefficient_per_mm(" Cadmium Telluride", 0.5) == attenuation_coefficient_per_mm("CdTe", 0.5)
    assert attenuation_coefficient_per_mm("Gallium arsenide", 0.5) == attenuation_coefficient_per_mm("GaAs", 0.5)
    assert attenuation_coefficient_per_mm("CdTe", 0.96859) == pytest.approx(41.6, rel=0.01)
    assert attenuation_coefficient_per_mm("GaAs", 1.5) < attenuation_coefficient_per_mm("GaAs", 1.0)  # K edges
    assert attenuation_coefficient_per_mm("", 1.0) == 0.0


def test_unknown_material_means_no_parallax(caplog):
    info = SeriesInfo("s", "cbf", (100, 120), "<u4", sensor_material="Unobtainium", sensor_thickness_mm=1.0,
                      beam_centre_px=(60.0, 50.0))
    with caplog.at_level(logging.WARNING):
        det = Experiment.from_series(info).detector
    assert not det.has_parallax and "Unobtainium" in caplog.text


def test_series_sensor_enters_the_detector_and_survives_to_dict():
    info = SeriesInfo("s", "cbf", (100, 120), "<u4", sensor_material="Si", sensor_thickness_mm=0.45,
                      beam_centre_px=(60.0, 50.0), wavelength_A=0.96859)
    exp = Experiment.from_series(info)
    assert exp.detector.sensor_mu_per_mm == pytest.approx(MU_SI, rel=1e-3)
    assert exp.detector.sensor_thickness_mm == 0.45
    assert Experiment.from_dict(exp.to_dict()) == exp
    old = exp.to_dict()
    del old["detector"]["sensor_mu_per_mm"], old["detector"]["sensor_thickness_mm"]
    assert not Experiment.from_dict(old).detector.has_parallax
    thin = Experiment.from_series(SeriesInfo("s", "cbf", (100, 120), "<u4", sensor_material="Si"))
    assert not thin.detector.has_parallax


@pytest.mark.parametrize("thickness", [math.inf, math.nan, -0.45])
def test_a_nonsense_thickness_means_no_parallax(thickness):
    """An infinite thickness made every d NaN (inf * 0 in the attenuation length), so the
    resolution map was NaN and the d_min/d_max masks silently did nothing."""
    info = SeriesInfo("s", "cbf", (100, 120), "<u4", sensor_material="Si", sensor_thickness_mm=thickness,
                      beam_centre_px=(60.0, 50.0), wavelength_A=0.96859, distance_mm=100.0)
    exp = Experiment.from_series(info)
    assert not exp.detector.has_parallax
    dmap = resolution_map(exp.detector, exp.beam)
    assert np.isfinite(dmap).all()
