"""A real pipeline: worker processes started as `xtalstream worker`, the collector, the result
stream, over ipc:// and loopback sockets. Every frame is accounted (received = processed +
dropped), with bad frames, a missing end-of-series and a worker killed mid-series."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq
from pipeline_fakes import CountingStage, make_frame, make_series

from streamer import codecs
from streamer.config import Config
from streamer.pipeline import Pipeline
from streamer.result_stream import read_message
from streamer.series import Dropped, EncodedFrame, SeriesEnd
from streamer.summary import per_image_rows

TESTS = str(Path(__file__).resolve().parent)
ENV = {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}


def fake_args(analyser="CountingAnalyser"):
    return ["--analyser", f"pipeline_fakes:{analyser}"]


def balanced(frames):
    return frames["received"] == frames["processed"] + sum(frames["dropped"].values())


def compressed(frame: EncodedFrame) -> EncodedFrame:
    image = np.frombuffer(frame.data, "<u2").reshape(frame.shape)
    return EncodedFrame(frame.series_id, frame.image_number, frame.shape, "<u2", "bslz4", codecs.encode(image, "bslz4"))


class Subscriber:
    """Collects the result stream in a thread until a message of topic `until`."""

    def __init__(self, ctx, url, until="series_end"):
        self.until = until
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.setsockopt(zmq.LINGER, 0)
        monitor = self.sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        self.sock.connect(url)
        self.connected = threading.Event()
        if monitor.poll(10000):
            monitor.recv_multipart()
            self.connected.set()
        self.sock.disable_monitor()
        monitor.close(0)
        self.messages = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            if self.sock.poll(100):
                topic, payload = read_message(self.sock.recv_multipart())
                self.messages.append((topic, payload))
                if topic == self.until:
                    self.done.set()
        self.sock.close()


@pytest.mark.slow
def test_recorded_frames_with_bad_input_all_accounted_and_published_in_order(tmp_path):
    config = Config()
    ctx = zmq.Context.instance()
    stream_url = f"ipc://{tmp_path}/results"
    with Pipeline(config, n_workers=2, live=False, worker_args=fake_args(), worker_env=ENV,
                  result_stream=stream_url) as pipe:
        sub = Subscriber(ctx, pipe.publisher.url)
        assert sub.connected.wait(10)
        s = make_series(n_images=30)
        events = [s]
        truth = {}
        for i in range(30):
            frame = compressed(make_frame(s, i, n_hot=i % 9))
            if i == 7:
                frame = EncodedFrame(s.series_id, i, s.image_shape, "<u2", "bslz4", bytes(frame.data)[:30])
            elif i == 11:
                frame = EncodedFrame(s.series_id, i, (10, 10), "<u2", "raw", b"\x01\x00" * 100)  # wrong shape
            else:
                truth[i] = i % 9
            events.append(frame)
            if i == 20:
                events.append(Dropped("malformed_message", "part count 3, expected 4", s.series_id, None))
        events.append(SeriesEnd(s.series_id))
        pipe.feed(events)
        assert pipe.wait(60)
        frames = pipe.collector.total.as_dict()
        state = pipe.collector.series[s.series_id]
        results = state.results
        sub.done.wait(10)
    assert frames["received"] == 31 and balanced(frames)
    assert frames["processed"] == 28
    rows = per_image_rows(s, results, state.dropped_images)  # one per image, the dropped ones blank
    assert [row["image"] for row in rows] == list(range(30))
    assert [row["image"] for row in rows if row.get("n_spots") is None] == [7, 11]
    assert frames["dropped"] == {"malformed_message": 1, "wrong_shape": 1, "corrupt_compression": 1}
    assert {r.image_number: r.stats["n_spots"] for r in results} == truth
    images = [p for t, p in sub.messages if t == "image" and p["image"] is not None]
    assert [p["image"] for p in images] == list(range(30))
    assert sub.messages[-1][0] == "series_end" and sub.messages[-1][1]["frames"] == frames


@pytest.mark.slow
def test_run_session_writes_summary_per_image_and_config(tmp_path):
    from streamer.commands.run import run_session

    config = Config().model_copy(update={"output": Config().output.model_copy(update={"http": "127.0.0.1:0",
                                                                                      "result_stream": None})})
    s = make_series(n_images=8)

    def events():
        yield s
        for i in range(8):
            yield make_frame(s, i, i)
        yield SeriesEnd(s.series_id, "idle_timeout")  # the receiver gave up waiting for the end

    summary = run_session(config, events, tmp_path / "out", live=True, once=True, progress=False,
                          worker_args=fake_args(), worker_env=ENV)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written == summary
    assert written["frames"] == {"received": 8, "processed": 8, "dropped": {}}
    assert written["indexing"]["indexed"] is False
    assert written["indexing"]["status"].startswith("not indexed: ")  # fake spots: nothing to index; final
    lines = (tmp_path / "out" / "per_image.csv").read_text().splitlines()
    assert lines[0].startswith("image,phi,n_spots,") and len(lines) == 9
    assert [int(line.split(",")[2]) for line in lines[1:]] == list(range(8))
    assert "schema_version: 1" in (tmp_path / "out" / "config.yaml").read_text()


@pytest.mark.slow
def test_a_run_of_series_after_series_keeps_each_series_outputs(tmp_path):
    """`run` without --once (series after series at a beamline): each series' outputs go to its
    own folder with its own accounting, the top holds the latest; before, each series' files
    replaced the last one's, so per_image.csv kept 8 rows next to a run total of 14 frames."""
    from streamer.commands.run import run_session, series_folder

    config = live_config()
    a, b = make_series("1", n_images=6), make_series("scan/2", n_images=8)

    def events():
        for s, hot in ((a, 1), (b, 2)):
            yield s
            yield from (make_frame(s, i, hot) for i in range(s.n_images))
            yield SeriesEnd(s.series_id)

    pipes = []
    run_session(config, events, tmp_path / "out", live=True, once=False, progress=False, worker_args=fake_args(),
                worker_env=ENV, on_ready=pipes.append)
    out = tmp_path / "out"
    assert series_folder("scan/2") == "series_scan_2"
    # written, the older series is forgotten but for its accounting (memory does not grow per sweep)
    older, latest = (pipes[0].collector.series[s.series_id] for s in (a, b))
    assert older.released and not older.results and older.series.pixel_mask is None and not older.stages
    assert not latest.released and len(latest.results) == 8
    for s, hot in ((a, 1), (b, 2)):
        folder = out / series_folder(s.series_id)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["frames"] == {"received": s.n_images, "processed": s.n_images, "dropped": {}}
        rows = (folder / "per_image.csv").read_text().splitlines()[1:]
        assert [int(r.split(",")[2]) for r in rows] == [hot] * s.n_images
        assert (folder / "report.html").exists()
    top = json.loads((out / "summary.json").read_text())
    assert top["frames"] == {"received": 14, "processed": 14, "dropped": {}}  # the run's
    assert len((out / "per_image.csv").read_text().splitlines()) == 9  # the latest series'


@pytest.mark.slow
def test_run_once_returns_at_the_end_of_a_series_joined_too_late(tmp_path):
    """`run --once` started after the detector sent its series start (a restart mid-collection):
    the frames are dropped as no_series, and its end of series ends the run as any end does."""
    from streamer.commands.run import run_session

    def events():
        for i in range(3):
            yield Dropped("no_series", f"image {i} of series s9 that never started", "s9", i)
        yield Dropped("no_series", "end of series s9 that never started", "s9")
        raise AssertionError("--once read past the end of the series")

    summary = run_session(live_config(), events, tmp_path / "out", live=True, once=True, progress=False,
                          worker_args=fake_args(), worker_env=ENV)
    assert summary["frames"] == {"received": 3, "processed": 0, "dropped": {"no_series": 3}}
    assert (tmp_path / "out" / "summary.json").exists()


@pytest.mark.slow
def test_run_once_is_not_ended_by_a_stray_end_of_another_series(tmp_path):
    """An end of series for an id never started, while a series is open (not a frame: logged by
    the receiver), and the open series goes on to its own end (before, `--once` stopped there
    and lost the rest)."""
    from streamer.commands.run import run_session

    s = make_series("7", n_images=5)

    def events():
        yield s
        yield from (make_frame(s, i, 1) for i in range(2))
        yield Dropped("no_series", "end of series 99 that never started", "99")
        yield from (make_frame(s, i, 1) for i in range(2, 5))
        yield SeriesEnd("7")
        raise AssertionError("--once read past the end of the series")

    summary = run_session(live_config(), events, tmp_path / "out", live=True, once=True, progress=False,
                          worker_args=fake_args(), worker_env=ENV)
    assert summary["frames"] == {"received": 5, "processed": 5, "dropped": {}}


def live_config(idle_timeout_s=30.0):
    c = Config()
    return c.model_copy(update={
        "output": c.output.model_copy(update={"http": None, "result_stream": None}),
        "receiver": c.receiver.model_copy(update={"idle_timeout_s": idle_timeout_s}),
        "fanout": c.fanout.model_copy(update={"workers": 2}),
    })


def free_ports(n):
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.slow
def test_extra_worker_joins_over_tcp_with_one_url(tmp_path):
    import subprocess
    import sys

    control, frames, results, model = free_ports(4)
    c = Config()
    config = c.model_copy(update={"fanout": c.fanout.model_copy(update={
        "control_port": control, "frame_port": frames, "result_port": results, "model_port": model})})
    with Pipeline(config, n_workers=1, live=False, worker_args=fake_args("SlowCountingAnalyser"),
                  worker_env=ENV) as pipe:
        assert pipe.control_url == f"tcp://127.0.0.1:{control}"
        extra = subprocess.Popen([sys.executable, "-m", "streamer.cli", "worker", "--connect", pipe.control_url,
                                  "--name", "remote-1", *fake_args("SlowCountingAnalyser")],
                                 env={**os.environ, **ENV}, stdin=subprocess.DEVNULL)
        try:
            assert pipe.service.wait_workers(2, 60)
            s = make_series(n_images=40)
            pipe.feed([s] + [make_frame(s, i, 1) for i in range(40)] + [SeriesEnd(s.series_id)])
            assert pipe.wait(60)
            results = pipe.collector.series[s.series_id].results
        finally:
            extra.send_signal(signal.SIGTERM)
            assert extra.wait(20) == 0
    assert len(results) == 40
    by_worker = {r.worker for r in results}
    assert "remote-1" in by_worker and len(by_worker) == 2


def test_frame_store_is_bounded_and_keeps_the_newest():
    from streamer.pipeline import FrameStore

    store = FrameStore(max_bytes=1000)
    for i in range(10):
        store.add(EncodedFrame("s", i, (10, 10), "<u1", "raw", bytes(300)))
    assert store.nbytes <= 1000 and sorted(k[1] for k in store.frames) == [7, 8, 9]
    assert store.get("s", 9) is not None and store.get("s", 0) is None
    store.add(EncodedFrame("s", 99, (100, 100), "<u1", "raw", bytes(10000)))  # larger than the bound
    assert store.get("s", 99) is None


@pytest.mark.slow
def test_repeated_series_id_and_a_start_before_the_end(tmp_path):
    """A detector that restarts its series numbering, and a series cut short by the next start."""
    with Pipeline(Config(), n_workers=1, live=False, worker_args=fake_args(), worker_env=ENV) as pipe:
        a = make_series("7", n_images=5)
        b = make_series("8", n_images=5)
        events = [a] + [make_frame(a, i, 1) for i in range(5)]  # no end: b starts
        events += [b] + [make_frame(b, i, 2) for i in range(5)] + [SeriesEnd("8")]
        events += [a] + [make_frame(a, i, 3) for i in range(5)] + [SeriesEnd("7")]  # "7" again
        events += [a] + [make_frame(a, i, 4) for i in range(5)] + [SeriesEnd("7")]  # and again
        pipe.feed(events)
        assert pipe.wait(60)
        c = pipe.collector
        assert c.total.as_dict() == {"received": 20, "processed": 20, "dropped": {}}
        assert [(sid, c.series[sid].how_ended) for sid in c.order] == [
            ("7", "missing_end_of_series"), ("8", "end"), ("7~1", "end"), ("7~2", "end")]
        assert [r.stats["n_spots"] for r in c.series["7~1"].results] == [3] * 5
        assert [r.stats["n_spots"] for r in c.series["7~2"].results] == [4] * 5


class _ModelAtTheEnd:
    """A sweep stage whose only model comes when its series ends (a short sweep's one attempt)."""

    def __init__(self, series):
        self.pending = None

    def add(self, series, result):
        pass

    def take_model(self):
        model, self.pending = self.pending, None
        return model

    def finish(self):
        self.pending = {"indexed": True, "lattice": "tP"}
        return {"indexing": self.pending}


@pytest.mark.slow
def test_a_model_made_as_the_series_ends_is_published(tmp_path):
    """The last model of a series is made after its end (the final refinement, or a short
    sweep's only attempt): it is published on the result stream before the run stops."""
    url = f"ipc://{tmp_path / 'results.ipc'}"
    with Pipeline(Config(), n_workers=1, live=False, worker_args=fake_args(), worker_env=ENV, result_stream=url,
                  stage_factories=[_ModelAtTheEnd]) as pipe:
        sub = Subscriber(pipe.ctx, url, until="indexing")
        assert sub.connected.is_set()
        s = make_series("m", n_images=3)
        pipe.feed([s] + [make_frame(s, i, 1) for i in range(3)] + [SeriesEnd("m")])
        assert pipe.wait(60)
        assert sub.done.wait(10)
    topics = [t for t, _ in sub.messages]
    assert topics[-2:] == ["series_end", "indexing"]
    assert sub.messages[-1][1]["indexing"] == {"indexed": True, "lattice": "tP"}


@pytest.mark.slow
def test_an_image_number_sent_twice_is_dropped_once_and_counted(tmp_path):
    """A frame whose image number came before in its series: counted as duplicate_image, the
    first one analysed; per_image.csv keeps one row per image (it had two)."""
    with Pipeline(Config(), n_workers=1, live=False, worker_args=fake_args(), worker_env=ENV) as pipe:
        s = make_series("d", n_images=4)
        pipe.feed([s] + [make_frame(s, i, 2) for i in (0, 1, 1, 2, 3, 3)] + [SeriesEnd("d")])
        assert pipe.wait(60)
        state = pipe.collector.series["d"]
        frames = state.tally.as_dict()
    assert frames == {"received": 6, "processed": 4, "dropped": {"duplicate_image": 2}}
    rows = per_image_rows(s, state.results, state.dropped_images)
    assert [row["image"] for row in rows] == [0, 1, 2, 3]
    assert [row["n_spots"] for row in rows if row.get("n_spots") is not None] == [2, 2, 2, 2]




def test_the_sensor_tables_load_before_the_first_series(monkeypatch):
    """The main process's sweep stages build each series' geometry with the sensor's attenuation
    (xraydb, 0.5 s to load): loaded while the workers start, not while the first frames arrive."""
    import streamer.sensor

    calls = []
    monkeypatch.setattr(streamer.sensor, "attenuation_coefficient_per_mm", lambda *args: calls.append(args) or 0.0)
    with Pipeline(Config(), n_workers=1, live=False, worker_args=fake_args(), worker_env=ENV):
        assert calls == [("Si", 1.0)]


@pytest.mark.slow
def test_recorded_data_waiting_for_a_slow_sweep_stage_lose_no_frame(monkeypatch):
    """Recorded data wait for the sweep stages (nothing skipped): the source waits while their
    queue is full, not the collector, which goes on answering the workers; and a series' frames
    waiting behind another's are not overdue (each stage item takes twice the result timeout)."""
    import time

    import streamer.collector as collector_module
    from streamer.sweep_stages import SweepStageThread

    slow = functools.partial(CountingStage, wait=lambda: time.sleep(0.6))

    class Bounded(SweepStageThread):
        def __init__(self, metrics, lock, on_closed, queue_bound=2000, skip=True):
            super().__init__(metrics, lock, on_closed, 3, skip)

    monkeypatch.setattr(collector_module, "SweepStageThread", Bounded)
    with Pipeline(Config(), n_workers=1, live=False, stage_factories=[slow], worker_args=fake_args(),
                  worker_env=ENV, result_timeout_s=0.3) as pipe:
        events = []
        for name in "abc":  # the next series' frames wait for their results behind the stage
            s = make_series(name, n_images=6)
            events += [s] + [make_frame(s, i, 1) for i in range(6)] + [SeriesEnd(s.series_id)]
        pipe.feed(events)
        assert pipe.wait(60)
        c = pipe.collector
        assert c.total.as_dict() == {"received": 18, "processed": 18, "dropped": {}}
        assert [c.series[name].outputs["stage_images"] for name in "abc"] == [6, 6, 6] and c.n_stage_skipped == 0
