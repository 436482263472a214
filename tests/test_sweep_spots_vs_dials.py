"""A rotation sweep we write, found by DIALS 3.12 and by us: the same 3D spots.

The simulator writes a PILATUS 6M sweep through the recorder (int32 pixels, -1 in the module
gaps, the gaps flagged in the pixel mask), as `xtalstream record` writes a beamline's data.
`dials.import` + `dials.find_spots` (defaults) on that file and `xtalstream findspots` on the
same file must give the same spots: this checks the file (geometry and mask where a generic
NeXus reader looks for them) as much as the spot finding. Before the recorder wrote the mask
in NXmx's place, DIALS took the gaps' -1 for counts: 6713 spots against our 6928 on a
triclinic sweep, differing next to every gap.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess

import hdf5plugin
import numpy as np
import pytest
from conftest import needs_dials
from scipy.spatial import cKDTree
from test_findspots_vs_dials import ADSC, smv_copy

from streamer.commands import findspots
from streamer.recorder import record_frames
from streamer.sources.image_files import ImageSeriesSource
from streamer.spots_io import read_spots_csv
from tools import simulate

pytestmark = [pytest.mark.slow, pytest.mark.dials]
DIALS_PYTHON = "/usr/bin/python3"  # Debian's DIALS runs on the system interpreter
DUMP = ("import numpy; from dials.array_family import flex; "
        "r = flex.reflection_table.from_file('strong.refl'); x, y, z = r['xyzobs.px.value'].parts(); "
        "numpy.save('dials_spots.npy', numpy.column_stack([numpy.array(x), numpy.array(y), numpy.array(z), "
        "numpy.array(r['intensity.sum.value'])]))")


def run(cmd: list[str], cwd) -> None:
    env = {**os.environ, "HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}  # Debian's HDF5 lacks bitshuffle
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def assert_same_spots_as_dials(master, tmp_path, at_least: int) -> None:
    """`xtalstream findspots` and `dials.import` + `dials.find_spots` (defaults) on one file:
    the same spots, centroids and intensities."""
    assert findspots.main([str(master), "--out", str(tmp_path / "spots.csv")]) == 0
    cols = read_spots_csv(tmp_path / "spots.csv")
    ours = np.column_stack([cols[k] for k in ("x_px", "y_px", "z_image", "intensity")])
    run(["dials.import", str(master), "output.experiments=imported.expt"], tmp_path)
    run(["dials.find_spots", "imported.expt", "output.reflections=strong.refl", "nproc=1"], tmp_path)
    run([DIALS_PYTHON, "-c", DUMP], tmp_path)
    dials = np.load(tmp_path / "dials_spots.npy")
    distance, nearest = cKDTree(ours[:, :3]).query(dials[:, :3])
    print(f"\n{len(dials)} DIALS spots, {len(ours)} ours; largest centroid difference {distance.max():.2g} px")
    assert len(ours) > at_least and len(ours) == len(dials)
    assert distance.max() < 1e-3  # centroids as printed (4 decimals) and DIALS's float64
    np.testing.assert_allclose(ours[nearest, 3], dials[:, 3], rtol=1e-6)


@needs_dials()
def test_dials_finds_our_spots_in_a_sweep_we_wrote(tmp_path):
    master = tmp_path / "sweep.h5"
    assert simulate.main(["--preset", "triclinic", "--detector", "pilatus6m", "--images", "8", "--oscillation",
                          "0", "0.5", "--distance", "250", "--wavelength", "0.9", "--seed", "7",
                          "--out", str(master)]) == 0
    assert_same_spots_as_dials(master, tmp_path, at_least=500)


@needs_dials()
def test_dials_finds_our_spots_in_signed_counts_we_wrote(shared_data, unpacked, tmp_path):
    """A CCD's counts less its pedestal (nanoBragg images as an ADSC's, with read noise: half
    the background below 0), written by the recorder as int32 with NXmx's underload_value:
    DIALS and we trust the same negative counts and find the same spots."""
    sim = shared_data / "sim" / "lyso-nanobragg" / "images"
    paths = [smv_copy(unpacked(sim / f"lyso_{i:03d}.img.bz2"), tmp_path / f"lyso_{i:03d}.img", ADSC, 8.0)
             for i in range(1, 4)]
    source = ImageSeriesSource(paths, encoding="bslz4")
    assert source.info.dtype == "<i4"
    # dxtbx's NeXus reader needs a sensor, which an SMV header does not give (it moves no pixel position)
    info = dataclasses.replace(source.info, sensor_material="Silicon", sensor_thickness_mm=0.45)
    master = record_frames(tmp_path / "ccd_master.h5", info, source.frames())
    assert_same_spots_as_dials(master, tmp_path, at_least=1000)


@needs_dials()
def test_per_image_figures_are_dials_per_image_analysis_of_each_frame(tmp_path):
    """per_image.csv counts each frame's own 2-D spots: on a rotation sweep it equals DIALS's
    per-image analysis of spots found frame by frame (`spotfinder.force_2d=True`, then
    `dials.spot_counts_per_image`), figure for figure; DIALS's default 3-D spots give far fewer
    per frame (a reflection on five frames is one spot), as our spots.csv does."""
    import csv
    import json

    master = tmp_path / "sweep.h5"
    assert simulate.main(["--preset", "lysozyme", "--detector", "eiger2_1m", "--images", "6", "--seed", "3",
                          "--ice", "5", "--out", str(master)]) == 0
    assert findspots.main([str(master), "--out", str(tmp_path / "spots.csv")]) == 0
    ours = list(csv.DictReader((tmp_path / "per_image.csv").open()))
    run(["dials.import", str(master), "output.experiments=imported.expt"], tmp_path)
    # DIALS 3.12 joins the frames' spots in 3-D all the same when it keeps their shoeboxes
    run(["dials.find_spots", "imported.expt", "output.reflections=strong.refl", "nproc=1",
         "spotfinder.force_2d=True", "output.shoeboxes=False"], tmp_path)
    run(["dials.spot_counts_per_image", "imported.expt", "strong.refl", "json=pia.json"], tmp_path)
    dials = json.loads((tmp_path / "pia.json").read_text())
    print(f"\nn_spots per frame: ours {[int(r['n_spots']) for r in ours]}, DIALS 2-D {dials['n_spots_total']}")
    assert len(ours) == len(dials["n_spots_total"]) == 6
    assert min(dials["n_spots_total"]) > 100 and min(dials["n_spots_total"]) > min(dials["n_spots_no_ice"])
    for name, theirs in (("n_spots", "n_spots_total"), ("n_spots_no_ice", "n_spots_no_ice"),
                         ("n_spots_4A", "n_spots_4A")):
        assert [int(r[name]) for r in ours] == dials[theirs], name
    np.testing.assert_allclose([float(r["total_intensity"]) for r in ours], dials["total_intensity"], rtol=1e-9)
    np.testing.assert_allclose([float(r["estimated_d_min"]) for r in ours], dials["estimated_d_min"], rtol=1e-5)
    per_frame_3d = np.bincount(read_spots_csv(tmp_path / "spots.csv")["image"].astype(int), minlength=6)
    assert np.all(per_frame_3d < np.array(dials["n_spots_total"]))
