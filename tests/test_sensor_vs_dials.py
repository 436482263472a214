"""Pixel -> mm with sensor parallax against DIALS 3.12 on a real PILATUS3 6M image (450 um Si).

dials.import and dials.find_spots on thaumatin image 1; DIALS's `centroid_px_to_mm` gives each
spot's position in the detector plane (dxtbx's ParallaxCorrectedPxMmStrategy) and
`map_centroids_to_reciprocal_space` its resolution, `get_resolution_at_pixel` that of pixel
centres. Ours: `Detector.pixel_to_lab` projected on fast and slow from the origin, d from
`ImageAnalyser.d_spacing` (the compiled kernel) and the analyser's resolution map (masks).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_dials

from streamer.config import Config
from streamer.geometry import Beam, Detector, Experiment, s1_vectors
from streamer.perimage import ImageAnalyser
from streamer.pixel_maps import resolution_map
from streamer.sources.open_any import open_source

pytestmark = [pytest.mark.slow, pytest.mark.dials, needs_dials()]
DIALS_PYTHON = "/usr/bin/python3"  # Debian's DIALS runs on the system interpreter
SCRIPT = """
import numpy
from dials.array_family import flex
from dxtbx.model.experiment_list import ExperimentListFactory
experiments = ExperimentListFactory.from_json_file('imported.expt')
t = flex.reflection_table.from_file('strong.refl')
t.centroid_px_to_mm(experiments)
t.map_centroids_to_reciprocal_space(experiments)
panel = experiments[0].detector[0]
mm = t['xyzobs.mm.value'].as_numpy_array()[:, :2]
back = numpy.array([panel.millimeter_to_pixel(tuple(p)) for p in mm])
xy = numpy.random.default_rng(0).integers(0, (2463, 2527), (5000, 2))
s0 = experiments[0].beam.get_s0()
d_map = [panel.get_resolution_at_pixel(s0, (float(x) + 0.5, float(y) + 0.5)) for x, y in xy]
numpy.savez('dials.npz', px=t['xyzobs.px.value'].as_numpy_array()[:, :2], mm=mm, px_from_mm=back,
            d=1.0 / numpy.linalg.norm(t['rlp'].as_numpy_array(), axis=1), map_xy=xy, d_map=d_map)
"""


@pytest.fixture(scope="module")
def dials_spots(shared_data, unpacked, tmp_path_factory):
    if not Path(DIALS_PYTHON).exists():
        pytest.skip("DIALS's interpreter is absent")
    path = unpacked(shared_data / "real-images" / "thaumatin_grid" / "thau_3_2_0001.cbf.bz2")
    work = tmp_path_factory.mktemp("parallax_vs_dials")
    for command in (["dials.import", str(path), "output.experiments=imported.expt"],
                    ["dials.find_spots", "imported.expt", "output.reflections=strong.refl", "nproc=1"],
                    [DIALS_PYTHON, "-c", SCRIPT]):
        run = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
    panel = json.loads((work / "imported.expt").read_text())["detector"][0]["panels"][0]
    return path, panel, dict(np.load(work / "dials.npz"))


def plane_mm(detector: Detector, x_px, y_px) -> np.ndarray:
    """In-plane mm (fast, slow) from the origin, as DIALS's xyzobs.mm.value."""
    rel = detector.pixel_to_lab(x_px, y_px) - np.asarray(detector.origin_mm)
    return np.column_stack([rel @ np.asarray(detector.fast_axis), rel @ np.asarray(detector.slow_axis)])


def test_pixel_to_mm_agrees_with_dials(dials_spots):
    _, panel, ref = dials_spots
    assert panel["px_mm_strategy"]["type"] == "ParallaxCorrectedPxMmStrategy" and panel["thickness"] == 0.45
    geometry = (tuple(panel["origin"]), tuple(panel["fast_axis"]), tuple(panel["slow_axis"]),
                tuple(panel["pixel_size"]), tuple(panel["image_size"]))
    px, mm = ref["px"], ref["mm"]
    assert len(px) > 200
    with_parallax = np.abs(plane_mm(Detector(*geometry, panel["mu"], panel["thickness"]), *px.T) - mm).max()
    without = np.abs(plane_mm(Detector(*geometry), *px.T) - mm).max()
    print(f"\nDIALS px -> mm: ours differs by {with_parallax:.2e} mm with parallax (DIALS's mu), "
          f"{without:.3f} mm without")
    assert with_parallax < 1e-9
    assert without > 0.05
    # mm -> px: DIALS adds the shift at the plane point; ours inverts its px -> mm exactly
    x, y, valid = Detector(*geometry, panel["mu"], panel["thickness"]).lab_to_pixel(
        np.asarray(panel["origin"]) + np.outer(mm[:, 0], panel["fast_axis"]) + np.outer(mm[:, 1], panel["slow_axis"]))
    assert valid.all()
    assert np.abs(np.column_stack([x, y]) - ref["px_from_mm"]).max() < 1e-3


def test_our_series_geometry_and_resolutions_agree_with_dials(dials_spots):
    path, panel, ref = dials_spots
    info, _ = open_source([path])
    detector = Experiment.from_series(info).detector
    print(f"\nmu (1/mm): ours (xraydb) {detector.sensor_mu_per_mm:.5f}, DIALS (cctbx) {panel['mu']:.5f}")
    assert detector.sensor_mu_per_mm == pytest.approx(panel["mu"], rel=1e-3)
    assert detector.sensor_thickness_mm == panel["thickness"]
    assert np.abs(plane_mm(detector, *ref["px"].T) - ref["mm"]).max() < 1e-5
    x, y = ref["px"].T.copy()
    analyser = ImageAnalyser(info, Config(), warm_up=False)
    d = analyser.d_spacing(x, y)
    beam = Beam(info.wavelength_A)
    plain = Experiment(beam, replace(detector, sensor_thickness_mm=0.0))
    d_plain = 1.0 / np.linalg.norm(s1_vectors(plain, x, y) - beam.s0, axis=1)
    error, error_plain = np.abs(d / ref["d"] - 1).max(), np.abs(d_plain / ref["d"] - 1).max()
    print(f"d of DIALS's spots: ours differs by {error:.1e} (relative) with parallax, {error_plain:.1e} without")
    assert error < 1e-6
    assert error_plain > 1e-4
    x, y = ref["map_xy"].T
    error = np.abs(analyser.resolution_map[y, x] / ref["d_map"] - 1).max()
    error_plain = np.abs(resolution_map(plain.detector, beam)[y, x] / ref["d_map"] - 1).max()
    print(f"resolution map (float32): ours differs by {error:.1e} with parallax, {error_plain:.1e} without")
    assert error < 3e-7
    assert error_plain > 1e-4
