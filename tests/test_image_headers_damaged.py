"""SMV, miniCBF and NeXus headers with a damaged field (text for a number, NaN, infinity, 1e300,
a number past 64 bits, an empty or misshapen array, the field missing): `process` says what is
wrong (BadInput naming the field or file) or reads a series that every later stage can use;
never another exception (a traceback)."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from streamer import codecs
from streamer.config import Config
from streamer.errors import BadInput
from streamer.header_corrections import entering
from streamer.perimage import ImageAnalyser
from streamer.recorder import record_frames
from streamer.series import EncodedFrame, SeriesInfo
from streamer.sources import open_source
from streamer.sources.image_headers import cbf_series_info

DAMAGED = ["nan", "inf", "-inf", "0", "-1", "-0.5", "1e300", "99999999999999999999999", "abc", "", "1,2", "0x10"]
SMV_HEADER = {"HEADER_BYTES": "512", "DIM": "2", "BYTE_ORDER": "little_endian", "TYPE": "unsigned_short",
              "SIZE1": "64", "SIZE2": "48", "PIXEL_SIZE": "0.1", "DISTANCE": "100", "WAVELENGTH": "1",
              "BEAM_CENTER_X": "3.2", "BEAM_CENTER_Y": "3.2", "OSC_START": "0", "OSC_RANGE": "0.1", "GAIN": "2.0",
              "IMAGE_PEDESTAL": "40", "DETECTOR_SN": "457", "TIME": "1.0", "PHI": "0", "TWOTHETA": "0",
              "SATURATED_VALUE": "65535"}


def _smv(path, header: dict[str, str], pixels: np.ndarray) -> None:
    text = "{\n" + "".join(f"{k}={v};\n" for k, v in header.items()) + "}"
    path.write_bytes(text.encode().ljust(512, b" ") + pixels.astype("<u2").tobytes())


def _read_everything(paths) -> None:
    """Open, then decode and analyse every frame, as `process` would (BadInput: a message)."""
    try:
        info, frames = open_source(paths)
        info = entering(info, Config().geometry)
        analyser = ImageAnalyser(info, Config(), warm_up=False)
        for frame in frames:
            analyser.analyse(codecs.decode(frame), frame.image_number)
    except BadInput:
        pass


@pytest.mark.parametrize("key", sorted(SMV_HEADER))
def test_a_damaged_smv_header_field_is_a_message_or_usable(tmp_path, key):
    pixels = np.clip(np.round(np.random.default_rng(1).normal(44.0, 8.0, (48, 64))), 0, 65535)
    for n, value in enumerate(DAMAGED + [None]):
        header = {k: v for k, v in SMV_HEADER.items() if not (k == key and value is None)}
        if value is not None:
            header[key] = value
        paths = [tmp_path / f"s{n}_{i + 1:04d}.img" for i in range(2)]
        for path in paths:
            _smv(path, header, pixels)
        _read_everything(paths)


def test_a_damaged_smv_number_is_named(tmp_path):
    pixels = np.zeros((48, 64))
    for key, value in (("OSC_RANGE", "abc"), ("SATURATED_VALUE", "inf"), ("IMAGE_PEDESTAL", "1e300"),
                       ("PIXEL_SIZE", "0")):
        path = tmp_path / f"{key}_0001.img"
        _smv(path, {**SMV_HEADER, key: value}, pixels)
        with pytest.raises(BadInput, match=key):
            open_source([path])
    path = tmp_path / "dim0_0001.img"
    _smv(path, {**SMV_HEADER, "DIM": "0"}, pixels)  # fabio reads no image (None)
    with pytest.raises(BadInput, match="no 2D image"):
        open_source([path])


MINICBF = """# Detector: PILATUS 6M, S/N 60-0119
# Pixel_size 172e-6 m x 172e-6 m
# Silicon sensor, thickness 0.000450 m
# Exposure_time 0.0100000 s
# Exposure_period 0.0100000 s
# Count_cutoff 1048576 counts
# Wavelength 0.97950 A
# Detector_distance 0.30000 m
# Beam_xy (1231.00, 1263.00) pixels
# Start_angle 0.0000 deg.
# Angle_increment 0.1000 deg.
"""


@pytest.mark.parametrize("line", MINICBF.splitlines())
def test_a_damaged_minicbf_number_is_a_message_or_usable(line):
    for value in ("1e999", "-1e999", "0", "-1", "1e30", "99999999999999999999999"):
        damaged = re.sub(r"\d*\.?\d+(?:[eE][-+]?\d+)?", value, line)
        try:
            cbf_series_info(MINICBF.replace(line, damaged), (100, 100), 2, "x", None)
        except BadInput:
            pass


def _recorded_master(folder):
    info = SeriesInfo("d", "simulator", (16, 24), "<u2", n_images=2, pixel_size_mm=(0.075, 0.075),
                      beam_centre_px=(12.0, 8.0), distance_mm=100.0, wavelength_A=1.0, saturation_value=60000,
                      omega_increment_deg=0.5, sensor_material="Si", sensor_thickness_mm=0.45)
    pixels = np.random.default_rng(2).poisson(3, (16, 24)).astype("<u2")
    frames = [EncodedFrame("d", i, (16, 24), "<u2", "raw", pixels.tobytes()) for i in range(2)]
    return record_frames(folder / "d_master.h5", info, frames)


def test_a_damaged_nexus_field_is_a_message_or_usable(tmp_path):
    master = _recorded_master(tmp_path)
    original = master.read_bytes()
    names = []
    with h5py.File(master, "r") as f:
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset)
                     and not name.startswith("entry/data") else None)
    assert len(names) > 20
    for name in names:
        for value in (np.nan, np.inf, -1.0, 0.0, 1e300, "abc", b"", np.zeros(0), np.zeros((3, 3)), None):
            master.write_bytes(original)
            with h5py.File(master, "r+") as f:
                attrs = dict(f[name].attrs)
                del f[name]
                if value is not None:
                    f.create_dataset(name, data=value).attrs.update(attrs)
            _read_everything([master])


def test_nexus_metadata_that_cannot_be_read_names_the_file_and_the_error(tmp_path):
    master = _recorded_master(tmp_path)
    with h5py.File(master, "r+") as f:
        del f["entry/instrument/detector/module/fast_pixel_direction"]
        f["entry/instrument/detector/module/fast_pixel_direction"] = "abc"
    with pytest.raises(BadInput, match="d_master.h5: its metadata could not be read"):
        open_source([master])
