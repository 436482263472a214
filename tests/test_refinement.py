"""Positional refinement: a perturbed model refines back to the truth, robust to outliers, with
the lattice constraints kept; the rotation axis is refinable; prediction and matching."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from indexing_helpers import misorientation_deg, simulated_spots, sweep_experiment

from streamer.crystal import Crystal
from streamer.geometry import Detector, Goniometer, rotation_matrix
from streamer.indexing.predict import match_spots, predict_images, predict_near
from streamer.indexing.refinement import Observations, refine

CELL = (78.9, 78.9, 36.9, 90, 90, 90)


def _observations(truth, spots):
    """Index the spots with the truth (nearest prediction) to get Observations."""
    preds = predict_images(truth, 2.0, 0, truth.scan.n_images - 1)
    match = match_spots(preds, spots.x_px, spots.y_px, spots.z_image, max_px=3.0, max_images=1.5)
    s, p = match.spot_index, match.prediction_index
    return Observations(preds.hkl[p], spots.x_px[s], spots.y_px[s], spots.z_image[s])


def _perturbed(truth, d_px=(2.0, -1.5), d_dist=1.0, rot_deg=0.3, cell_scale=1.005, axis=None):
    det = truth.detector
    bx, by = det.beam_centre_px(truth.beam)
    moved = Detector.from_beam_centre((bx + d_px[0], by + d_px[1]), det.distance_mm + d_dist, det.pixel_size_mm,
                                      det.image_size)
    cell = tuple(v * cell_scale for v in truth.crystal.unit_cell[:3]) + truth.crystal.unit_cell[3:]
    u = rotation_matrix((0.3, 0.5, 0.8), rot_deg) @ truth.crystal.U
    gonio = truth.goniometer if axis is None else Goniometer(axis)
    crystal = Crystal.from_cell(cell, u, truth.crystal.space_group)
    return truth.replace(detector=moved, crystal=crystal, goniometer=gonio)


def test_refinement_recovers_the_truth_with_outliers():
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=20, width=0.5)
    spots = simulated_spots(truth, noise_px=0.3, noise_images=0.1)
    obs = _observations(truth, spots)
    rng = np.random.default_rng(5)
    bad = rng.random(len(obs)) < 0.05  # 5 % gross outliers (wrong positions)
    obs = Observations(obs.hkl, np.where(bad, obs.x_px + rng.normal(0, 30, len(obs)), obs.x_px), obs.y_px, obs.z_image)
    result = refine(_perturbed(truth), obs, "tetragonal")
    found = result.experiment
    a, b, c = found.crystal.unit_cell[:3]
    assert a == pytest.approx(b, rel=1e-12)  # the tetragonal constraint holds (to rounding)
    np.testing.assert_allclose([a, c], [78.9, 36.9], rtol=2e-4)
    assert misorientation_deg(truth.crystal.A_matrix, found.crystal.A_matrix) < 0.01
    bx, by = found.detector.beam_centre_px(found.beam)
    assert abs(bx - 513) < 0.05 and abs(by - 513) < 0.05
    assert abs(found.detector.distance_mm - 150.0) < 0.05
    assert 0.35 < result.rmsd_px < 0.5  # noise 0.3 px per axis: 0.42 expected
    assert result.rmsd_deg < 0.1
    assert not result.inliers[bad].any() or result.inliers[bad].mean() < 0.2  # outliers flagged


def test_triclinic_refinement_keeps_the_metric():
    cell = (40.0, 50.0, 60.0, 70.0, 80.0, 95.0)
    truth = sweep_experiment(cell, "P 1", n_images=10, width=0.5)
    obs = _observations(truth, simulated_spots(truth))
    result = refine(_perturbed(truth, cell_scale=0.997), obs, "triclinic")
    np.testing.assert_allclose(result.experiment.crystal.unit_cell, cell, rtol=5e-4, atol=0.02)


def test_rotation_axis_is_refinable():
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=40, width=0.5)
    obs = _observations(truth, simulated_spots(truth, noise_px=0.2))
    # 1 deg towards the beam: (a turn about the beam itself equals turning the whole experiment,
    # which the detector's in-plane rotation and the crystal orientation absorb)
    axis = rotation_matrix((0, 1, 0), 1.0) @ np.array([1.0, 0.0, 0.0])
    start = _perturbed(truth, d_px=(0.0, 0.0), d_dist=0.0, rot_deg=0.0, cell_scale=1.0, axis=tuple(axis))
    fixed = refine(start, obs, "tetragonal", refine_axis=False)
    free = refine(start, obs, "tetragonal", refine_axis=True)
    found_axis = np.asarray(free.experiment.goniometer.rotation_axis)
    assert np.degrees(np.arccos(found_axis @ [1.0, 0.0, 0.0])) < 0.05
    assert free.rmsd_px < 0.8 * fixed.rmsd_px


def test_predictions_land_on_the_spots():
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=10, width=0.5)
    spots = simulated_spots(truth, noise_px=0.0, noise_images=0.0)
    preds = predict_images(truth, 2.0, 2, 4)  # images 2..4 only
    assert np.all((preds.z > 1.0) & (preds.z < 6.0))
    match = match_spots(preds, spots.x_px, spots.y_px, spots.z_image)
    assert match.rmsd_px < 1e-6 and len(match.spot_index) == len(preds)
    # mosaicity widens the rotation range a reflection is recorded over
    mosaic = truth.replace(crystal=Crystal(truth.crystal.A, truth.crystal.space_group, 0.5))
    assert len(predict_images(mosaic, 2.0, 2, 4)) > len(preds)
    # predict_near returns the crossing nearest the observed angle
    x, y, phi, ok = predict_near(truth.beam, truth.detector, truth.goniometer, truth.crystal.A_matrix,
                                 preds.hkl, preds.phi_deg + 0.2)
    assert ok.all()
    np.testing.assert_allclose(phi, preds.phi_deg, atol=1e-9)
    np.testing.assert_allclose(x, preds.x_px, atol=1e-6)


def test_scan_varying_orientation_follows_a_drifting_crystal():
    from streamer.indexing.scan_varying import refine_scan_varying
    from streamer.indexing.predict import predict_images as _pred

    # the crystal turns 0.02 deg per image about y while the sweep runs (e.g. slipping in the loop)
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=40, width=0.5)
    rng = np.random.default_rng(7)
    hkl, x, y, z = [], [], [], []
    for k in range(8):  # 8 blocks of 5 images, each with its own orientation
        drift = rotation_matrix((0, 1, 0), 0.02 * (5 * k + 2.5))
        block = truth.replace(crystal=Crystal(drift @ truth.crystal.A_matrix, truth.crystal.space_group))
        p = _pred(block, 2.0, 5 * k, 5 * k + 4)
        sel = (p.z >= 5 * k) & (p.z < 5 * k + 5)
        hkl.append(p.hkl[sel])
        x.append(p.x_px[sel] + rng.normal(0, 0.2, sel.sum()))
        y.append(p.y_px[sel] + rng.normal(0, 0.2, sel.sum()))
        z.append(p.z[sel] + rng.normal(0, 0.05, sel.sum()))
    obs = Observations(np.concatenate(hkl), *(np.concatenate(v) for v in (x, y, z)))
    static = refine(truth, obs, "tetragonal", refine_detector=False)
    varying = refine_scan_varying(static.experiment, obs, block_images=5, smoothness_mrad=1.0)
    assert varying.rmsd_px < 0.8 * static.rmsd_px
    assert varying.rmsd_px < 0.35
    # the block orientations follow the drift: 0.1 deg (1.745 mrad) per block about y
    steps = np.diff(varying.rotations_mrad[:, 1])
    np.testing.assert_allclose(steps, np.radians(0.1) * 1e3, atol=0.3)


def test_refinement_keeps_the_sensor_parallax():
    """A 1 mm Si sensor at 1 A (about 0.2 mm deep): refinement rebuilds the detector with it,
    so noise-free spots fit exactly; a model without the parallax cannot fit them as well."""
    truth = sweep_experiment(CELL, "P 43 21 2", n_images=20, width=0.5)
    truth = truth.replace(detector=replace(truth.detector, sensor_mu_per_mm=4.2, sensor_thickness_mm=1.0))
    obs = _observations(truth, simulated_spots(truth, noise_px=0.0, noise_images=0.0))
    blind = _perturbed(truth)
    start = blind.replace(detector=replace(blind.detector, sensor_mu_per_mm=4.2, sensor_thickness_mm=1.0))
    result = refine(start, obs, "tetragonal")
    det = result.experiment.detector
    assert (det.sensor_mu_per_mm, det.sensor_thickness_mm) == (4.2, 1.0)
    assert result.rmsd_px < 1e-3
    assert refine(blind, obs, "tetragonal").rmsd_px > 10 * result.rmsd_px
