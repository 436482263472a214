"""Beamline rotation axes that image headers do not state (config/rotation_axes.yaml), against dxtbx."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from conftest import needs_dials

from streamer.errors import BadConfig
from streamer.sources.image_files import ImageSeriesSource
from streamer.sources.image_headers import cbf_series_info, smv_series_info
from streamer.sources.rotation_axes import load_rules

THAUMATIN = "real-images/thaumatin_grid/thau_3_2_0001.cbf.bz2"  # DLS I04, PILATUS3 6M S/N 60-0119, 2019

# (detector record, date record, Oscillation_axis record) changed in the real header -> DIALS's axis
CBF_VARIANTS = {
    "as written (I04, X.CW +SLOW)": ({}, (0.0, 1.0, 0.0)),
    "I04 plate mode": ({"# Oscillation_axis X.CW +SLOW": "# Oscillation_axis X.CW -FAST"}, (-1.0, 0.0, 0.0)),
    "I04 before 2015": ({"# 2019-09-11": "# 2014-09-11"}, (1.0, 0.0, 0.0)),
    "I24 (60-0114)": ({"S/N 60-0119": "S/N 60-0114"}, (0.0, 1.0, 0.0)),
    "SPring-8 (60-0125)": ({"S/N 60-0119": "S/N 60-0125"}, (-1.0, 0.0, 0.0)),
    "APS 19-ID (PILATUS3 60-0132)": ({"S/N 60-0119": "S/N 60-0132"}, (-1.0, 0.0, 0.0)),
    "another PILATUS": ({"S/N 60-0119": "S/N 60-0200"}, (1.0, 0.0, 0.0)),
    "another PILATUS, X.CCW": ({"S/N 60-0119": "S/N 60-0200",
                                "# Oscillation_axis X.CW +SLOW": "# Oscillation_axis X.CCW"}, (1.0, 0.0, 0.0)),
}


def _with_records(data: bytes, changes: dict[str, str]) -> bytes:
    """A miniCBF with header records replaced (the binary section follows the header: its
    position may move) and a rotation of 0.1 deg per image (dxtbx makes a still of 0)."""
    head, sep, rest = data.partition(b"--CIF-BINARY-FORMAT-SECTION--")
    text = head.decode("ascii")
    for old, new in {**changes, "# Angle_increment 0.0000 deg.": "# Angle_increment 0.1000 deg."}.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text.encode("ascii") + sep + rest


def _minimal_cbf_text(detector: str, date: str, oscillation: str) -> str:
    return (f"# Detector: {detector}\n# {date}T10:00:00.000\n# Pixel_size 172e-6 m x 172e-6 m\n"
            f"# Wavelength 0.97 A\n# Detector_distance 0.300 m\n# Beam_xy (1231.0, 1263.0) pixels\n"
            f"# Start_angle 0.0 deg.\n# Angle_increment 0.1 deg.\n# Oscillation_axis {oscillation}\n")


def _axis_of_cbf(detector: str, date: str = "2019-01-01", oscillation: str = "X.CW") -> tuple[float, ...]:
    return cbf_series_info(_minimal_cbf_text(detector, date, oscillation), (2527, 2463), 1, "x", None).rotation_axis


def test_the_rules_load_and_each_names_its_dxtbx_class():
    rules = load_rules()
    assert len(rules) >= 14 and all(rule.dxtbx.startswith("Format") for rule in rules)
    assert all(np.isclose(np.linalg.norm(rule.axis), 1.0) for rule in rules)


def test_cbf_headers_get_their_beamlines_axis():
    assert _axis_of_cbf("PILATUS3 6M, S/N 60-0119") == (0.0, 1.0, 0.0)
    assert _axis_of_cbf("PILATUS3 6M, S/N 60-0119", oscillation="X.CW -FAST") == (-1.0, 0.0, 0.0)
    assert _axis_of_cbf("PILATUS3 6M, S/N 60-0119", date="2014-05-01") == (1.0, 0.0, 0.0)
    assert _axis_of_cbf("PILATUS 6M, S/N 60-0114", date="2016-12-31") == (1.0, 0.0, 0.0)
    assert _axis_of_cbf("PILATUS 6M, S/N 60-0114", date="2017-01-01") == (0.0, 1.0, 0.0)
    assert _axis_of_cbf("PILATUS 6M, S/N 60-0132") == (1.0, 0.0, 0.0)  # that rule is a PILATUS3's
    assert _axis_of_cbf("PILATUS3 6M, S/N 60-0132") == (-1.0, 0.0, 0.0)
    assert _axis_of_cbf("PILATUS 6M-F, S/N 60-0115-F") == (0.0, 1.0, 0.0)
    assert _axis_of_cbf("Dectris EIGER 16M, S/N E-32-0107") == (0.0, 1.0, 0.0)
    assert _axis_of_cbf("Dectris Eiger 16M, S/N E-32-0105") == (0.0, 1.0, 0.0)
    assert _axis_of_cbf("PILATUS 2M, S/N 24-0100") == (1.0, 0.0, 0.0)
    # dxtbx reads no direction from the Oscillation_axis record (we reversed the axis for X.CCW)
    assert _axis_of_cbf("PILATUS 2M, S/N 24-0100", oscillation="X.CCW") == (1.0, 0.0, 0.0)


def test_adsc_serial_numbers_reverse_the_axis_as_dxtbx_does():
    header = {"PIXEL_SIZE": "0.1024", "DISTANCE": "200", "WAVELENGTH": "1.0", "SIZE1": "3072", "SIZE2": "3072",
              "BEAM_CENTER_X": "157", "BEAM_CENTER_Y": "157", "OSC_START": "0", "OSC_RANGE": "1"}

    def axis(**records):
        return smv_series_info({**header, **records}, (3072, 3072), "<u2", 1, "x", 0).rotation_axis

    assert axis(DETECTOR_SN="457", DATE="Tue Sep 10 10:25:57 2013") == (-1.0, 0.0, 0.0)
    assert axis(DETECTOR_SN="914", DATE="Tue Sep 10 10:25:57 2013") == (-1.0, 0.0, 0.0)
    assert axis(DETECTOR_SN="457") == (1.0, 0.0, 0.0)  # dxtbx's serial classes need a DATE
    assert axis(DETECTOR_SN="999", DATE="Tue Sep 10 10:25:57 2013") == (1.0, 0.0, 0.0)
    assert axis(DETECTOR_SN="unknown", DATE="Tue Sep 10 10:25:57 2013") == (1.0, 0.0, 0.0)
    assert axis(DETECTOR_SN="457", DATE="Tue Sep 10 10:25:57 2013", BEAMLINE="fake") == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("text", [
    "- {beamline: x, format: cbf, axis: [1, 1, 0]}\n",  # not a unit vector
    "- {beamline: x, format: cbf, axis: [1, 0, 0], serial: 5}\n",  # unknown key
    "- {beamline: x, format: tif, axis: [1, 0, 0]}\n",
    "beamline: x\n",  # not a list
])
def test_a_bad_rule_file_is_a_clear_error(tmp_path, text):
    path = tmp_path / "axes.yaml"
    path.write_text(text)
    with pytest.raises(BadConfig, match="rotation axis rules"):
        load_rules(path)


def test_the_real_i04_images_rotate_about_the_vertical_axis(shared_data, unpacked):
    """The shared thaumatin images come from Diamond I04 (PILATUS3 6M S/N 60-0119, 2019), whose
    axis DIALS takes as vertical."""
    source = ImageSeriesSource([unpacked(shared_data / THAUMATIN)])
    assert source.info.rotation_axis == (0.0, 1.0, 0.0)


@needs_dials()
@pytest.mark.dials
def test_dxtbx_gives_the_same_axes(shared_data, unpacked, tmp_path):
    data = unpacked(shared_data / THAUMATIN).read_bytes()
    paths = []
    for k, (changes, _) in enumerate(CBF_VARIANTS.values()):
        paths.append(tmp_path / f"variant_{k:04d}.cbf")
        paths[-1].write_bytes(_with_records(data, changes))
    script = ("import json, sys; from dxtbx.model.experiment_list import ExperimentListFactory; "
              "print(json.dumps([list(ExperimentListFactory.from_filenames([p])[0].goniometer.get_rotation_axis()) "
              "for p in sys.argv[1:]]))")
    result = subprocess.run(["/usr/bin/python3", "-c", script, *map(str, paths)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    dials = json.loads(result.stdout.strip().splitlines()[-1])
    for (name, (_, expected)), path, theirs in zip(CBF_VARIANTS.items(), paths, dials):
        ours = ImageSeriesSource([path]).info.rotation_axis
        assert ours == expected and np.allclose(theirs, expected), (name, ours, theirs)
