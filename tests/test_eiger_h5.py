"""EIGER HDF5 reader: every real DECTRIS data file, masters built with external links and with a
virtual dataset, and the real EIGER 9M master; pixels compared bit-exact with h5py's own read."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (h5py's own decoded reads)
import numpy as np
import pytest

from streamer import codecs
from streamer.errors import BadInput
from streamer.sources.eiger_h5 import FILTER_BSLZ4, FILTER_LZ4, EigerH5Source, open_eiger

EIGER_DIR = "eiger-h5"

# geometry written into the test masters (DECTRIS legacy fields), checked after reading
TEST_GEOMETRY = {"beam_centre_px": (512.25, 255.75), "distance_mm": 120.5, "wavelength_A": 0.97625,
                 "omega_start_deg": 10.0, "omega_increment_deg": 0.1, "frame_time_s": 0.01}


def data_files(shared: Path) -> list[Path]:
    return sorted((shared / EIGER_DIR).glob("datasets_*_data_*.h5"))


def dataset_pairs(shared: Path) -> dict[str, list[Path]]:
    """The 4-image datasets: name -> its two data files."""
    pairs: dict[str, list[Path]] = {}
    for path in data_files(shared):
        pairs.setdefault(re.sub(r"_data_\d+\.h5$", "", path.name), []).append(path)
    return pairs


def _link_data(tmp: Path, files: list[Path]) -> list[Path]:
    """Symbolic links (same names) to the shared data files, so no data is copied."""
    out = []
    for path in files:
        link = tmp / path.name
        if not link.exists():
            os.symlink(path, link)
        out.append(link)
    return out


def make_master(tmp: Path, files: list[Path], layout: str = "external", name: str = "series_master.h5") -> Path:
    """A DECTRIS-style master for `files` with external links or a virtual dataset, and test geometry."""
    files = _link_data(tmp, files)
    master = tmp / name
    g = TEST_GEOMETRY
    with h5py.File(master, "w") as f:
        data = f.create_group("entry/data")
        if layout == "external":
            for k, path in enumerate(files, start=1):
                data[f"data_{k:06d}"] = h5py.ExternalLink(path.name, "/entry/data/data")
        else:
            shapes = []
            for path in files:
                with h5py.File(path, "r") as d:
                    shapes.append((d["/entry/data/data"].shape, d["/entry/data/data"].dtype))
            n = sum(s[0][0] for s in shapes)
            vlayout = h5py.VirtualLayout(shape=(n, *shapes[0][0][1:]), dtype=shapes[0][1])
            start = 0
            for path, (shape, _) in zip(files, shapes):
                vlayout[start:start + shape[0]] = h5py.VirtualSource(path.name, "/entry/data/data", shape=shape)
                start += shape[0]
            data.create_virtual_dataset("data", vlayout)
        det = f.create_group("entry/instrument/detector")
        for key, value, units in [("beam_center_x", g["beam_centre_px"][0], "pixel"),
                                  ("beam_center_y", g["beam_centre_px"][1], "pixel"),
                                  ("detector_distance", g["distance_mm"] / 1e3, "m"),
                                  ("x_pixel_size", 75e-6, "m"), ("y_pixel_size", 75e-6, "m"),
                                  ("frame_time", g["frame_time_s"], "s"), ("count_time", 0.0099, "s")]:
            det.create_dataset(key, data=value).attrs["units"] = units
        det.create_dataset("description", data=b"Dectris EIGER2 Si 500K")
        f.create_dataset("entry/instrument/beam/incident_wavelength", data=g["wavelength_A"]).attrs["units"] = "angstrom"
        omega = g["omega_start_deg"] + g["omega_increment_deg"] * np.arange(4)
        f.create_dataset("entry/sample/goniometer/omega", data=omega).attrs["units"] = "degree"
        f.create_dataset("entry/sample/goniometer/omega_range_average", data=g["omega_increment_deg"])
        f.create_dataset("entry/instrument/detector/detectorSpecific/saturation_value", data=np.uint32(65534))
    return master


def h5py_images(files: list[Path]) -> np.ndarray:
    """All images of the data files, decoded by h5py + hdf5plugin."""
    stacks = []
    for path in files:
        with h5py.File(path, "r") as f:
            stacks.append(f["/entry/data/data"][()])
    return np.concatenate(stacks)


def test_every_real_data_file_bit_exact(shared_data):
    files = data_files(shared_data)
    assert len(files) == 12
    for path in files:
        with h5py.File(path, "r") as f:
            ds = f["/entry/data/data"]
            expected = ds[()]
            code = ds.id.get_create_plist().get_filter(0)[0]
            low = int(ds.attrs["image_nr_low"])
            raw_chunks = [ds.id.read_direct_chunk((i, 0, 0))[1] for i in range(ds.shape[0])]
        with EigerH5Source(path) as source:
            assert source.info.image_shape == expected.shape[1:]
            assert np.dtype(source.info.dtype) == expected.dtype
            frames = list(source.frames())
        assert [fr.image_number for fr in frames] == [low - 1 + i for i in range(len(expected))]
        assert {fr.encoding for fr in frames} == {{FILTER_BSLZ4: "bslz4", FILTER_LZ4: "lz4-h5"}[code]}
        for fr, pixels, chunk in zip(frames, expected, raw_chunks):
            assert bytes(fr.data) == bytes(chunk)  # the stored chunk, untouched
            np.testing.assert_array_equal(codecs.decode(fr), pixels)


@pytest.mark.parametrize("layout", ["external", "vds"])
def test_master_layouts_give_the_series_in_order(shared_data, tmp_path, layout):
    for k, (name, files) in enumerate(sorted(dataset_pairs(shared_data).items())):
        folder = tmp_path / f"{layout}{k}"
        folder.mkdir()
        master = make_master(folder, files, layout)
        expected = h5py_images(files)
        with h5py.File(master, "r") as f:  # what h5py itself sees through the master
            through_master = (f["/entry/data/data"][()] if layout == "vds"
                              else np.concatenate([f[f"/entry/data/data_{i:06d}"][()] for i in (1, 2)]))
        np.testing.assert_array_equal(through_master, expected)
        info, frames = open_eiger(master)
        frames = list(frames)
        assert info.n_images == 4 and info.source == "hdf5" and info.series_id == "series"
        assert [fr.image_number for fr in frames] == [0, 1, 2, 3], name
        for fr, pixels in zip(frames, expected):
            assert fr.encoding in ("bslz4", "lz4-h5")
            np.testing.assert_array_equal(codecs.decode(fr), pixels)
        assert info.beam_centre_px == TEST_GEOMETRY["beam_centre_px"]
        assert info.distance_mm == pytest.approx(TEST_GEOMETRY["distance_mm"])
        assert info.wavelength_A == pytest.approx(TEST_GEOMETRY["wavelength_A"])
        assert info.pixel_size_mm == pytest.approx((0.075, 0.075))
        assert info.omega_start_deg == 10.0 and info.omega_increment_deg == pytest.approx(0.1)
        assert info.frame_time_s == pytest.approx(0.01) and info.saturation_value == 65534
        assert info.detector_description == "Dectris EIGER2 Si 500K"


def test_artificial_master_with_its_data_file(shared_data, tmp_path):
    src = shared_data / EIGER_DIR
    os.symlink(src / "dataset_artificial_small_001_test_master.h5", tmp_path / "test_master.h5")
    os.symlink(src / "dataset_artificial_small_001_test_data_000001.h5", tmp_path / "test_data_000001.h5")
    with EigerH5Source(tmp_path / "test_master.h5") as source:
        info = source.info
        frames = list(source.frames())
    with h5py.File(src / "dataset_artificial_small_001_test_data_000001.h5", "r") as f:
        expected = f["/entry/data/data"][()]
        with h5py.File(src / "dataset_artificial_small_001_test_master.h5", "r") as m:
            mask = m["/entry/instrument/detector/detectorSpecific/pixel_mask"][()]
    assert info.image_shape == (13, 11) and info.n_images == 5 and len(frames) == 5
    np.testing.assert_array_equal(info.pixel_mask, mask)
    np.testing.assert_array_equal(np.stack([codecs.decode(fr) for fr in frames]), expected)


def test_a_pixel_mask_that_does_not_fit_is_reported(shared_data, tmp_path, caplog):
    """A master whose pixel mask has another shape than the images: not used, and said so (the
    detector's bad pixels then go unmasked)."""
    _, files = sorted(dataset_pairs(shared_data).items())[0]
    master = make_master(tmp_path, files)
    with h5py.File(master, "a") as f:
        f.create_dataset("entry/instrument/detector/detectorSpecific/pixel_mask", data=np.zeros((100, 100), "<u4"))
    with caplog.at_level(logging.WARNING), EigerH5Source(master) as source:
        info = source.info
    assert info.pixel_mask is None
    assert "detectorSpecific/pixel_mask (uint32, shape (100, 100)) does not fit the images" in caplog.text


def test_the_nxmx_saturation_value_is_read(shared_data, tmp_path):
    """NeXus writers other than DECTRIS's give the saturation only in the detector group (NXmx),
    where DIALS reads it too; without it, counts up to the type's maximum were trusted."""
    _, files = sorted(dataset_pairs(shared_data).items())[0]
    master = make_master(tmp_path, files)
    with h5py.File(master, "a") as f:
        del f["entry/instrument/detector/detectorSpecific/saturation_value"]
        f.create_dataset("entry/instrument/detector/saturation_value", data=np.int64(4095))
    with EigerH5Source(master) as source:
        assert source.info.saturation_value == 4095


def test_the_nxmx_pixel_masks_are_read_and_combined(shared_data, tmp_path, caplog):
    """NXmx puts the mask in the detector group (`pixel_mask`, more in `pixel_mask_N`); DIALS
    and other NeXus writers put it there rather than in DECTRIS's detectorSpecific. Every mask
    that fits is used (bitwise OR): a NeXus file whose mask was only in the NXmx place was
    analysed with its bad pixels counted."""
    _, files = sorted(dataset_pairs(shared_data).items())[0]
    master = make_master(tmp_path, files)
    with EigerH5Source(master) as source:
        shape = source.info.image_shape
    nxmx = np.zeros(shape, "<u4")
    nxmx[5, 7] = 1 << 3  # over-responding
    extra = np.zeros((1, *shape), np.uint8)  # one frame's worth, 8 bits: allowed
    extra[0, 9, 2] = 1
    dectris = np.zeros(shape, "<u4")
    dectris[5, 7] = 1 << 4
    dectris[0, 0] = 1
    with h5py.File(master, "a") as f:
        det = f["entry/instrument/detector"]
        det.create_dataset("pixel_mask", data=nxmx)
        det.create_dataset("pixel_mask_2", data=extra)
        det.create_dataset("pixel_mask_10", data=np.zeros((3, 3), np.uint8))  # does not fit: said, left out
    with caplog.at_level(logging.WARNING), EigerH5Source(master) as source:
        only_nxmx = source.info.pixel_mask
    assert {tuple(p) for p in np.argwhere(only_nxmx)} == {(5, 7), (9, 2)} and only_nxmx[5, 7] == 8
    assert "pixel_mask_10 (uint8, shape (3, 3)) does not fit" in caplog.text
    with h5py.File(master, "a") as f:
        f.create_dataset("entry/instrument/detector/detectorSpecific/pixel_mask", data=dectris)
    with EigerH5Source(master) as source:
        both = source.info.pixel_mask
    assert {tuple(p) for p in np.argwhere(both)} == {(5, 7), (9, 2), (0, 0)} and both[5, 7] == (1 << 3) | (1 << 4)
    assert both.dtype == np.uint32 and both.flags.c_contiguous
    with h5py.File(master, "a") as f:  # the mask in a meta file that did not come along (DLS keeps it there)
        f["entry/instrument/detector/pixel_mask_3"] = h5py.ExternalLink("missing_meta.h5", "/mask")
    with caplog.at_level(logging.WARNING), EigerH5Source(master) as source:
        np.testing.assert_array_equal(source.info.pixel_mask, both)
    assert "pixel_mask_3 is <ExternalLink to \"/mask\" in file \"missing_meta.h5\", which cannot be read" in caplog.text


def test_a_master_announcing_more_images_than_its_data_hold_is_reported(shared_data, tmp_path, caplog):
    _, files = sorted(dataset_pairs(shared_data).items())[0]
    master = make_master(tmp_path, files)
    with h5py.File(master, "a") as f:
        spec = f.require_group("entry/instrument/detector/detectorSpecific")
        spec.create_dataset("nimages", data=40)
        spec.create_dataset("ntrigger", data=1)
    with caplog.at_level(logging.WARNING), EigerH5Source(master) as source:
        n_frames = len(list(source.frames()))
    assert f"announces 40 images (nimages x ntrigger), its data hold {n_frames}" in caplog.text


def test_a_truncated_data_file_is_named_in_the_error(shared_data, tmp_path):
    _, files = sorted(dataset_pairs(shared_data).items())[0]
    copies = []
    for path in files:  # real copies: the first one truncated
        copy = tmp_path / "data" / path.name
        copy.parent.mkdir(exist_ok=True)
        copy.write_bytes(path.read_bytes())
        copies.append(copy)
    with open(copies[0], "r+b") as fh:
        fh.truncate(copies[0].stat().st_size * 6 // 10)
    master = make_master(tmp_path, copies)
    with pytest.raises(BadInput, match=f"cannot read data file .*{copies[0].name} of .*{master.name}"):
        EigerH5Source(master)


def test_real_eiger9m_master_geometry_without_its_data(shared_data):
    source = EigerH5Source(shared_data / EIGER_DIR / "dials-data-files_dectris_eiger9m_master.h5")
    info = source.info
    assert info.image_shape == (3269, 3110) and info.dtype == "<u2" and info.bit_depth_image == 16
    assert info.beam_centre_px == pytest.approx((1607.415, 1586.4314))
    assert info.distance_mm == pytest.approx(134.255)
    assert info.wavelength_A == pytest.approx(0.9801122)
    assert info.pixel_size_mm == (0.075, 0.075)
    assert info.fast_axis == (1.0, 0.0, 0.0) and info.slow_axis == (0.0, -1.0, 0.0)
    assert info.omega_start_deg == 0.0 and info.omega_increment_deg == 0.5
    assert info.count_time_s == pytest.approx(0.00499) and info.frame_time_s == pytest.approx(0.005)
    assert info.saturation_value == 12440
    assert (info.sensor_material, info.sensor_thickness_mm) == ("Si", 0.45)
    assert (info.detector_description, info.detector_serial) == ("Dectris Eiger 9M", "E-18-0102")
    assert info.detector_type == "PAD"  # as dxtbx's NeXus reader has it (DIALS's smallest spot: 3 pixels)
    assert info.countrate_correction_applied is True and info.flatfield_applied is True
    assert info.pixel_mask is not None and info.pixel_mask.shape == (3269, 3110)
    with pytest.raises(BadInput) as err:
        next(source.frames())
    assert err.value.reason == "missing_data_file"


def test_not_hdf5_is_bad_input(tmp_path):
    bogus = tmp_path / "x_master.h5"
    bogus.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(BadInput) as err:
        EigerH5Source(bogus)
    assert err.value.reason == "not_hdf5"


def test_uncompressed_and_multi_image_chunks_come_out_raw(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 60000, size=(3, 7, 9), dtype=np.uint16)
    path = tmp_path / "plain_data_000001.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=images)  # contiguous, no filter
        f.create_dataset("entry/data/gz", data=images, chunks=(3, 7, 9), compression="gzip")
    frames = list(EigerH5Source(path).frames())
    assert [fr.encoding for fr in frames] == ["raw"] * 3
    np.testing.assert_array_equal(np.stack([codecs.decode(fr) for fr in frames]), images)


def test_nxmx_chain_with_a_two_theta_rotation(tmp_path):
    """A detector swung by two_theta = 30 deg about the McStas x axis (imgCIF -x): the chain gives
    the rotated axes, the perpendicular distance and where the direct beam meets the tilted plane."""
    from streamer.geometry import Beam, Detector, rotation_matrix

    px, d, bx, by, tt = 0.075, 150.0, 100.0, 80.0, 30.0
    path = tmp_path / "tilted_master.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/data/data", data=np.zeros((1, 160, 200), dtype=np.uint16))
        det = f.create_group("entry/instrument/detector")
        f.create_dataset("entry/instrument/beam/incident_wavelength", data=1.0).attrs["units"] = "angstrom"

        def transformation(group, name, value, units, kind, vector, depends_on, offset=(0.0, 0.0, 0.0)):
            ds = group.create_dataset(name, data=value)
            ds.attrs.update({"units": units, "transformation_type": kind, "vector": vector, "offset": offset,
                             "depends_on": depends_on})

        trans = det.create_group("transformations")
        transformation(trans, "two_theta", tt, "deg", "rotation", (1.0, 0.0, 0.0), ".")
        transformation(trans, "translation", d / 1e3, "m", "translation", (0.0, 0.0, 1.0),
                       "/entry/instrument/detector/transformations/two_theta")
        module = det.create_group("module")
        # McStas offset of pixel (0, 0): fast along -x, slow along -y (imgCIF fast +x, slow -y)
        transformation(module, "module_offset", 0.0, "m", "translation", (1.0, 0.0, 0.0),
                       "/entry/instrument/detector/transformations/translation", (bx * px / 1e3, by * px / 1e3, 0.0))
        for name, vector in (("fast_pixel_direction", (-1.0, 0.0, 0.0)), ("slow_pixel_direction", (0.0, -1.0, 0.0))):
            transformation(module, name, px / 1e3, "m", "translation", vector,
                           "/entry/instrument/detector/module/module_offset")
    info = EigerH5Source(path).info
    # the same detector built independently: untilted, then rotated about imgCIF -x by two_theta
    flat = Detector.from_beam_centre((bx, by), d, (px, px), (200, 160))
    rot = rotation_matrix((-1.0, 0.0, 0.0), tt)
    tilted = Detector(tuple(rot @ np.asarray(flat.origin_mm)), tuple(rot @ np.asarray(flat.fast_axis)),
                      tuple(rot @ np.asarray(flat.slow_axis)), (px, px), (200, 160))
    assert info.fast_axis == pytest.approx(tilted.fast_axis, abs=1e-12)
    assert info.slow_axis == pytest.approx(tilted.slow_axis, abs=1e-12)
    assert info.distance_mm == pytest.approx(d)
    assert info.beam_centre_px == pytest.approx(tilted.beam_centre_px(Beam(wavelength_A=1.0)), abs=1e-9)
    assert info.beam_centre_px[1] != pytest.approx(by)  # the tilt moved where the beam lands
