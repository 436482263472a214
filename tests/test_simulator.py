"""The simulator against its own truth: spot positions vs the geometry model, integrated counts vs
truth intensities, Poisson background statistics, symmetry of the intensities, truth file."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest
from pydantic import ValidationError
from scipy.spatial import cKDTree

from streamer.detector_presets import DetectorPreset, available, load_preset
from streamer.errors import BadConfig
from streamer.geometry import Experiment
from streamer.pixel_maps import resolution_map
from streamer.prediction import miller_indices, predict_rotation
from tools.simulator.background import BackgroundModel
from tools.simulator.presets import PRESETS
from tools.simulator.structure import random_structure, wilson_sigma
from tools.simulator.sweep import Simulation, SimulationSpec
from tools.simulator.truth import load_truth, write_truth

SMALL = dict(detector="test512", cell=(40.0, 50.0, 60.0, 90, 90, 90), space_group="P 21 21 21", d_min=2.0,
             zingers_per_image=0.0, seed=5)


@pytest.fixture(scope="module")
def wide_sim() -> Simulation:
    """0.5 deg images: most reflections on 1-3 images."""
    return Simulation(SimulationSpec(n_images=8, osc_width_deg=0.5, **SMALL))


def isolated(sim: Simulation, radius_px: float = 10.0) -> np.ndarray:
    """Reflections with no other reflection within radius_px on an overlapping image range."""
    r = sim.reflections
    xy = np.column_stack([r.pred.x_px, r.pred.y_px])
    first = np.full(len(xy), 10**9)
    last = np.full(len(xy), -1)
    np.minimum.at(first, r.part_refl, r.part_image)
    np.maximum.at(last, r.part_refl, r.part_image)
    ok = np.ones(len(xy), dtype=bool)
    for a, b in cKDTree(xy).query_pairs(radius_px):
        if first[a] <= last[b] and first[b] <= last[a]:
            ok[a] = ok[b] = False
    margin = 8
    nx, ny = sim.preset.image_size
    inside = (xy[:, 0] > margin) & (xy[:, 0] < nx - margin) & (xy[:, 1] > margin) & (xy[:, 1] < ny - margin)
    gap = sim.mask != 0
    near_gap = np.array([gap[max(0, int(y) - margin):int(y) + margin, max(0, int(x) - margin):int(x) + margin].any()
                         for x, y in xy])
    return ok & inside & ~near_gap


def window(x: float, y: float, half: int = 5) -> tuple[slice, slice]:
    return slice(int(y) - half, int(y) + half + 1), slice(int(x) - half, int(x) + half + 1)


# -- detector presets -------------------------------------------------------------------------

def test_detector_presets_load_and_gaps_follow_the_eiger_layout():
    names = available()
    assert {"eiger2_4m", "eiger2_16m", "eiger2_1m", "pilatus6m", "test512"} <= set(names)
    p = load_preset("4M")
    assert p.shape == (2162, 2068) and p.pixel_size_mm == 0.075
    mask = p.gap_mask()
    assert mask[:, 1028:1040].all() and not mask[:512, 1027].any() and not mask[:512, 1040].any()
    assert mask[512:550, :].all() and mask[1062:1100].all() and mask[1612:1650].all()
    assert mask.sum() == 12 * 2162 + 3 * 38 * 2068 - 3 * 38 * 12
    assert load_preset("pilatus6m").gap_mask()[195:212].all()
    with pytest.raises(BadConfig):
        load_preset("no-such-detector")
    with pytest.raises(ValidationError):
        DetectorPreset(name="bad", image_size=(100, 100), pixel_size_mm=0.1, modules=(2, 1), module_size=(50, 100),
                       module_gap=(2, 0), saturation_value=1000)


# -- intensities ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_random_structure_has_the_space_group_symmetry(name):
    preset = PRESETS[name]
    from streamer.crystal import Crystal

    crystal = Crystal.from_cell(preset.cell, None, preset.space_group)
    hkl = miller_indices(crystal, 3.0, remove_absent=False)
    d = 1.0 / np.linalg.norm(hkl @ crystal.A_matrix.T, axis=1)
    sg = gemmi.SpaceGroup(preset.space_group)
    model = random_structure(hkl, d, preset.space_group, 20.0, anomalous=0.0, rng=np.random.default_rng(1))
    i0 = model.intensities(hkl)
    absent = np.array(sg.operations().systematic_absences(hkl.astype(np.int32)), dtype=bool)
    assert np.all(i0[absent] == 0) and np.all(i0[~absent] > 0)
    for op in sg.operations().sym_ops:
        rot = np.array(op.rot) // gemmi.Op.DEN
        np.testing.assert_array_equal(model.intensities(hkl @ rot), i0)
    np.testing.assert_array_equal(model.intensities(-hkl), i0)  # Friedel's law
    anom = random_structure(hkl, d, preset.space_group, 20.0, anomalous=0.1, rng=np.random.default_rng(1))
    ip, im = anom.intensities(hkl), anom.intensities(-hkl)
    centric = np.array(sg.operations().centric_flag_array(hkl.astype(np.int32)), dtype=bool)
    np.testing.assert_allclose(ip[centric], im[centric])
    if (~centric & ~absent).any():
        assert np.mean(np.abs(ip - im)[~centric & ~absent] > 0) > 0.99
    for op in sg.operations().sym_ops:  # Bijvoet halves keep the symmetry too
        rot = np.array(op.rot) // gemmi.Op.DEN
        np.testing.assert_allclose(anom.intensities(hkl @ rot), ip)


def test_random_structure_follows_wilson_statistics():
    crystal_cell, sg_name = (60.0, 60.0, 60.0, 90, 90, 90), "P 4 2 2"  # many centric zones
    from streamer.crystal import Crystal

    crystal = Crystal.from_cell(crystal_cell, None, sg_name)
    hkl = miller_indices(crystal, 1.6)
    d = 1.0 / np.linalg.norm(hkl @ crystal.A_matrix.T, axis=1)
    B = 25.0
    model = random_structure(hkl, d, sg_name, B, scale=100.0, rng=np.random.default_rng(2))
    ops = gemmi.SpaceGroup(sg_name).operations()
    # one representative per orbit: reduce to gemmi's ASU
    asu = gemmi.ReciprocalAsu(gemmi.SpaceGroup(sg_name))
    unique = np.array([asu.is_in(list(h)) for h in hkl.tolist()])
    hkl, d = hkl[unique], d[unique]
    eps = np.array(ops.epsilon_factor_array(hkl.astype(np.int32)), dtype=float)
    z = model.intensities(hkl) / (eps * wilson_sigma(d, B, 100.0))  # normalised intensities E^2
    centric = np.array(ops.centric_flag_array(hkl.astype(np.int32)), dtype=bool)
    za, zc = z[~centric], z[centric]
    assert len(za) > 5000 and len(zc) > 500
    assert abs(za.mean() - 1) < 0.05 and abs(zc.mean() - 1) < 0.1
    assert abs(np.mean(za**2) - 2) < 0.25 and abs(np.mean(zc**2) - 3) < 0.7  # acentric 2, centric 3
    assert abs(np.mean(za < 1) - (1 - np.exp(-1))) < 0.03


# -- frames against the geometry and the truth ------------------------------------------------

def test_spot_centroids_agree_with_the_geometry_model(wide_sim):
    sim = wide_sim
    r = sim.reflections
    # the truth positions are the shared model's prediction
    again = predict_rotation(sim.experiment, sim.spec.d_min, hkl=r.pred.hkl[r.lattice == 0])
    assert len(r.intensity) > 100
    ok = isolated(sim)
    means = [sim.expected_spots(i) for i in range(sim.spec.n_images)]
    ys, xs = np.mgrid[0:means[0].shape[0], 0:means[0].shape[1]] + 0.5
    errors = []
    for k in np.flatnonzero(ok & (r.expected_counts > 1)):
        win = window(r.pred.x_px[k], r.pred.y_px[k])
        w = sum(means[i][win] for i in r.part_image[r.part_refl == k])
        errors.append(np.hypot((w * xs[win]).sum() / w.sum() - r.pred.x_px[k],
                               (w * ys[win]).sum() / w.sum() - r.pred.y_px[k]))
    assert len(errors) > 50
    assert np.max(errors) < 0.1 and np.median(errors) < 0.01
    inside = (r.pred.z >= 0) & (r.pred.z < sim.spec.n_images)
    found = {}
    for h, phi, x, y in zip(again.hkl.tolist(), again.phi_deg, again.x_px, again.y_px):
        found.setdefault(tuple(h), []).append((phi, x, y))
    mine = r.pred.select(inside)
    for h, phi, x, y in zip(mine.hkl.tolist(), mine.phi_deg, mine.x_px, mine.y_px):
        assert min(abs(phi - p) + abs(x - a) + abs(y - b) for p, a, b in found[tuple(h)]) < 1e-9


def test_the_header_gives_the_analysis_the_simulated_geometry_with_parallax(wide_sim):
    """The analysis rebuilds the detector from the series header (a 0.45 mm Si sensor): the
    truth's spot positions must carry the same parallax."""
    truth = wide_sim.experiment.detector
    det = Experiment.from_series(wide_sim.series_info()).detector
    assert truth.has_parallax and det.sensor_thickness_mm == truth.sensor_thickness_mm == 0.45
    assert det.sensor_mu_per_mm == truth.sensor_mu_per_mm
    x, y = np.random.default_rng(0).uniform(0, 512, (2, 200))
    np.testing.assert_allclose(det.pixel_to_lab(x, y), truth.pixel_to_lab(x, y), rtol=0, atol=1e-9)


def test_integrated_counts_agree_with_truth_within_poisson_error(wide_sim):
    sim = wide_sim
    r = sim.reflections
    ok = isolated(sim) & (r.expected_counts > 0)
    frames = [sim.frame(i).astype(np.float64) for i in range(sim.spec.n_images)]
    means = [sim.expected_spots(i) for i in range(sim.spec.n_images)]
    z, full_ratio = [], []
    for k in np.flatnonzero(ok):
        rows = r.part_refl == k
        win = window(r.pred.x_px[k], r.pred.y_px[k])
        images = r.part_image[rows]
        obs = sum(frames[i][win].sum() for i in images)
        bg = sim.background_map[win].sum() * len(images)
        expected = sum(means[i][win].sum() for i in images)
        z.append((obs - bg - expected) / np.sqrt(expected + bg))
        full_ratio.append(expected / r.expected_counts[k])
    z = np.asarray(z)
    assert len(z) > 50
    assert abs(z.mean()) < 4 / np.sqrt(len(z))
    assert 0.8 < np.mean(z**2) < 1.25  # chi-square per reflection
    # the pixels hold the truth's expected counts (window and Gaussian tails lose < 0.1 %)
    assert np.median(full_ratio) > 0.999 and np.min(full_ratio) > 0.99 and np.max(full_ratio) < 1.0 + 1e-9


def test_background_is_poisson_with_the_expected_mean():
    sim = Simulation(SimulationSpec(n_images=120, intensity_scale=0.0, background=BackgroundModel(air=0.4, solvent=0.3),
                                    **SMALL))
    lam = sim.background_map
    good = sim.mask == 0
    assert np.all(lam[~good] == 0)
    counts = np.zeros(lam.shape)
    zeros = np.zeros(lam.shape)
    for i in range(sim.spec.n_images):
        f = sim.frame(i)
        assert np.all(f[~good] == np.iinfo(f.dtype).max)
        counts += f
        zeros += f == 0
    n = sim.spec.n_images
    expected = n * lam[good]
    chi2 = np.sum((counts[good] - expected) ** 2 / expected) / good.sum()
    assert abs(chi2 - 1) < 0.03  # variance = mean, pixel by pixel
    assert abs(counts[good].sum() / expected.sum() - 1) < 0.003
    # P(0) = exp(-lambda) per pixel, summed over the detector
    p0 = np.exp(-lam[good])
    sd = np.sqrt(np.sum(n * p0 * (1 - p0)))
    assert abs(zeros[good].sum() - n * p0.sum()) < 5 * sd


def test_frames_are_reproducible_in_any_order(wide_sim):
    a = wide_sim.frame(3).copy()
    wide_sim.frame(5)
    np.testing.assert_array_equal(wide_sim.frame(3), a)
    other = Simulation(SimulationSpec(n_images=8, osc_width_deg=0.5, **{**SMALL, "seed": 6}))
    assert not np.array_equal(other.frame(3), a)


def test_truth_file_round_trip(wide_sim, tmp_path):
    path = write_truth(tmp_path / "truth.h5", wide_sim)
    truth = load_truth(path)
    r = wide_sim.reflections
    np.testing.assert_array_equal(truth.reflections["hkl"], r.pred.hkl)
    np.testing.assert_allclose(truth.reflections["expected_counts"], r.expected_counts)
    assert truth.experiment == wide_sim.experiment
    gonio, scan = truth.experiment.goniometer, truth.experiment.scan
    np.testing.assert_allclose(truth.ub_per_image[0, 4],
                               gonio.rotation_matrix(scan.phi_deg(4.5)) @ truth.experiment.crystal.A_matrix)
    # partialities of a reflection fully inside the sweep add up to 1
    inner = (truth.reflections["z"] > 3) & (truth.reflections["z"] < 5) & (truth.reflections["sigma_phi_deg"] < 0.3)
    sums = np.bincount(truth.partials["reflection"], truth.partials["partiality"], minlength=len(inner))
    np.testing.assert_allclose(sums[inner], 1.0, atol=1e-3)
    np.testing.assert_allclose(truth.background, wide_sim.background_map, rtol=1e-6)
    with pytest.raises(ValueError):
        load_truth(tmp_path / "nope.h5") if False else _not_truth(tmp_path)


def _not_truth(tmp_path):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    return load_truth(tmp_path / "other.h5")


def test_options_damage_second_lattice_ice_overloads():
    base = Simulation(SimulationSpec(n_images=6, osc_width_deg=0.5, **SMALL))
    damaged = Simulation(SimulationSpec(n_images=6, osc_width_deg=0.5, damage=2.0, **SMALL))
    late = base.reflections.part_image >= 4
    ratio = damaged.reflections.part_counts[late] / base.reflections.part_counts[late]
    assert np.all(ratio < 1)
    d = base.reflections.pred.d[base.reflections.part_refl[late]]
    assert np.corrcoef(d, ratio)[0, 1] > 0.5  # high resolution (small d) loses more
    twin = Simulation(SimulationSpec(n_images=6, osc_width_deg=0.5, second_lattice=0.5, **SMALL))
    assert set(np.unique(twin.reflections.lattice)) == {0, 1}
    assert len(twin.crystals) == 2
    np.testing.assert_allclose(twin.crystals[1].unit_cell, twin.crystals[0].unit_cell, atol=1e-9)
    ice = Simulation(SimulationSpec(n_images=1, background=BackgroundModel(ice=1.0), **SMALL))
    dmap = resolution_map(ice.experiment.detector, ice.experiment.beam)
    on_ring = np.abs(1 / dmap - 1 / 3.669) < 0.001
    off_ring = np.abs(1 / dmap - 1 / 3.0) < 0.001
    live = on_ring & (ice.mask == 0)
    assert ice.background_map[live].mean() > 5 * base.background_map[live].mean()
    assert ice.background_map[off_ring].mean() == pytest.approx(base.background_map[off_ring].mean(), rel=0.05)
    hot = Simulation(SimulationSpec(n_images=2, osc_width_deg=0.5, intensity_scale=5e7, **SMALL))
    f = hot.frame(0)
    assert np.any(f == hot.preset.saturation_value + 1)
    assert not np.any((f > hot.preset.saturation_value + 1) & (hot.mask == 0))


def test_lysozyme_preset_on_the_4m_geometry():
    """The demo's default sweep sets up and its first frame has spots where the truth says."""
    sim = Simulation(SimulationSpec(n_images=2, detector="eiger2_4m", zingers_per_image=0.0))
    f = sim.frame(0)
    rows = sim.rows_of_image(0)
    strong = sim.reflections.part_counts[rows] > 200
    idx = sim.reflections.part_refl[rows][strong]
    x = sim.reflections.pred.x_px[idx].astype(int)
    y = sim.reflections.pred.y_px[idx].astype(int)
    on = sim.mask[y, x] == 0
    assert on.sum() > 20
    assert np.median(f[y[on], x[on]]) > 20
    info = sim.series_info()
    assert info.image_shape == (2162, 2068) and info.pixel_mask.sum() == load_preset("4M").gap_mask().sum()


@pytest.mark.parametrize("counts", [6.0, 400.0])  # photon-by-photon and pixel-by-pixel drawing
def test_rendered_spot_pixels_are_poisson_with_the_gaussian_means(counts):
    from tools.simulator.noise import seed_numba
    from tools.simulator.render import render_spots, spot_means

    mask = np.zeros((40, 40), dtype=np.uint8)
    mask[:, 22] = 1  # a gap through the spot: its photons are lost
    x, y, s = np.array([20.3]), np.array([17.8]), np.array([0.9])
    means = np.zeros((40, 40))
    spot_means(x, y, s, np.array([counts]), mask, means)
    assert means[:, 22].sum() == 0 and 0.6 * counts < means.sum() < 0.99 * counts
    n = 3000
    total = np.zeros((40, 40))
    square = np.zeros((40, 40))
    zeros = np.zeros((40, 40))
    touched = np.zeros(100000, dtype=np.int64)
    seed_numba(11)
    for _ in range(n):
        frame = np.zeros((40, 40), dtype=np.uint32)
        render_spots(x, y, s, np.array([counts]), mask, frame, touched, 0, 1, 10**9)
        total += frame
        square += frame.astype(np.float64) ** 2
        zeros += frame == 0
    lit = means > 0.05 * means.max()
    mean = total / n
    var = square / n - mean**2
    z = (mean[lit] - means[lit]) / np.sqrt(means[lit] / n)
    assert np.mean(z**2) < 2.0 and abs(z.mean()) < 1.0
    np.testing.assert_allclose(var[lit], means[lit], rtol=0.15)
    np.testing.assert_allclose(zeros[lit] / n, np.exp(-means[lit]), atol=0.03)
    assert total[means == 0].sum() == 0


def test_intensities_from_an_mtz_follow_its_symmetry(shared_data):
    from tools.simulator.structure import from_mtz

    root = shared_data / "sim" / "lyso-nanobragg"
    table = np.loadtxt(root / "truth_intensities.csv", delimiter=",", skiprows=1)
    hkl, i_true = table[:, :3].astype(np.int64), table[:, 5]
    model = from_mtz(str(root / "truth_intensities.mtz"))
    assert model.space_group == "P 43 21 2"
    np.testing.assert_allclose(model.intensities(hkl), i_true, rtol=1e-6, atol=1e-3)  # MTZ float32
    sg = gemmi.SpaceGroup("P 43 21 2")
    for op in sg.operations().sym_ops:  # every symmetry mate and Friedel mate reads the same value
        rot = np.array(op.rot) // gemmi.Op.DEN
        np.testing.assert_allclose(model.intensities(hkl @ rot), i_true, rtol=1e-6, atol=1e-3)  # MTZ float32
        np.testing.assert_allclose(model.intensities(-(hkl @ rot)), i_true, rtol=1e-6, atol=1e-3)  # MTZ float32
    assert np.all(model.intensities(np.array([[0, 0, 1], [0, 0, 2], [1, 0, 0]])) == 0)  # 4_3 and 2_1 absences
