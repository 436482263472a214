"""Non-default spot-finding parameters give DIALS 3.12's spots, each parameter read as DIALS
reads it: `dials.find_spots` with asymmetric kernel_size, gain, min_local, sigma_strong,
global_threshold, untrusted circle and rectangle, border, resolution limits and spot filters, against
the analyser with the same values, on one real PILATUS 6M image (thaumatin, a still).

Both resolution masks include the sensor's parallax (the depth at which X-rays are absorbed in
the sensor; it moves the d_min = 3 A boundary by ~0.03 %, about a thousand pixels)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import needs_dials

from streamer.config import Config
from streamer.perimage import ImageAnalyser
from streamer.sources.image_files import ImageSeriesSource

pytestmark = [pytest.mark.slow, pytest.mark.dials]
DIALS_PYTHON = "/usr/bin/python3"  # Debian's DIALS runs on the system interpreter

DIALS_PHIL = [
    "spotfinder.threshold.dispersion.kernel_size=1,3", "spotfinder.threshold.dispersion.gain=1.5",
    "spotfinder.threshold.dispersion.min_local=15", "spotfinder.threshold.dispersion.sigma_strong=3.5",
    "spotfinder.threshold.dispersion.global_threshold=5", "spotfinder.filter.untrusted.circle=1261,1307,300",
    "spotfinder.filter.untrusted.rectangle=0,600,0,800", "spotfinder.filter.d_min=3", "spotfinder.filter.d_max=30",
    "spotfinder.filter.min_spot_size=4",
    "spotfinder.filter.max_separation=1.5", "spotfinder.filter.border=700", "spotfinder.mp.nproc=1",
]
OURS = {
    "spotfinding": {"kernel_size": [1, 3], "gain": 1.5, "min_local": 15, "sigma_strong": 3.5, "global_threshold": 5,
                    "d_min": 3.0, "d_max": 30.0, "min_spot_size": 4, "max_separation": 1.5},
    "mask": {"untrusted_circles": [[1261, 1307, 300]], "untrusted_rectangles": [[0, 600, 0, 800]],
             "border": 700},  # reaches into the d_min disk: 699 and 701 give other spots
}


@needs_dials()
def test_non_default_parameters_give_dials_spots(shared_data, unpacked, tmp_path):
    if shutil.which("dials.import") is None or not Path(DIALS_PYTHON).exists():
        pytest.skip("dials.import is not installed")
    path = unpacked(shared_data / "real-images" / "thaumatin_grid" / "thau_3_2_0003.cbf.bz2")
    for command in (["dials.import", str(path), "output.experiments=imported.expt"],
                    ["dials.find_spots", "imported.expt", "output.reflections=strong.refl", *DIALS_PHIL]):
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    script = ("import numpy; from dials.array_family import flex; t = flex.reflection_table.from_file('strong.refl'); "
              "numpy.save('dials.npy', numpy.column_stack([t['xyzobs.px.value'].as_numpy_array()[:, :2], "
              "t['intensity.sum.value'].as_numpy_array()]))")
    run = subprocess.run([DIALS_PYTHON, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dials = np.load(tmp_path / "dials.npy")

    source = ImageSeriesSource([path])
    spots = ImageAnalyser(source.info, Config.model_validate(OURS)).analyse(source.pixels(0), 0).spots
    ours = np.column_stack([spots.x_px, spots.y_px, spots.intensity])
    assert 200 < len(dials) == len(ours)
    order = lambda a: a[np.lexsort((a[:, 0], a[:, 1]))]  # noqa: E731
    np.testing.assert_allclose(order(ours), order(dials), atol=1e-3, rtol=1e-6)
