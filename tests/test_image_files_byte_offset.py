"""CBF pixels through `kernels.byte_offset` (not fabio): real PILATUS files, fabio-written CBFs,
damaged copies (each a BadFrame with its reason), and the fabio fallback for other element types."""

from __future__ import annotations

from pathlib import Path

import fabio
import fabio.cbfimage
import numpy as np
import pytest

from streamer.errors import BadFrame
from streamer.sources.image_files import ImageSeriesSource, cbf_binary_section

THAUMATIN = "real-images/thaumatin_grid"
PILATUS_HEADER = "\n".join([
    "# Detector: PILATUS3 6M, S/N 60-0119",
    "# Pixel_size 172e-6 m x 172e-6 m",
    "# Silicon sensor, thickness 0.000450 m",
    "# Count_cutoff 115897 counts",
    "# Wavelength 0.96859 A",
    "# Detector_distance 0.35100 m",
    "# Beam_xy (20.5, 15.25) pixels",
    "# Start_angle 10.0000 deg.",
    "# Angle_increment 0.1000 deg.",
])


def write_cbf(path: Path, data: np.ndarray) -> Path:
    """A miniCBF as fabio writes it (byte_offset, its own MIME header and padding)."""
    fabio.cbfimage.CbfImage(data=data, header={"_array_data.header_contents": PILATUS_HEADER}).write(str(path))
    return path


def no_fabio(*args, **kwargs):
    raise AssertionError("fabio read the pixels of a byte_offset CBF")


@pytest.fixture(scope="module")
def real_cbfs(shared_data, unpacked) -> list[Path]:
    return [unpacked(p) for p in sorted((shared_data / THAUMATIN).glob("thau_3_2_*.cbf.bz2"))[:3]]


def test_real_cbfs_decode_into_a_reused_buffer_without_fabio(real_cbfs, monkeypatch):
    truths = [fabio.open(str(p)).data for p in real_cbfs]
    source = ImageSeriesSource(real_cbfs)
    monkeypatch.setattr("streamer.sources.image_files._read", no_fabio)
    out = np.empty(source.info.image_shape, dtype="<u4")
    for index, truth in enumerate(truths):
        assert source.pixels(index, out=out) is out
        np.testing.assert_array_equal(out.view(np.int32), truth)
        fresh = source.pixels(index)
        assert fresh is not out and fresh.dtype == np.dtype("<u4")
        np.testing.assert_array_equal(fresh, out)
    with pytest.raises(ValueError, match="does not fit"):
        source.pixels(0, out=np.empty((5, 5), dtype="<u4"))
    with pytest.raises(ValueError, match="does not fit"):
        source.pixels(0, out=np.empty(source.info.image_shape, dtype="<i4"))


def test_binary_section_of_a_real_cbf(real_cbfs):
    raw = real_cbfs[0].read_bytes()
    section = cbf_binary_section(raw)
    assert section.byte_offset_32bit and section.element_type == "signed 32-bit integer"
    assert section.shape == (2527, 2463) and section.n_elements == 2527 * 2463
    assert raw[section.data_start - 4:section.data_start] == b"\x0c\x1a\x04\xd5"
    assert raw[section.data_start + section.data_size:].lstrip(b"\x00").startswith(b"\r\n--CIF-BINARY-FORMAT-SECTION----")


def test_fabio_written_cbfs_of_odd_shapes(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    data = rng.poisson(3, (37, 53)).astype(np.int32)
    data[:, 20:23] = -1
    data[5, 7] = -2
    data[9, 9] = 115897
    data[10, 10] = 2**31 - 1  # an 8-byte difference next to a gap
    data[10, 11] = -(2**31)
    paths = [write_cbf(tmp_path / "a_0001.cbf", data), write_cbf(tmp_path / "a_0002.cbf", data[::-1].copy())]
    source = ImageSeriesSource(paths)
    assert source.info.image_shape == (37, 53) and source.info.beam_centre_px == (20.5, 15.25)
    monkeypatch.setattr("streamer.sources.image_files._read", no_fabio)
    np.testing.assert_array_equal(source.pixels(0).view(np.int32), data)
    np.testing.assert_array_equal(source.pixels(1).view(np.int32), data[::-1])


def test_other_element_types_fall_back_to_fabio(tmp_path):
    data = (np.arange(20 * 30, dtype=np.int16).reshape(20, 30) * 37 - 5000).astype(np.int16)
    path = write_cbf(tmp_path / "short_0001.cbf", data)
    section = cbf_binary_section(path.read_bytes())
    assert section.element_type == "signed 16-bit integer" and not section.byte_offset_32bit
    source = ImageSeriesSource([path])
    out = np.zeros((20, 30), dtype="<u4")
    assert source.pixels(0, out=out) is out
    np.testing.assert_array_equal(out.view(np.int32), data.astype(np.int32))


def _edit(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert raw.count(old) == 1
    return raw.replace(old, new)


def damaged_copies(raw: bytes) -> dict[str, tuple[bytes, str, str]]:
    """name -> (file bytes, BadFrame reason, words in the message)."""
    section = cbf_binary_section(raw)
    start, size = section.data_start, section.data_size
    size_field = b"X-Binary-Size: %d" % size
    return {
        "cut in the data": (raw[:start + size // 2], "corrupt_compression", "ends after"),
        "cut before the data": (raw[:start - 10], "corrupt_compression", "no CBF binary section"),
        "cut at the data": (raw[:start], "corrupt_compression", "ends after 0"),
        "cut in the last bytes": (raw[:start + size - 1], "corrupt_compression", "ends after"),
        "declared size too small": (_edit(raw, size_field, b"X-Binary-Size: %d" % (size - 1)), "corrupt_compression",
                                    "ends after"),
        "declared size too large": (_edit(raw, size_field, b"X-Binary-Size: %d" % (size + 9)), "corrupt_compression",
                                    "header declares"),
        "an escape byte inserted": (raw[:start + 1000] + b"\x80" + raw[start + 1000:], "corrupt_compression", ""),
        "other dimensions": (_edit(raw, b"X-Binary-Size-Fastest-Dimension: 2463", b"X-Binary-Size-Fastest-Dimension: 2462"),
                             "wrong_shape", "of shape (2527, 2462)"),
        "other element count": (_edit(raw, b"X-Binary-Number-of-Elements: 6224001", b"X-Binary-Number-of-Elements: 6224000"),
                                "wrong_shape", "holds 6224000 pixels"),
        "no size": (_edit(raw, size_field, b"X-Binary-Sise: %d" % size), "bad_frame", "lacks X-Binary-Size"),
    }


def test_damaged_cbfs_raise_bad_frame_with_a_reason(real_cbfs, tmp_path):
    raw = real_cbfs[0].read_bytes()
    for name, (damaged, reason, words) in damaged_copies(raw).items():
        path = tmp_path / "damaged_0002.cbf"
        path.write_bytes(damaged)
        source = ImageSeriesSource([real_cbfs[0], path])
        with pytest.raises(BadFrame) as err:
            source.pixels(1)
        assert err.value.reason == reason, name
        assert words in str(err.value) and str(path) in str(err.value), name
        np.testing.assert_array_equal(source.pixels(0).view(np.int32), fabio.open(str(real_cbfs[0])).data)


def test_missing_file_is_bad_input_not_a_crash(real_cbfs, tmp_path):
    path = tmp_path / "gone_0002.cbf"
    path.write_bytes(real_cbfs[0].read_bytes())
    source = ImageSeriesSource([real_cbfs[0], path])
    path.unlink()
    with pytest.raises(Exception) as err:
        source.pixels(1)
    assert err.type.__name__ == "BadInput" and err.value.reason == "bad_image_file"
