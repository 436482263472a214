"""Recorder: EIGER-style master + data files that round-trip through our reader, h5py+hdf5plugin
and (when installed) DIALS's dials.import; recording a live stream chunk for chunk."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest
import zmq
from conftest import needs_dials
from test_eiger_h5 import dataset_pairs, make_master
from test_replay import ipc_url

from streamer import codecs
from streamer.commands.record import record_stream
from streamer.commands.record import main as record_main
from streamer.geometry import Beam, Detector
from streamer.recorder import SeriesRecorder, data_file_name, record_frames
from streamer.series import EncodedFrame, SeriesInfo
from streamer.sources.eiger_h5 import EigerH5Source
from tools.replay import replay_series

DIALS_PYTHON = "/usr/bin/python3"  # Debian's DIALS runs on the system interpreter
GEOMETRY_FIELDS = ("image_shape", "dtype", "pixel_size_mm", "distance_mm", "wavelength_A", "fast_axis", "slow_axis",
                   "rotation_axis", "omega_start_deg", "omega_increment_deg", "count_time_s", "frame_time_s",
                   "saturation_value", "bit_depth_image", "detector_description", "detector_serial",
                   "sensor_material", "sensor_thickness_mm")


def synthetic_series(shape=(37, 53), dtype="<u4", n=5, **geometry) -> tuple[SeriesInfo, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    images = [rng.poisson(3.0, size=shape).astype(dtype) for _ in range(n)]
    images[1][3, 4] = np.iinfo(np.dtype(dtype)).max  # a saturated pixel
    mask = np.zeros(shape, dtype=np.uint32)
    mask[:, 20:22] = 1
    mask[5, 7] = 2
    info = SeriesInfo(series_id="synthetic", source="simulator", image_shape=shape, dtype=dtype, n_images=n,
                      detector_description="EIGER2 XE 16M", detector_serial="E-32-0123", sensor_material="CdTe",
                      sensor_thickness_mm=0.75, pixel_size_mm=(0.075, 0.075), beam_centre_px=(21.3, 17.9),
                      distance_mm=187.25, wavelength_A=0.8856, omega_start_deg=-12.5, omega_increment_deg=0.2,
                      count_time_s=0.00099, frame_time_s=0.001, saturation_value=120000, bit_depth_image=32,
                      countrate_correction_applied=True, flatfield_applied=False, pixel_mask=mask, **geometry)
    return info, images


def assert_same_geometry(a: SeriesInfo, b: SeriesInfo) -> None:
    for name in GEOMETRY_FIELDS:
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, float | tuple) and not isinstance(va, tuple) or (isinstance(va, tuple) and
                                                                            isinstance(va[0], float)):
            assert vb == pytest.approx(va, abs=1e-9), name
        else:
            assert vb == va, name
    assert b.beam_centre_px == pytest.approx(a.beam_centre_px, abs=1e-9)


@pytest.mark.parametrize("axes", [
    {},  # the usual: fast +x, slow -y, rotation about +x
    {"fast_axis": (-1.0, 0.0, 0.0), "slow_axis": (0.0, 1.0, 0.0), "rotation_axis": (0.0, 1.0, 0.0)},
    {"fast_axis": (0.0, 1.0, 0.0), "slow_axis": (1.0, 0.0, 0.0), "rotation_axis": (-1.0, 0.0, 0.0)},
])
def test_round_trip_geometry_and_pixels(tmp_path, axes, monkeypatch):
    info, images = synthetic_series(**axes)
    frames = [EncodedFrame(info.series_id, i, info.image_shape, info.dtype, "bslz4", codecs.encode(im, "bslz4"))
              for i, im in enumerate(images)]
    master = record_frames(tmp_path / "syn.h5", info, reversed(frames), images_per_file=2)  # any order
    assert [data_file_name(master, k).exists() for k in (1, 2, 3, 4)] == [True, True, True, False]
    with EigerH5Source(master) as source:
        back = source.info
        got = list(source.frames())
    assert_same_geometry(info, back)
    np.testing.assert_array_equal(back.pixel_mask, info.pixel_mask)
    with h5py.File(master, "r") as f:  # in NXmx's place too (where DIALS reads it): the same dataset
        det = f["/entry/instrument/detector"]
        assert det["pixel_mask"] == det["detectorSpecific/pixel_mask"]
    assert back.countrate_correction_applied is True and back.flatfield_applied is False
    assert back.series_id == "syn" and back.n_images == 5
    assert [f.image_number for f in got] == list(range(5))
    for original, read in zip(frames, got):
        assert read.encoding == "bslz4" and bytes(read.data) == original.data  # never recompressed
    with h5py.File(master, "r") as f:  # h5py + hdf5plugin decode the same pixels through the links
        stack = np.concatenate([f[f"/entry/data/data_{k:06d}"][()] for k in (1, 2, 3)])
        assert f["/entry/definition"][()] == b"NXmx"
    np.testing.assert_array_equal(stack, np.stack(images))
    monkeypatch.chdir(tmp_path.parent)  # and through the virtual dataset, the data files found beside the master
    with h5py.File(master, "r") as f:
        assert f["/entry/data"].attrs["signal"] == "data" and f["/entry/data/data"].is_virtual
        np.testing.assert_array_equal(f["/entry/data/data"][()], np.stack(images))
    # the NXmx chain places the detector where the header said: same beam centre via the geometry model
    det = Detector.from_beam_centre(back.beam_centre_px, back.distance_mm, back.pixel_size_mm, (53, 37),
                                    back.fast_axis, back.slow_axis)
    assert det.beam_centre_px(Beam(wavelength_A=back.wavelength_A)) == pytest.approx(info.beam_centre_px)


def test_other_encodings_are_reencoded_to_bslz4(tmp_path):
    info, images = synthetic_series(dtype="<u2", n=3)
    frames = [EncodedFrame(info.series_id, 0, info.image_shape, info.dtype, "raw", images[0].tobytes()),
              EncodedFrame(info.series_id, 1, info.image_shape, info.dtype, "lz4", codecs.encode(images[1], "lz4")),
              EncodedFrame(info.series_id, 2, info.image_shape, info.dtype, "lz4-h5", codecs.encode(images[2], "lz4-h5"))]
    recorder = SeriesRecorder(tmp_path / "mixed.h5", info)
    for frame in frames:
        recorder.write(frame)
    with pytest.raises(ValueError):
        recorder.write(frames[0])  # the same image twice
    with pytest.raises(ValueError):
        recorder.write(dataclasses.replace(frames[0], image_number=9, shape=(5, 5)))
    assert recorder.reencoded == 3
    recorder.close()
    got = list(EigerH5Source(tmp_path / "mixed.h5").frames())
    assert [f.encoding for f in got] == ["bslz4"] * 3
    for frame, image in zip(got, images):
        np.testing.assert_array_equal(codecs.decode(frame), image)


def test_missing_images_are_reported(tmp_path):
    info, images = synthetic_series(n=3)
    recorder = SeriesRecorder(tmp_path / "gap.h5", info)
    for i in (0, 2):
        recorder.write(EncodedFrame(info.series_id, i, info.image_shape, info.dtype, "raw", images[i].tobytes()))
    assert recorder.missing == [1]
    recorder.close()
    with h5py.File(tmp_path / "gap.h5", "r") as f:
        data = f["/entry/data/data_000001"][()]
    np.testing.assert_array_equal(data[2], images[2])
    assert not data[1].any()


def test_a_data_file_that_never_came_reads_as_pixels_without_data(tmp_path):
    """Images 2-3 (the second data file) never arrived: the virtual dataset has the series'
    length, and those images read as the detector's flag value, not as counts of zero."""
    info, images = synthetic_series(n=5)
    recorder = SeriesRecorder(tmp_path / "hole.h5", info, images_per_file=2)
    for i in (0, 1, 4):
        recorder.write(EncodedFrame(info.series_id, i, info.image_shape, info.dtype, "raw", images[i].tobytes()))
    recorder.close()
    with h5py.File(tmp_path / "hole.h5", "r") as f:
        data = f["/entry/data/data"][()]
        assert sorted(f["/entry/data"]) == ["data", "data_000001", "data_000002"]
    assert data.shape[0] == 5
    np.testing.assert_array_equal(data[[0, 1, 4]], np.stack([images[0], images[1], images[4]]))
    assert (data[2:4] == np.iinfo(np.uint32).max).all()
    with EigerH5Source(tmp_path / "hole.h5") as source:
        assert [f.image_number for f in source.frames()] == [0, 1, 4]


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_record_a_replayed_stream_chunk_for_chunk(shared_data, tmp_path, fmt):
    name, files = sorted(dataset_pairs(shared_data).items())[2]  # an EIGER2 bslz4 dataset
    master = make_master(tmp_path, files)
    original = EigerH5Source(master)
    url = ipc_url(tmp_path, f"det-{fmt}")
    ctx = zmq.Context.instance()
    sender = threading.Thread(target=replay_series, args=(ctx, [master], url, fmt), kwargs={"rate_hz": None,
                              "header_detail": "all"})
    sender.start()
    written = record_stream(url, tmp_path / "rec.h5", once=True, timeout_s=20.0, ctx=ctx)
    sender.join(timeout=30)
    assert written == [tmp_path / "rec.h5"]
    with EigerH5Source(written[0]) as rec:
        for a, b in zip(original.frames(), rec.frames(), strict=True):
            assert a.encoding == "bslz4" and bytes(a.data) == bytes(b.data), a.image_number
        back = rec.info
    assert back.beam_centre_px == pytest.approx(original.info.beam_centre_px)
    assert back.distance_mm == pytest.approx(original.info.distance_mm)
    assert back.wavelength_A == pytest.approx(original.info.wavelength_A, rel=1e-6)
    assert back.omega_increment_deg == pytest.approx(original.info.omega_increment_deg)
    original.close()


def test_a_recording_cut_short_says_so(tmp_path, caplog):
    """A series that stops coming before its end (the detector went quiet past --timeout): the
    file holds what came, and the log says the series is unfinished, with how many images."""
    from receiver_fakes import encoded_frames, small_series

    from streamer.sender import DetectorSender

    series = small_series(n=6)
    _, frames = encoded_frames(series)
    url = ipc_url(tmp_path, "det-cut")
    ctx = zmq.Context.instance()
    done = threading.Event()

    def send():
        with DetectorSender(ctx, url, fmt="v2") as sender:
            sender.send_start(series)
            for frame in frames[:3]:
                sender.send_frame(frame)
            done.wait(20)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        with caplog.at_level("WARNING", logger="streamer.commands.record"):
            written = record_stream(url, tmp_path / "cut.h5", once=True, timeout_s=1.0, ctx=ctx)
    finally:
        done.set()
        sender.join(timeout=30)
    assert written == [tmp_path / "cut.h5"]
    assert [f.image_number for f in EigerH5Source(written[0]).frames()] == [0, 1, 2]
    assert any("recorded unfinished: no message for 1 s (--timeout) before its end message; 3 of 6 images"
               in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_record_command_line(shared_data, tmp_path, capsys):
    _, files = sorted(dataset_pairs(shared_data).items())[0]
    master = make_master(tmp_path, files)
    url = ipc_url(tmp_path, "det-cli")
    sender = threading.Thread(target=replay_series, args=(zmq.Context.instance(), [master], url, "v1"),
                              kwargs={"rate_hz": None})
    sender.start()
    assert record_main(["--connect", url, "--out", str(tmp_path / "cli.h5"), "--once", "--timeout", "20"]) == 0
    sender.join(timeout=30)
    assert f"wrote {tmp_path / 'cli.h5'}" in capsys.readouterr().out
    assert len(list(EigerH5Source(tmp_path / "cli.h5").frames())) == 4
    assert record_main(["--connect", "localhost:1", "--out", str(tmp_path / "x.h5")]) == 2


@pytest.mark.slow
@pytest.mark.dials
@needs_dials()
def test_dials_import_reads_the_recording(tmp_path):
    if shutil.which("dials.import") is None or not Path(DIALS_PYTHON).exists():
        pytest.skip("dials.import is not installed")
    info, images = synthetic_series(shape=(64, 80), n=3)
    info = dataclasses.replace(info, beam_centre_px=(40.25, 30.5), rotation_axis=(1.0, 0.0, 0.0))
    frames = [EncodedFrame(info.series_id, i, info.image_shape, info.dtype, "bslz4", codecs.encode(im, "bslz4"))
              for i, im in enumerate(images)]
    # two data files: DIALS 3.12 reads a generic NXmx file through its NXdata signal only
    master = record_frames(tmp_path / "dials_master.h5", info, frames, images_per_file=2)
    result = subprocess.run(["dials.import", str(master), "output.experiments=imported.expt"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    expt = json.loads((tmp_path / "imported.expt").read_text())
    panel = expt["detector"][0]["panels"][0]
    assert panel["image_size"] == [80, 64]
    assert panel["pixel_size"] == pytest.approx([0.075, 0.075])
    det = Detector(tuple(panel["origin"]), tuple(panel["fast_axis"]), tuple(panel["slow_axis"]),
                   tuple(panel["pixel_size"]), (80, 64))
    beam = expt["beam"][0]
    assert beam["wavelength"] == pytest.approx(info.wavelength_A, rel=1e-6)
    assert det.beam_centre_px(Beam(wavelength_A=beam["wavelength"])) == pytest.approx(info.beam_centre_px, abs=1e-6)
    assert det.distance_mm == pytest.approx(info.distance_mm)
    gonio = expt["goniometer"][0]
    assert gonio["rotation_axis"] == pytest.approx(list(info.rotation_axis))
    scan = expt["scan"][0]
    assert scan["image_range"] == [1, 3]
    assert scan["oscillation"] == pytest.approx([info.omega_start_deg, info.omega_increment_deg])
    # dxtbx decodes the same pixels (run with DIALS's own interpreter)
    script = ("import sys, numpy; from dxtbx.model.experiment_list import ExperimentListFactory as F; "
              "s = F.from_json_file('imported.expt')[0].imageset; "
              "numpy.save('dials_pixels.npy', numpy.stack([s.get_raw_data(i)[0].as_numpy_array() for i in range(3)])); "
              "numpy.save('dials_mask.npy', s.get_mask(0)[0].as_numpy_array())")
    # Debian's HDF5 finds no bitshuffle filter unless hdf5-filter-plugin is installed: lend it hdf5plugin's
    env = {**os.environ, "HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}
    result = subprocess.run([DIALS_PYTHON, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr
    # dxtbx hands uint32 pixels on as int32 (a saturated 2**32-1 reads as -1)
    np.testing.assert_array_equal(np.load(tmp_path / "dials_pixels.npy"), np.stack(images).view(np.int32))
    # and masks the pixels our mask flags (it read no mask when the file had it in detectorSpecific only)
    np.testing.assert_array_equal(np.load(tmp_path / "dials_mask.npy"), info.pixel_mask == 0)


@pytest.mark.slow
def test_record_stopped_by_sigterm_mid_series_leaves_a_readable_file(tmp_path):
    """`record` ended by SIGTERM before the series' end (a beamline script stopping it): the
    recording so far is closed as a readable master + data file and the exit status is 0.
    Before, the process died at the signal: no master, an unreadable data file, status 143."""
    import signal
    import sys
    import time

    from streamer.sender import DetectorSender

    info, images = synthetic_series(n=6)
    url = ipc_url(tmp_path, "det-term")
    log_path = tmp_path / "record.log"
    with open(log_path, "w") as log_file, DetectorSender(zmq.Context.instance(), url, "v1") as sender:
        proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "record", "--connect", url, "--out",
                                 str(tmp_path / "rec.h5")], stdout=subprocess.PIPE, stderr=log_file, text=True)
        sender.send_start(info, header_detail="all")
        for i in range(3):
            sender.send_frame(EncodedFrame(info.series_id, i, info.image_shape, info.dtype, "bslz4",
                                           codecs.encode(images[i], "bslz4")))
        deadline = time.monotonic() + 60
        while "first image of series" not in log_path.read_text():  # SIGTERM once a frame is written
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, log_path.read_text()
    assert f"wrote {tmp_path / 'rec.h5'}" in out
    with EigerH5Source(tmp_path / "rec.h5") as rec:
        frames = list(rec.frames())
    assert frames
    for frame in frames:
        np.testing.assert_array_equal(codecs.decode(frame), images[frame.image_number])


def test_recording_works_with_an_hdf5_plugin_path_set(tmp_path):
    """Beamline environments set HDF5_PLUGIN_PATH (for DIALS, XDS): HDF5 then loads the plugins
    found there, built for another HDF5 library, and hdf5plugin used to leave its own out:
    writing a bitshuffle dataset failed ("error during user callback", an internal error of
    `simulate --out` and `record`). `streamer.hdf5_filters` registers hdf5plugin's over them."""
    import sys

    env = {**os.environ, "HDF5_PLUGIN_PATH": hdf5plugin.PLUGIN_PATH}
    master = tmp_path / "env_master.h5"
    for argv in (["tools.simulate", "--images", "2", "--detector", "test512", "--out", str(master)],
                 ["streamer.commands.findspots", str(master), "--out", str(tmp_path / "spots.csv")]):
        code = (f"import sys; from {argv[0]} import main; sys.exit(main({argv[1:]!r}))")
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    assert len((tmp_path / "spots.csv").read_text().splitlines()) > 10
