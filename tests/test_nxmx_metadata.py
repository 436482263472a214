"""NeXus metadata read as dxtbx reads it: the trusted minimum (underload_value), the scan
axis of a multi-axis goniometer, and the NXmx groups found by class, on files we record and then
rewrite as other writers lay them out."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import h5py
import hdf5plugin
import numpy as np
import pytest
from conftest import needs_dials

from streamer.masks import trusted_range
from streamer.recorder import record_frames
from streamer.series import EncodedFrame, SeriesInfo
from streamer.sources.eiger_h5 import EigerH5Source


@pytest.mark.parametrize(("dtype", "underload", "instrument", "expected"), [
    ("<i4", None, None, -0x7FFFFFFF),  # a signed image's negative counts count (dxtbx, without a value)
    ("<f4", None, None, -0x7FFFFFFF),
    ("<u4", None, None, None),  # nothing below 0: the usual bound
    ("<i4", 0, None, 0),  # NXmx's lowest valid value
    ("<i4", -50, None, -50),
    ("<i4", None, "DIAMOND BEAMLINE I03", None),  # dxtbx's FormatNXmxDLS: 0
])
def test_the_nxmx_underload_value_is_read_as_dxtbx_reads_it(tmp_path, dtype, underload, instrument, expected):
    info = SeriesInfo("u", "simulator", (16, 24), dtype, n_images=2, pixel_size_mm=(0.075, 0.075),
                      beam_centre_px=(12.0, 8.0), distance_mm=100.0, saturation_value=60000)
    frames = [EncodedFrame("u", i, (16, 24), dtype, "raw", np.full((16, 24), i + 3, dtype=dtype).tobytes())
              for i in range(2)]
    master = record_frames(tmp_path / "u_master.h5", info, frames)
    with h5py.File(master, "a") as f:
        detector = f["entry/instrument/detector"]
        # the recorder states the usual bound of a signed or float series, which dxtbx would not assume
        assert detector.get("underload_value") is None if dtype == "<u4" else detector["underload_value"][()] == 0
        if "underload_value" in detector:
            del detector["underload_value"]
        if underload is not None:
            detector["underload_value"] = np.int32(underload)
        if instrument is not None:
            f["entry/instrument/name"] = instrument
    with EigerH5Source(master) as source:
        assert source.info.underload_value == expected
        assert trusted_range(source.info)[0] == (-1.0 if expected is None else float(expected) - 1.0)
    master = record_frames(tmp_path / "v_master.h5", dataclasses.replace(info, underload_value=-7), frames)
    with EigerH5Source(master) as source:
        assert source.info.underload_value == -7


@pytest.mark.parametrize(("chi", "omega", "expected"), [
    (90.0, 0.0, (0.0, -1.0, 0.0)),
    (30.0, 20.0, (0.8660254037844387, -0.46984631039295416, -0.17101007166283433)),
])
def test_a_phi_scan_turns_about_the_axis_its_chi_and_omega_set(tmp_path, chi, omega, expected):
    """A phi scan on a multi-axis goniometer (NXmx chain phi -> chi -> omega, chi about the beam,
    omega as the recorder writes it): the scan axis is phi's vector turned by chi and omega at
    their values, as dxtbx 3.12 gives it (the expected axes are its get_rotation_axis() of these
    files). We took phi's vector as it stood."""
    shape = (64, 64)
    info = SeriesInfo("c", "simulator", shape, "<u4", n_images=3, pixel_size_mm=(0.075, 0.075),
                      beam_centre_px=(32.0, 32.0), distance_mm=100.0, saturation_value=60000,
                      omega_start_deg=5.0, omega_increment_deg=0.1)
    frames = [EncodedFrame("c", i, shape, "<u4", "raw", np.ones(shape, np.uint32).tobytes()) for i in range(3)]
    master = record_frames(tmp_path / "chi_master.h5", info, frames)
    with h5py.File(master, "a") as f:
        t = f["entry/sample/transformations"]
        vector = t["omega"].attrs["vector"]
        t.move("omega", "phi")
        t["phi"].attrs["depends_on"] = "/entry/sample/transformations/chi"
        for name, value, axis, depends in (("chi", chi, (0.0, 0.0, 1.0), "/entry/sample/transformations/omega"),
                                           ("omega", omega, vector, ".")):
            t[name] = np.array([value])
            t[name].attrs.update(units="deg", transformation_type="rotation", vector=np.asarray(axis),
                                 offset=np.zeros(3), depends_on=depends)
        del f["entry/sample/depends_on"]
        f["entry/sample/depends_on"] = "/entry/sample/transformations/phi"
    with EigerH5Source(master) as source:
        np.testing.assert_allclose(source.info.rotation_axis, expected, atol=1e-12)
        assert source.info.omega_start_deg == 5.0 and source.info.omega_increment_deg == pytest.approx(0.1)


def _renamed_nexus(tmp_path, beam_in: str = "sample"):
    """A file we record, then rewritten as other NeXus writers lay it out: the detector group
    named after the detector (/entry/instrument/eiger, found by NX_class) and the beam group
    named otherwise, in the instrument or in the sample group (NXmx before 2020), its
    wavelength in nm."""
    shape = (64, 80)
    info = SeriesInfo("n", "simulator", shape, "<u4", n_images=2, pixel_size_mm=(0.075, 0.075),
                      beam_centre_px=(41.5, 30.25), distance_mm=123.0, wavelength_A=0.9763, saturation_value=60000,
                      sensor_material="Si", sensor_thickness_mm=0.45, omega_start_deg=3.0, omega_increment_deg=0.2)
    frames = [EncodedFrame("n", i, shape, "<u4", "raw", np.ones(shape, np.uint32).tobytes()) for i in range(2)]
    master = record_frames(tmp_path / "renamed_master.h5", info, frames)
    with h5py.File(master, "a") as f:
        instrument = f["entry/instrument"]
        instrument.move("detector", "eiger")
        names: list[str] = []
        instrument["eiger"].visit(names.append)
        for name in names:  # the chain's absolute paths follow the group
            obj = instrument["eiger"][name]
            if "depends_on" in obj.attrs:
                obj.attrs["depends_on"] = str(obj.attrs["depends_on"]).replace("/detector/", "/eiger/")
            if name.endswith("depends_on") and isinstance(obj, h5py.Dataset):
                text = obj.asstr()[()]
                del instrument["eiger"][name]
                instrument["eiger"][name] = text.replace("/detector/", "/eiger/")
        del instrument["beam"]
        beam = f["entry/sample" if beam_in == "sample" else "entry/instrument"].create_group("incident_beam")
        beam.attrs["NX_class"] = "NXbeam"
        beam["incident_wavelength"] = 0.09763
        beam["incident_wavelength"].attrs["units"] = "nm"
    return info, master


@pytest.mark.parametrize("beam_in", ["sample", "instrument"])
def test_nxmx_groups_are_found_by_class_and_the_wavelength_by_its_units(tmp_path, beam_in):
    info, master = _renamed_nexus(tmp_path, beam_in)
    with EigerH5Source(master) as source:
        got = source.info
    assert got.wavelength_A == pytest.approx(0.9763)  # was the 1.0 default, with a warning
    assert got.beam_centre_px == pytest.approx(info.beam_centre_px) and got.distance_mm == pytest.approx(123.0)
    assert got.saturation_value == 60000 and got.sensor_material == "Si"


@needs_dials()
@pytest.mark.dials
def test_dxtbx_reads_the_renamed_file_as_we_do(tmp_path):
    info, master = _renamed_nexus(tmp_path, "instrument")  # dxtbx 3.12 reads a beam only there
    script = ("import sys, json; from dxtbx.model.experiment_list import ExperimentListFactory; "
              "e = ExperimentListFactory.from_filenames([sys.argv[1]])[0]; p = e.detector[0]; "
              "print(json.dumps([e.beam.get_wavelength(), list(p.get_beam_centre_px(e.beam.get_s0())), "
              "p.get_directed_distance(), list(e.goniometer.get_rotation_axis())]))")
    env = {**os.environ, "HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}
    result = subprocess.run(["/usr/bin/python3", "-c", script, str(master)], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    wavelength, centre, distance, axis = json.loads(result.stdout.strip().splitlines()[-1])
    with EigerH5Source(master) as source:
        got = source.info
    assert got.wavelength_A == pytest.approx(wavelength) and got.distance_mm == pytest.approx(distance)
    assert got.beam_centre_px == pytest.approx(tuple(centre)) and got.rotation_axis == pytest.approx(tuple(axis))
