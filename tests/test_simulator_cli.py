"""`xtalstream simulate` end to end: EIGER HDF5 output and live streaming (v1, v2) over real sockets."""

from __future__ import annotations

import threading
import time

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle filter)
import numpy as np
import pytest
import zmq

from streamer import codecs
from streamer.geometry import Experiment
from streamer.receiver import Receiver
from streamer.series import EncodedFrame, SeriesEnd, SeriesInfo
from tools import simulate
from tools.simulator.sweep import Simulation
from tools.simulator.truth import load_truth

ARGS = ["--preset", "orthorhombic", "--detector", "test512", "--images", "3", "--seed", "4", "--zingers", "0"]


def test_simulate_writes_eiger_hdf5_and_truth(tmp_path):
    master = tmp_path / "sweep_master.h5"
    assert simulate.main([*ARGS, "--out", str(master)]) == 0
    truth = load_truth(tmp_path / "sweep_truth.h5")
    assert truth.n_images == 3 and truth.experiment.crystal.space_group == "P 21 21 21"
    sim = Simulation(simulate.spec_from_args(simulate.build_parser().parse_args([*ARGS, "--out", "x"])))
    with h5py.File(master) as f:
        data = f["/entry/data/data_000001"][()]
        beam_x = truth.experiment.detector.beam_centre_px(truth.experiment.beam)[0]
        assert f["/entry/instrument/detector/beam_center_x"][()] == pytest.approx(beam_x)
    assert data.shape == (3, 512, 512) and data.dtype == np.uint16
    for i in range(3):
        np.testing.assert_array_equal(data[i], sim.frame(i))


def test_simulate_bad_arguments_exit_2(tmp_path):
    assert simulate.main(["--images", "0", "--out", str(tmp_path / "x.h5")]) == 2
    assert simulate.main(["--images", "2", "--out", str(tmp_path / "x.h5"), "--space-group", "Q 99"]) == 2
    assert simulate.main(["--images", "2", "--out", str(tmp_path / "x.h5"), "--detector", "nope"]) == 2
    assert simulate.main(["--images", "2"]) == 2  # neither --bind nor --out
    for bad in (["--wavelength", "0"], ["--distance", "-5"], ["--cell", "-1", "10", "10", "90", "90", "90"],
                ["--cell", "10", "10", "10", "90", "90", "200"], ["--cell", "10", "10", "10", "120", "120", "120"],
                ["--rotation-axis", "0", "0", "0"], ["--rotation-axis", "0", "0.1", "1"]):  # none; along the beam
        assert simulate.main(["--images", "2", "--out", str(tmp_path / "x.h5"), *bad]) == 2, bad
    assert simulate.main(["--images", "2", "--out", "/proc/no/such/x.h5"]) == 2  # a folder that cannot be made
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize("fmt, wait", [("v2", True), ("v1", False)])
def test_simulate_streams_live_to_a_consumer(tmp_path, fmt, wait):
    url = f"ipc://{tmp_path}/det.sock"
    truth_path = tmp_path / "truth.h5"
    argv = [*ARGS, "--bind", url, "--format", fmt, "--rate", "200", "--truth", str(truth_path)]
    if wait:
        argv.append("--wait-for-consumer")
    status = []
    thread = threading.Thread(target=lambda: status.append(simulate.main(argv)), daemon=True)
    thread.start()
    if wait:  # connect only once the simulator is set up and waiting: it must still send everything
        deadline = time.monotonic() + 60
        while not truth_path.exists() and time.monotonic() < deadline:
            thread.join(0.05)
        assert thread.is_alive() and truth_path.exists()
    events = []
    with Receiver(zmq.Context.instance(), url) as receiver:
        for event in receiver.events(timeout_s=60):
            events.append(event)
            if isinstance(event, SeriesEnd):
                break
    thread.join(60)
    assert status == [0]
    infos = [e for e in events if isinstance(e, SeriesInfo)]
    frames = [e for e in events if isinstance(e, EncodedFrame)]
    assert len(infos) == 1 and [f.image_number for f in frames] == [0, 1, 2]
    assert isinstance(events[-1], SeriesEnd) and events[-1].reason == "end"
    info = infos[0]
    truth = load_truth(truth_path)
    assert info.beam_centre_px == pytest.approx(truth.experiment.detector.beam_centre_px(truth.experiment.beam))
    assert info.pixel_mask is not None and int(info.pixel_mask.sum()) == int(truth.pixel_mask.sum())
    # a processor that builds its geometry from the stream header gets the truth's
    from_header = Experiment.from_series(info, polarization_fraction=truth.experiment.beam.polarization_fraction)
    np.testing.assert_allclose(from_header.detector.origin_mm, truth.experiment.detector.origin_mm, atol=1e-9)
    assert from_header.scan == truth.experiment.scan
    assert from_header.beam == truth.experiment.beam and from_header.goniometer == truth.experiment.goniometer
    sim = Simulation(simulate.spec_from_args(simulate.build_parser().parse_args([*ARGS, "--out", "x"])))
    for frame in frames:
        np.testing.assert_array_equal(codecs.decode(frame), sim.frame(frame.image_number))


def test_findspots_on_eiger_hdf5_decodes_chunks_in_the_pass_as_decoding_first(tmp_path):
    """`findspots` hands the stored bslz4 chunks to the threshold pass (decoded band by band):
    its per-image figures equal those of the analysis of the decoded frames."""
    import csv

    from streamer.commands.findspots import main
    from streamer.config import Config
    from streamer.perimage import ImageAnalyser
    from streamer.sources.open_any import open_source

    master = tmp_path / "sweep_master.h5"
    assert simulate.main([*ARGS[:5], "6", *ARGS[6:], "--out", str(master)]) == 0
    info, frames = open_source([str(master)])
    frames = list(frames)
    assert {f.encoding for f in frames} == {"bslz4"}
    analyser = ImageAnalyser(info, Config())
    want = [analyser.analyse(codecs.decode(f), f.image_number) for f in frames]
    out = tmp_path / "spots.csv"
    assert main([str(master), "--out", str(out), "--nproc", "1"]) == 0
    with open(tmp_path / "per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["n_spots"]) for r in rows] == [w.n_spots for w in want]
    assert [float(r["total_intensity"]) for r in rows] == pytest.approx([w.total_intensity for w in want], rel=1e-6)
    assert [float(r["background"]) for r in rows] == pytest.approx([w.background for w in want], rel=1e-5)  # 6 digits
    assert sum(w.n_spots for w in want) > 0


def test_findspots_writes_a_blank_per_image_row_for_a_skipped_image(tmp_path):
    """per_image.csv has one row per image (CONTRACT.md): an image that cannot be decoded is
    skipped with its reason, and its row carries only its number and phi."""
    import csv

    from streamer.commands.findspots import main

    master = tmp_path / "sweep_master.h5"
    assert simulate.main([*ARGS[:5], "4", *ARGS[6:], "--out", str(master)]) == 0
    data_file = next(tmp_path.glob("sweep_data_*.h5"))
    with h5py.File(data_file, "r+") as f:  # image 2: a chunk whose bitshuffle-LZ4 blocks are garbage
        dset = f["entry/data/data"]
        good = dset.id.read_direct_chunk((2, 0, 0))[1]
        dset.id.write_direct_chunk((2, 0, 0), good[:12] + b"\xff" * (len(good) - 12))
    assert main([str(master), "--out", str(tmp_path / "spots.csv"), "--nproc", "1"]) == 0
    with open(tmp_path / "per_image.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["image"]) for r in rows] == [0, 1, 2, 3]
    assert [r["n_spots"] == "" for r in rows] == [False, False, True, False]
    assert rows[2]["phi"] != ""


@pytest.mark.slow
def test_simulate_gives_up_when_its_consumer_goes_away(tmp_path):
    """A consumer that leaves mid-series (a processor stopped) left `simulate --bind` blocked for
    ever once its queue was full. It now gives up after --send-timeout with a clear error, status 2."""
    import subprocess
    import sys

    url = f"ipc://{tmp_path}/det.sock"
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "simulate", "--preset", "orthorhombic",
                             "--detector", "test512", "--images", "400", "--bind", url, "--wait-for-consumer",
                             "--send-timeout", "1"],
                            stderr=subprocess.PIPE, text=True)
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.RCVHWM, 2)
    pull.connect(url)
    try:
        for _ in range(3):  # the header and two images
            assert pull.poll(60_000), "nothing received"
            pull.recv_multipart()
    finally:
        pull.close()
    started = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "no receiver took a message" in err and "internal error" not in err
    assert time.monotonic() - started < 30


def test_simulate_wait_timeout_is_an_error_not_a_crash(tmp_path, capsys):
    url = f"ipc://{tmp_path}/det.sock"
    assert simulate.main([*ARGS, "--bind", url, "--wait-for-consumer", "--wait-timeout", "0.2"]) == 2
    assert "no consumer connected" in capsys.readouterr().err


def test_findspots_bad_options_exit_2(tmp_path, capsys):
    """An option value out of range, or an output folder that cannot be made: exit 2 with what
    was wrong (they were 'internal error' tracebacks, status 1)."""
    from streamer.commands.findspots import main

    master = tmp_path / "sweep_master.h5"
    assert simulate.main([*ARGS[:5], "1", *ARGS[6:], "--out", str(master)]) == 0
    capsys.readouterr()
    for bad in (["--sigma-strong", "-1"], ["--kernel-size", "0", "3"],
                ["--kernel-size", "1", "1", "--min-local", "10"]):
        assert main([str(master), "--out", str(tmp_path / "spots.csv"), *bad]) == 2, bad
        assert "invalid spot-finding option" in capsys.readouterr().err
    assert main([str(master), "--out", str(tmp_path / "spots.csv"), "--border", "-1"]) == 2
    assert "invalid mask option" in capsys.readouterr().err
    assert main([str(master), "--out", "/proc/no/such/spots.csv"]) == 2
    assert "/proc/no" in capsys.readouterr().err
