"""CBF/SMV series: real PILATUS 6M thaumatin CBFs and the nanoBragg SMV sweep (geometry from its
truth.json), read straight from their .bz2 files; content-based dispatch of `open_source`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import fabio
import fabio.adscimage
import numpy as np
import pytest
from conftest import needs_dials

from streamer import codecs
from streamer.errors import BadHeader, BadInput
from streamer.geometry import Beam, Detector
from streamer.masks import trusted_range
from streamer.perimage import default_min_spot_size
from streamer.sources import open_source
from streamer.sources.image_files import DEAD_BIT, GAP_BIT, ImageSeriesSource, image_format
from streamer.sources.image_headers import smv_beam_centre_px, smv_detector_type, smv_gain, smv_pedestal

THAUMATIN = "real-images/thaumatin_grid"
LYSO = "sim/lyso-nanobragg"
DIALS_PYTHON = "/usr/bin/python3"  # Debian's DIALS runs on the system interpreter


def cbf_files(shared: Path, n: int = 3) -> list[Path]:
    return sorted((shared / THAUMATIN).glob("thau_3_2_*.cbf.bz2"))[:n]


def smv_files(shared: Path, n: int = 3) -> list[Path]:
    return sorted((shared / LYSO / "images").glob("lyso_*.img.bz2"))[:n]


def test_thaumatin_cbf_header_and_pixels(shared_data):
    files = cbf_files(shared_data, 2)
    source = ImageSeriesSource(files)
    info = source.info
    assert image_format(files[0]) == "cbf" and info.source == "cbf" and info.series_id == "thau_3_2"
    assert info.detector_type == "PAD"  # every miniCBF, for dxtbx
    assert info.image_shape == (2527, 2463) and info.dtype == "<u4" and info.n_images == 2
    assert info.beam_centre_px == (1261.61, 1306.96)
    assert info.distance_mm == 351.0 and info.wavelength_A == 0.96859
    assert info.pixel_size_mm == (0.172, 0.172)
    assert info.omega_start_deg == 89.9997 and info.omega_increment_deg == 0.0 and info.is_still
    assert info.count_time_s == 0.019 and info.frame_time_s == 0.02
    assert info.saturation_value == 115897
    assert (info.detector_description, info.detector_serial) == ("PILATUS3 6M", "60-0119")
    assert (info.sensor_material, info.sensor_thickness_mm) == ("Si", 0.45)
    for index, path in enumerate(files):
        truth = fabio.open(str(path)).data  # int32 with -1 (gaps) and -2 (bad pixels)
        frame = source.frame(index)
        assert frame.encoding == "raw" and frame.image_number == index
        np.testing.assert_array_equal(source.pixels(index).view(np.int32), truth)
        # streamed as a DECTRIS detector does: every flagged pixel all ones (-2 bad pixels too)
        np.testing.assert_array_equal(codecs.decode(frame).view(np.int32), np.maximum(truth, -1))
        if index == 0:
            mask = info.pixel_mask
            np.testing.assert_array_equal((mask & GAP_BIT) != 0, truth == -1)
            np.testing.assert_array_equal((mask & DEAD_BIT) != 0, truth == -2)
            # PILATUS 6M: 5 x 12 modules of 487 x 195 pixels with 7- and 17-pixel gaps
            assert np.count_nonzero(truth == -1) == 2463 * 2527 - 60 * 487 * 195


def test_cbf_bslz4_frames_decode_to_the_same_pixels(shared_data):
    source = ImageSeriesSource(cbf_files(shared_data, 1), encoding="bslz4")
    frame = source.frame(0)
    assert frame.encoding == "bslz4" and len(frame.data) < frame.nbytes_decoded / 4
    np.testing.assert_array_equal(codecs.decode(frame).view(np.int32), np.maximum(source.pixels(0).view(np.int32), -1))


def test_cbf_replayed_without_its_mask_has_no_false_overloads(shared_data):
    """A CBF series streamed with header detail "basic" (no pixel mask): its bad pixels (-2)
    read as inactive, as a DECTRIS stream marks them, not as overloads; the spots and the
    overload count are those of the files with their mask."""
    import dataclasses

    from streamer.config import Config
    from streamer.perimage import ImageAnalyser

    source = ImageSeriesSource(cbf_files(shared_data, 1))
    assert np.count_nonzero(source.info.pixel_mask & DEAD_BIT) > 0
    streamed = dataclasses.replace(source.info, source="stream-v1", pixel_mask=None)
    direct = ImageAnalyser(source.info, Config()).analyse(source.pixels(0), 0)
    replayed = ImageAnalyser(streamed, Config()).analyse(codecs.decode(source.frame(0)), 0)
    assert replayed.n_overloads == direct.n_overloads < 10
    np.testing.assert_array_equal(replayed.spots.pixel_index, direct.spots.pixel_index)


def test_nanobragg_smv_geometry_matches_truth(shared_data):
    truth = json.loads((shared_data / LYSO / "truth.json").read_text())
    det = truth["detector"]
    files = smv_files(shared_data, 3)
    info, frames = open_source(files, pedestal=0)
    assert info.source == "smv" and info.series_id == "lyso" and info.n_images == 3
    assert info.image_shape == (det["image_size_px"]["slow"], det["image_size_px"]["fast"])
    assert info.dtype == "<u2" and info.saturation_value == 65535
    assert info.beam_centre_px == (det["beam_centre_px"]["fast"], det["beam_centre_px"]["slow"])
    assert info.distance_mm == det["distance_mm"] and info.pixel_size_mm == (det["pixel_size_mm"],) * 2
    assert info.wavelength_A == truth["beam"]["wavelength_A"]
    assert info.fast_axis == tuple(det["fast_axis"]) and info.slow_axis == tuple(det["slow_axis"])
    gonio = truth["goniometer"]
    assert info.rotation_axis == tuple(gonio["rotation_axis_dials_frame"])
    assert info.omega_increment_deg == gonio["oscillation_deg_per_image"]
    frames = list(frames)
    for i, (path, frame) in enumerate(zip(files, frames)):
        image = fabio.adscimage.AdscImage()
        image.read(str(path))
        np.testing.assert_array_equal(codecs.decode(frame), image.data)
        assert info.phi_deg(frame.image_number) == (i) * 0.5  # truth: image i covers (i-1)*0.5 ..


def test_smv_pedestal_removes_the_adc_offset(shared_data):
    files = smv_files(shared_data, 1)
    plain = ImageSeriesSource(files, pedestal=0)
    raw = plain.pixels(0)
    assert raw.dtype == np.dtype("<u2") and plain.info.underload_value is None
    source = ImageSeriesSource(files, pedestal=40)
    corrected = source.pixels(0)
    # int32 counts less the offset, nothing clipped (a CCD's read noise goes below it)
    assert corrected.dtype == np.dtype(source.info.dtype) == np.dtype("<i4")
    np.testing.assert_array_equal(corrected, raw.astype(np.int64) - 40)
    # dxtbx's trusted range, on the counts before the offset comes off: below 65535 - 40
    # (so 65535 - 2 * 40 after) and above -1 (every count: from -40 after)
    assert (source.info.saturation_value, source.info.underload_value) == (65535 - 80, -40)
    assert trusted_range(source.info) == (-41.0, 65455.0)
    # README: after removing the offset the (zero) background holds exactly 0
    values, counts = np.unique(corrected, return_counts=True)
    assert values[np.argmax(counts)] == 0 and raw.min() == 40


def test_smv_offsets_and_detector_types_default_to_dxtbxs(shared_data):
    """With no pedestal given, an SMV image loses the ADC offset DIALS assumes for its format,
    and counts as the detector type dxtbx gives it (DIALS's default spot size follows): so that
    DIALS and we find the same spots with no options (tests/test_findspots_vs_dials.py)."""
    files = smv_files(shared_data, 1)
    source = ImageSeriesSource(files)  # nanoBragg: BEAMLINE=fake, no ADC_OFFSET (its true offset, 40, unstated)
    assert source.pedestal == 1 and source.info.detector_type == "PAD"  # PILATUS pixels (0.172 mm)
    raw = ImageSeriesSource(files, pedestal=0).pixels(0).astype(np.int64)
    np.testing.assert_array_equal(source.pixels(0), raw - 1)
    assert default_min_spot_size(source.info) == 3
    fake = {"BEAMLINE": "fake"}
    assert (smv_pedestal(fake), smv_pedestal({**fake, "ADC_OFFSET": "40"}), smv_pedestal({"IMAGE_PEDESTAL": "20"}),
            smv_pedestal({})) == (1, 40, 20, 0)
    assert (smv_detector_type(fake, 0.172), smv_detector_type(fake, 0.1), smv_detector_type({}, 0.172)) == \
        ("PAD", "CCD", "CCD")
    adsc = dataclasses.replace(source.info, detector_description="", detector_type="CCD")
    assert default_min_spot_size(adsc) == 6
    # a miniCBF is a pixel-array detector's for dxtbx, whatever its detector line says; an
    # unknown source is judged by that line
    ccd_named = dataclasses.replace(source.info, detector_description="ADSC Q315 (converted)", detector_type="PAD")
    assert default_min_spot_size(ccd_named) == 3
    assert default_min_spot_size(dataclasses.replace(ccd_named, detector_type="")) == 6
    with pytest.raises(BadHeader):
        smv_pedestal({"IMAGE_PEDESTAL": "forty"})
    # ADU per photon: the header's, else an ADSC model's by its size, else 1; a simulator counts photons
    q315 = {"SIZE1": "3072", "SIZE2": "3072", "PIXEL_SIZE": "0.1024"}
    assert (smv_gain(q315), smv_gain({**q315, "GAIN": "1.7"}), smv_gain({**q315, "SIZE2": "2048"}),
            smv_gain({**fake, **q315}), smv_gain({"SIZE1": "2304", "SIZE2": "2304", "PIXEL_SIZE": "0.0816"})) == \
        (2.4, 1.7, 1.0, 1.0, 1.25)
    assert source.info.detector_gain == 1.0
    for bad in ({"GAIN": "-1"}, {"GAIN": "nan"}, {"SIZE1": "x"}):
        with pytest.raises(BadHeader):
            smv_gain({**q315, **bad})


def test_smv_beam_centre_conventions():
    pixel = 0.1
    nanobragg = {"MOSFLM_CENTER_X": "20.0", "MOSFLM_CENTER_Y": "30.0", "BEAM_CENTER_X": "20.0", "BEAM_CENTER_Y": "30.0"}
    assert smv_beam_centre_px(nanobragg, pixel) == (300.5, 200.5)
    adsc = {"BEAM_CENTER_X": "20.0", "BEAM_CENTER_Y": "30.0"}
    assert smv_beam_centre_px(adsc, pixel) == (300.0, 200.0)
    assert smv_beam_centre_px({"DIALS_ORIGIN": "-30.05,20.05,-150", **adsc}, pixel) == (300.5, 200.5)


def test_open_source_dispatches_by_content(shared_data, tmp_path):
    renamed = tmp_path / "image_without_extension"
    os.symlink(smv_files(shared_data, 1)[0], tmp_path / "a.img.bz2")
    info, _ = open_source([tmp_path / "a.img.bz2"])
    assert info.source == "smv"
    eiger = shared_data / "eiger-h5" / "datasets_eiger2_eiger2_simread7_2datafiles_4images_bslz4_data_000001.h5"
    os.symlink(eiger, renamed)
    info, frames = open_source([renamed])
    assert info.source == "hdf5" and len(list(frames)) == 2
    pairs = sorted((shared_data / "eiger-h5").glob("datasets_eiger2_eiger2_simread7_2datafiles_4images_bslz4_data_*"))
    info, frames = open_source(pairs)
    frames = list(frames)
    assert info.n_images == 4 and [f.image_number for f in frames] == [0, 1, 2, 3]
    assert {f.series_id for f in frames} == {info.series_id}
    junk = tmp_path / "junk.cbf"
    junk.write_bytes(b"hello")
    with pytest.raises(BadInput) as err:
        open_source([junk])
    assert err.value.reason == "unknown_format"
    with pytest.raises(BadInput) as err:
        open_source([tmp_path / "missing.h5"])
    assert err.value.reason == "no_input"


def test_open_source_reads_a_stream_capture_folder(shared_data):
    info, frames = open_source([shared_data / "streams" / "eiger2-1m-v1"])
    frames = list(frames)
    assert info.source == "stream-v1" and len(frames) == 10
    assert all(codecs.decode(f).shape == info.image_shape for f in frames)


@pytest.mark.slow
@pytest.mark.dials
@needs_dials()
def test_cbf_geometry_and_pixels_agree_with_dials(shared_data, tmp_path):
    """dials.import (dxtbx) on the same CBF: same beam centre, distance, wavelength, pixels.

    dxtbx picks a beamline-specific class for this detector serial (FormatCBFMiniPilatusDLS6MSN119)
    whose goniometer axis is (0, 1, 0); the header's generic "X.CW" gives (1, 0, 0) here, as
    dxtbx's generic FormatCBFMiniPilatus does. Those images are stills, so the axis is not compared.
    """
    path = cbf_files(shared_data, 1)[0]
    result = subprocess.run(["dials.import", str(path), "output.experiments=imported.expt"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    expt = json.loads((tmp_path / "imported.expt").read_text())
    panel = expt["detector"][0]["panels"][0]
    source = ImageSeriesSource([path])
    info = source.info
    det = Detector(tuple(panel["origin"]), tuple(panel["fast_axis"]), tuple(panel["slow_axis"]),
                   tuple(panel["pixel_size"]), tuple(panel["image_size"]))
    beam = Beam(wavelength_A=expt["beam"][0]["wavelength"])
    assert det.beam_centre_px(beam) == pytest.approx(info.beam_centre_px, abs=1e-6)
    assert det.distance_mm == pytest.approx(info.distance_mm)
    assert beam.wavelength_A == pytest.approx(info.wavelength_A)
    assert tuple(panel["image_size"]) == info.image_shape[::-1]
    assert panel["trusted_range"][1] == info.saturation_value
    script = ("import numpy; from dxtbx.model.experiment_list import ExperimentListFactory as F; "
              "s = F.from_json_file('imported.expt')[0].imageset; "
              "numpy.save('dials_pixels.npy', s.get_raw_data(0)[0].as_numpy_array())")
    result = subprocess.run([DIALS_PYTHON, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "dials_pixels.npy"), source.pixels(0).view(np.int32))
