"""The commands that run the whole pipeline, end to end: `xtalstream process` on recorded
frames (against the analyser run in this process), `run --once` on a live stream v2, and
`demo` (simulator -> stream -> pipeline -> outputs, and its exit when the simulator fails)."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from streamer import codecs
from streamer.config import Config


@pytest.mark.slow
def test_process_command_equals_direct_per_image_analysis(shared_data, tmp_path):
    """`xtalstream process` on real SMV files (nanoBragg lysozyme) with two worker processes gives
    per_image.csv rows identical to running the analyser on the same frames in this process."""
    import csv

    from streamer.commands.process import main as process_main
    from streamer.perimage import ImageAnalyser
    from streamer.sources.open_any import open_source
    from streamer.spot_joiner import SpotJoinerStage
    from streamer.spots_io import read_spots_csv

    # four 0.5-degree images: below the indexer's first attempt (3 degrees), so this stays fast
    paths = sorted((shared_data / "sim" / "lyso-nanobragg" / "images").glob("lyso_00[1-4].img.bz2"))
    assert len(paths) == 4
    out = tmp_path / "out"
    assert process_main([*map(str, paths), "--pedestal", "40", "--out", str(out), "--workers", "2",
                         "--result-stream", "off"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == {"received": 4, "processed": 4, "dropped": {}}
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    series, frames = open_source(paths, pedestal=40)
    analyser = ImageAnalyser(series, Config())
    joiner = SpotJoinerStage(series, Config())
    for row, frame in zip(rows, frames, strict=True):
        direct = analyser.analyse(codecs.decode(frame), frame.image_number)
        joiner.add(series, SimpleNamespace(image_number=direct.image_number, spots=direct.spots.columns()))
        assert int(row["image"]) == direct.image_number
        assert float(row["phi"]) == pytest.approx(direct.phi_deg)
        for key in ("n_spots", "n_spots_no_ice", "n_spots_4A", "n_overloads", "ice_rings"):
            assert int(row[key]) == getattr(direct, key), key
        for key in ("total_intensity", "estimated_d_min", "background"):
            assert float(row[key]) == pytest.approx(getattr(direct, key), rel=1e-5), key
    assert direct.n_spots > 100  # a real diffraction image, not an empty pass
    joiner.finish()
    spots = read_spots_csv(out / "spots.csv")
    expected = joiner.spots()
    assert len(spots["x_px"]) == len(expected) > 100
    np.testing.assert_allclose(np.sort(spots["z_image"]), np.sort(expected.z_image), atol=1e-4)


@pytest.mark.slow
def test_run_once_command_on_a_real_stream(shared_data, tmp_path):
    """`xtalstream run --once --out DIR` (the command itself) on a stream v2 of real frames."""
    from streamer.commands.run import main as run_main
    from streamer.sender import DetectorSender
    from streamer.sources.open_any import open_source

    paths = sorted((shared_data / "sim" / "lyso-nanobragg" / "images").glob("lyso_00[1-4].img.bz2"))
    series, frames = open_source(paths, encoding="bslz4", pedestal=40)
    frames = list(frames)
    ctx = zmq.Context.instance()
    sender = DetectorSender(ctx, "tcp://127.0.0.1:*", fmt="v2")

    def send():  # the detector does not wait for the processor: ZeroMQ queues until it connects
        sender.send_start(series)
        for frame in frames:
            sender.send_frame(frame)
        sender.send_end()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        code = run_main(["--connect", sender.endpoint, "--once", "--out", str(tmp_path / "out"), "--workers", "1",
                         "--http", "127.0.0.1:0", "--result-stream", "off"])
    finally:
        thread.join(10)
        sender.close()
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == {"received": 4, "processed": 4, "dropped": {}}
    assert (tmp_path / "out" / "config.yaml").exists()


@pytest.mark.slow
def test_demo_command_streams_a_simulated_sweep_end_to_end(tmp_path, capsys):
    """`xtalstream demo`: simulator child process -> stream -> pipeline -> outputs, live progress."""
    from streamer.commands.demo import main as demo_main
    from streamer.spots_io import read_spots_csv

    out = tmp_path / "demo"
    assert demo_main(["--images", "6", "--out", str(out), "--http", "127.0.0.1:0", "--workers", "1",
                      "--result-stream", "tcp://127.0.0.1:*"]) == 0  # not the fixed default port
    printed = capsys.readouterr().out
    assert "dashboard: http://127.0.0.1:" in printed and "frames processed" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == {"received": 6, "processed": 6, "dropped": {}}
    rows = (out / "per_image.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(6))
    assert all(int(r.split(",")[2]) > 50 for r in rows)  # a simulated lysozyme pattern has spots
    spots = read_spots_csv(out / "spots.csv")
    assert len(spots["x_px"]) > 100 and spots["z_image"].min() >= 0 and spots["z_image"].max() < 6
    # 0.6 degrees may be too little to index: then that is the one warning, and the table shows it
    warned = [w["kind"] for w in summary["warnings"]]
    assert warned == ([] if summary["indexing"]["indexed"] else ["not_indexed"])
    assert ("warning: not_indexed" in printed) == bool(warned)
    report = (out / "report.html").read_text()
    assert report.count("<svg") == 5 and "Frames" in report


def test_demo_exits_when_the_simulator_fails(tmp_path, capsys):
    from streamer.commands.demo import main as demo_main

    code = demo_main(["--images", "3", "--preset", "no-such-crystal", "--out", str(tmp_path / "d"),
                      "--http", "off", "--workers", "1"])
    assert code != 0


def test_ctrl_c_while_finishing_stops_the_wait_not_the_run():
    """`run` after a first Ctrl-C waits for the workers' last results; a second one ends that
    wait (the outputs are then written) instead of a traceback from inside a lock, status 1."""
    import os
    import signal
    import threading
    import time

    from streamer.commands.run import _wait_unless_hurried

    from types import SimpleNamespace

    class NeverDone:  # a pipeline whose workers never answer
        hurried = False
        collector = SimpleNamespace(stages=SimpleNamespace(n_handled=0, depth=0, busy=False))

        def wait(self, timeout):
            time.sleep(timeout)
            return False

        def hurry(self):
            self.hurried = True

    previous = signal.getsignal(signal.SIGINT)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.monotonic()
    pipe = NeverDone()
    _wait_unless_hurried(pipe, 30.0)
    assert time.monotonic() - started < 12 and pipe.hurried
    assert signal.getsignal(signal.SIGINT) is previous



@pytest.mark.slow
def test_the_outputs_wait_for_sweep_stages_that_make_progress(tmp_path):
    """Indexing attempts on a large sweep may run for minutes after its last frame. The outputs
    were written after a fixed time (the result timeout + 60 s), whether the stages had finished
    or not: spots.csv and the indexing were missing, and nothing said so. Now the wait goes on
    while the stages make progress."""
    import functools
    import time

    from pipeline_fakes import CountingStage, make_frame, make_series
    from test_pipeline_e2e import ENV, fake_args

    from streamer.commands.run import _wait_unless_hurried, _write
    from streamer.pipeline import Pipeline
    from streamer.series import SeriesEnd

    slow = functools.partial(CountingStage, wait=lambda: time.sleep(0.1))
    with Pipeline(Config(), n_workers=1, live=False, stage_factories=[slow], worker_args=fake_args(),
                  worker_env=ENV) as pipe:
        s = make_series("slow", n_images=20)
        pipe.feed([s, *(make_frame(s, i, 3) for i in range(20)), SeriesEnd(s.series_id)])
        started = time.monotonic()
        _wait_unless_hurried(pipe, 0.5)  # 2 s of stage work: past the timeout
        assert time.monotonic() - started > 0.5
        assert pipe.collector.series["slow"].done
        summary = _write(pipe.collector, Config(), tmp_path)
    assert summary["stage_images"] == 20 and "stages_unfinished" not in [w["kind"] for w in summary["warnings"]]


@pytest.mark.slow
def test_outputs_written_before_the_stages_finished_say_so(tmp_path, monkeypatch):
    """A stage that stalls: the wait ends after STAGE_STALL_S without progress, and the outputs
    say that the stages did not finish (a warning; indexing "not finished"), not that no
    indexing stage ran."""
    import functools
    import threading
    import time

    from pipeline_fakes import CountingStage, make_frame, make_series
    from test_pipeline_e2e import ENV, fake_args

    import streamer.commands.run as run_module
    from streamer.pipeline import Pipeline
    from streamer.series import SeriesEnd

    monkeypatch.setattr(run_module, "STAGE_STALL_S", 1.0)
    release = threading.Event()
    stuck = functools.partial(CountingStage, wait=lambda: release.wait(60))
    try:
        with Pipeline(Config(), n_workers=1, live=False, stage_factories=[stuck], worker_args=fake_args(),
                      worker_env=ENV) as pipe:
            s = make_series("stuck", n_images=3)
            pipe.feed([s, *(make_frame(s, i, 3) for i in range(3)), SeriesEnd(s.series_id)])
            started = time.monotonic()
            run_module._wait_unless_hurried(pipe, 0.2)
            assert 1.0 < time.monotonic() - started < 30
            summary = run_module._write(pipe.collector, Config(), tmp_path)
            release.set()
    finally:
        release.set()
    assert summary["frames"] == {"received": 3, "processed": 3, "dropped": {}}
    assert summary["indexing"]["status"].startswith("not finished")
    assert "stages_unfinished" in [w["kind"] for w in summary["warnings"]]


@pytest.mark.slow
def test_hurried_run_closes_the_open_series_with_its_frames_lost():
    """A second Ctrl-C while a worker still holds a frame: the series closes at once with that
    frame counted as worker_lost, so the outputs written next hold it, balanced (before, it was
    left out: received 3, processed 2, dropped nothing, and no per_image rows)."""
    import os
    import signal
    import threading

    from pipeline_fakes import make_frame, make_series
    from test_pipeline_e2e import ENV, fake_args

    from streamer.commands.run import _wait_unless_hurried
    from streamer.pipeline import Pipeline

    with Pipeline(Config(), n_workers=1, live=True, worker_args=fake_args("StuckAnalyser"), worker_env=ENV,
                  result_timeout_s=120.0) as pipe:
        s = make_series("held", n_images=3)
        pipe.feed([s, *(make_frame(s, i, 3) for i in range(3))])  # no end of series: the feed just stops
        threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        _wait_unless_hurried(pipe, 120.0)
        state = pipe.collector.series["held"]
        assert state.closed
        assert state.tally.as_dict() == {"received": 3, "processed": 2, "dropped": {"worker_lost": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("axis", [(0, 1, 0), (-1, 0, 0)], ids=["vertical", "reversed"])
def test_process_indexes_a_sweep_about_another_axis(tmp_path, axis):
    """A sweep about a vertical or reversed axis (as at Diamond I24, or SPring-8), recorded with
    its NXmx chain: `process` indexes it with the header's axis and reports the truth's UB (in
    some basis of the same lattice)."""
    from streamer.commands.process import main as process_main
    from tools import simulate
    from tools.simulator.truth import load_truth

    master = tmp_path / "axis_master.h5"
    assert simulate.main(["--preset", "monoclinic", "--detector", "eiger2_1m", "--images", "30", "--oscillation",
                          "10", "0.2", "--rotation-axis", *map(str, axis), "--seed", "31", "--out", str(master)]) == 0
    out = tmp_path / "out"
    assert process_main([str(master), "--out", str(out), "--workers", "1", "--http", "off",
                         "--result-stream", "off"]) == 0
    indexing = json.loads((out / "summary.json").read_text())["indexing"]
    assert indexing["indexed"] and indexing["lattice"] == "mC", indexing.get("status")
    truth = load_truth(tmp_path / "axis_truth.h5").experiment
    assert truth.goniometer.rotation_axis == tuple(float(v) for v in axis)
    ub = np.array(indexing["UB"])
    change = np.rint(np.linalg.solve(truth.crystal.A_matrix, ub))
    assert abs(round(np.linalg.det(change))) == 1
    np.testing.assert_allclose(ub, truth.crystal.A_matrix @ change, atol=2e-4 * np.abs(ub).max())
