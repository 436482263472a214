"""Hand-checked geometry, round trips and prediction self-consistency (streamer.geometry)."""

import math

import gemmi
import numpy as np
import pytest

from streamer.crystal import Crystal, b_matrix, cell_from_a_matrix
from streamer.geometry import (
    Beam, Detector, Experiment, Goniometer, Scan, lorentz_zeta, polarization_factor, reciprocal_vectors,
    rotation_matrix,
)
from streamer.pixel_maps import resolution_map, two_theta_map
from streamer.prediction import miller_indices, predict_rotation, systematically_absent


def simple_detector(**kw):
    args = dict(beam_centre_px=(500.0, 400.0), distance_mm=100.0, pixel_size_mm=(0.1, 0.1), image_size=(1000, 900))
    args.update(kw)
    return Detector.from_beam_centre(**args)


def test_beam_centre_and_distance_round_trip():
    beam = Beam(1.0)
    det = simple_detector()
    assert det.distance_mm == pytest.approx(100.0)
    assert det.beam_centre_px(beam) == pytest.approx((500.0, 400.0))
    # DIALS frame: origin of a detector normal to the beam, fast +x, slow -y
    assert det.origin_mm == pytest.approx((-50.0, 40.0, -100.0))
    assert det.normal == pytest.approx((0, 0, -1))


def test_pixel_lab_round_trip_on_tilted_detector():
    f = rotation_matrix((0, 1, 0), 20) @ np.array([1.0, 0, 0])
    s = rotation_matrix((0, 1, 0), 20) @ np.array([0, -1.0, 0])
    det = simple_detector(fast_axis=f, slow_axis=s)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 1000, 50), rng.uniform(0, 900, 50)
    lab = det.pixel_to_lab(x, y)
    x2, y2, valid = det.lab_to_pixel(lab * 3.7)  # any ray length
    assert valid.all()
    np.testing.assert_allclose(x2, x, atol=1e-9)
    np.testing.assert_allclose(y2, y, atol=1e-9)
    assert det.beam_centre_px(Beam(1.0)) == pytest.approx((500.0, 400.0))


def test_resolution_map_hand_checked():
    beam = Beam(1.0)
    det = simple_detector()
    dmap = resolution_map(det, beam)
    assert dmap.shape == (900, 1000)
    # pixel (999, 399) centre is at (999.5, 399.5): 49.95 mm right, 0.05 mm off in slow
    r = math.hypot(49.95, 0.05)
    two_theta = math.atan2(r, 100.0)
    assert dmap[399, 999] == pytest.approx(1.0 / (2 * math.sin(two_theta / 2)), rel=1e-5)
    tth = two_theta_map(det, beam)
    assert tth[399, 999] == pytest.approx(math.degrees(two_theta), rel=1e-5)
    assert dmap.min() == dmap[899, 0] or dmap.min() == pytest.approx(dmap[[0, 0, 899, 899], [0, 999, 0, 999]].min())


def test_crystal_cell_and_matrices():
    cell = (57.8, 57.8, 150.0, 90, 90, 120)
    U = rotation_matrix((1, 2, 3), 37.0)
    xtal = Crystal.from_cell(cell, U, "P 61 2 2")
    assert xtal.unit_cell == pytest.approx(cell, rel=1e-9)
    np.testing.assert_allclose(xtal.U, U, atol=1e-12)
    assert xtal.space_group == gemmi.SpaceGroup("P 61 2 2").hm
    B = b_matrix((10, 20, 30, 90, 90, 90))
    np.testing.assert_allclose(B, np.diag([0.1, 0.05, 1 / 30]), atol=1e-12)
    tric = (31.0, 42.0, 55.0, 81.0, 97.0, 111.0)
    assert cell_from_a_matrix(b_matrix(tric)) == pytest.approx(tric, rel=1e-9)


def test_systematic_absences():
    sg = gemmi.SpaceGroup("P 43 21 2")
    hkl = np.array([[0, 0, 4], [0, 0, 2], [0, 0, 1], [1, 0, 0], [2, 0, 0], [1, 1, 1], [0, 3, 0]])
    np.testing.assert_array_equal(systematically_absent(sg, hkl), [False, True, True, True, False, False, True])
    i = systematically_absent(gemmi.SpaceGroup("I 2 3"), np.array([[1, 1, 1], [1, 1, 0], [2, 1, 1]]))
    np.testing.assert_array_equal(i, [True, False, False])
    # compare with gemmi's own test over a block of indices
    for name in ("C 1 2 1", "P 21 21 21", "P 61 2 2", "F d -3 m", "R 3 :H"):
        g = gemmi.SpaceGroup(name)
        block = np.array([(h, k, l) for h in range(-4, 5) for k in range(-4, 5) for l in range(-6, 7)])
        ours = systematically_absent(g, block)
        ref = np.array([g.operations().is_systematically_absent(list(map(int, h))) for h in block])
        np.testing.assert_array_equal(ours, ref, err_msg=name)


def lysozyme_experiment(start=0.0, width=0.5, n=20):
    beam = Beam(0.9763)
    det = Detector.from_beam_centre((1030.0, 1080.0), 200.0, (0.075, 0.075), (2068, 2162))
    xtal = Crystal.from_cell((79.1, 79.1, 38.0, 90, 90, 90), rotation_matrix((0.3, 1, 0.2), 40.0), "P 43 21 2")
    return Experiment(beam, det, Goniometer(), Scan(n, start, width), xtal)


def test_prediction_obeys_diffraction_and_inverts():
    exp = lysozyme_experiment()
    pred = predict_rotation(exp, d_min=2.0)
    assert len(pred) > 500
    np.testing.assert_allclose(np.linalg.norm(pred.s1, axis=1), 1 / exp.beam.wavelength_A, rtol=1e-10)
    assert np.all((pred.z >= 0) & (pred.z < 20))
    # back from (x, y, z) to reciprocal space gives A h
    q = reciprocal_vectors(exp, pred.x_px, pred.y_px, pred.z)
    np.testing.assert_allclose(q, pred.hkl @ exp.crystal.A_matrix.T, atol=1e-9)
    # and the spot is where s1 points
    lab = exp.detector.pixel_to_lab(pred.x_px, pred.y_px)
    cos = np.einsum("ij,ij->i", lab / np.linalg.norm(lab, axis=1)[:, None], pred.s1 * exp.beam.wavelength_A)
    np.testing.assert_allclose(cos, 1.0, atol=1e-12)
    assert np.all(pred.d >= 2.0 - 1e-9)
    assert lorentz_zeta(exp, pred.s1) == pytest.approx(np.abs(pred.zeta))


def test_prediction_with_setting_rotation_and_negative_scan():
    exp = lysozyme_experiment(start=30.0, width=-0.25, n=40)
    S = rotation_matrix((0, 0, 1), 5.0)
    exp = exp.replace(goniometer=Goniometer((1, 0.1, 0), setting_rotation=S, fixed_rotation=rotation_matrix((0, 1, 0), 3)))
    pred = predict_rotation(exp, d_min=2.5)
    assert len(pred) > 100
    assert np.all((pred.z >= 0) & (pred.z < 40))
    q = reciprocal_vectors(exp, pred.x_px, pred.y_px, pred.z)
    np.testing.assert_allclose(q, pred.hkl @ exp.crystal.A_matrix.T, atol=1e-9)


def test_full_turn_predicts_each_reflection_twice():
    exp = lysozyme_experiment(start=0.0, width=1.0, n=360)
    big = Detector.from_beam_centre((5000.0, 5000.0), 50.0, (0.1, 0.1), (10000, 10000))
    exp = exp.replace(detector=big)
    hkl = miller_indices(exp.crystal, d_min=3.0)
    pred = predict_rotation(exp, d_min=3.0, hkl=hkl)
    # every reflection not in the blind region crosses the sphere twice per turn
    counts = {}
    for h in map(tuple, pred.hkl):
        counts[h] = counts.get(h, 0) + 1
    assert set(counts.values()) == {2}
    assert pred.entering.sum() == len(pred) // 2


@pytest.mark.parametrize("z_range,turns", [((-3.0, 363.0), None), ((0.0, 720.0), 2), ((-2.5, 1082.5), None)])
def test_a_range_over_a_full_turn_meets_each_reflection_on_every_turn(z_range, turns):
    """A 360-degree sweep predicted with margins, or several turns: each crossing at each of its
    angles in the range (the last images of a full sweep are not left empty)."""
    exp = lysozyme_experiment(start=0.0, width=1.0, n=360)
    one = predict_rotation(exp, d_min=3.0)  # one turn: each crossing once, in [0, 360)
    pred = predict_rotation(exp, d_min=3.0, z_range=z_range)
    assert np.all((pred.z >= z_range[0]) & (pred.z < z_range[1]))
    expected = sorted((tuple(h), round(z + 360.0 * turn, 6)) for h, z in zip(one.hkl.tolist(), one.z)
                      for turn in range(-1, 4) if z_range[0] <= z + 360.0 * turn < z_range[1])
    got = sorted((tuple(h), round(z, 6)) for h, z in zip(pred.hkl.tolist(), pred.z))
    assert got == expected
    if turns:
        assert len(pred) == turns * len(one)
    assert np.sum(pred.z >= z_range[1] - 3.0) > 0  # the last images have their reflections


def test_polarization_unpolarised_and_polarised():
    s1 = np.array([[0.0, math.sin(0.5), -math.cos(0.5)], [math.sin(0.5), 0.0, -math.cos(0.5)]])
    p = polarization_factor(Beam(1.0, polarization_fraction=0.5), s1)
    np.testing.assert_allclose(p, (1 + math.cos(0.5) ** 2) / 2)
    # fully polarised with E along x: scattering in the y-z plane keeps everything,
    # scattering towards x loses sin^2(2theta)
    p = polarization_factor(Beam(1.0, polarization_fraction=1.0), s1)
    np.testing.assert_allclose(p, [1.0, math.cos(0.5) ** 2])


def test_experiment_dict_round_trip():
    exp = lysozyme_experiment()
    back = Experiment.from_dict(exp.to_dict())
    assert back == exp


def test_from_series():
    from streamer.series import SeriesInfo

    s = SeriesInfo("x", "simulator", (2162, 2068), "<u4", n_images=10, pixel_size_mm=(0.075, 0.075),
                   beam_centre_px=(1000.5, 1100.25), distance_mm=150.0, wavelength_A=1.2,
                   omega_start_deg=10.0, omega_increment_deg=0.1)
    exp = Experiment.from_series(s)
    assert exp.detector.image_size == (2068, 2162)
    assert exp.detector.beam_centre_px(exp.beam) == pytest.approx((1000.5, 1100.25))
    assert exp.scan.phi_deg(5) == pytest.approx(10.5)
