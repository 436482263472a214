"""The pipeline when workers die: frames a killed worker held are given up (live: as soon as a
surviving worker passes them), no live worker means frames are dropped at once, and recorded
data never wait for ever. Every frame is accounted for."""

from __future__ import annotations

import inspect
import signal
import socket
import threading
import time

import pytest
from pipeline_fakes import make_frame, make_series
from test_pipeline_e2e import ENV, balanced, fake_args

from streamer.config import Config, FanoutConfig
from streamer.pipeline import Pipeline
from streamer.series import SeriesEnd
from streamer.worker import Worker


def wait_processed(pipe: Pipeline, n: int, timeout_s: float = 30.0) -> None:
    """Until `n` frames have been processed: the workers are busy with the series."""
    deadline = time.monotonic() + timeout_s
    while pipe.collector.total.processed < n:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.slow
def test_killed_worker_and_missing_end_of_series(tmp_path):
    config = Config()
    with Pipeline(config, n_workers=2, live=False, worker_args=fake_args("SlowCountingAnalyser"), worker_env=ENV,
                  result_timeout_s=1.5) as pipe:
        s = make_series(n_images=40)
        events = [s] + [make_frame(s, i, 3) for i in range(40)]  # and no SeriesEnd: the source just stops
        feeder = threading.Thread(target=pipe.feed, args=(events,))
        feeder.start()
        wait_processed(pipe, 4)
        pipe.processes[0].send_signal(signal.SIGKILL)
        feeder.join(60)
        assert pipe.wait(60)
        state = pipe.collector.series[s.series_id]
        frames = pipe.collector.total.as_dict()
    assert frames["received"] == 40 and balanced(frames)
    assert frames["dropped"].get("worker_lost", 0) >= 1, frames
    assert set(frames["dropped"]) == {"worker_lost"}
    assert state.closed and state.how_ended == "missing_end_of_series"


@pytest.mark.slow
def test_live_frames_of_a_killed_worker_go_once_the_survivor_passes_them(tmp_path, caplog):
    """Live, a worker killed mid-series: its exit is noticed and logged, and the frames in its
    queue are given up as soon as the surviving worker returns later ones, long before the
    result timeout (60 s here); every frame is accounted for."""
    with Pipeline(Config(), n_workers=2, live=True, worker_args=fake_args("SlowCountingAnalyser"), worker_env=ENV,
                  result_timeout_s=60.0) as pipe:
        s = make_series(n_images=40)
        pipe.feed([s] + [make_frame(s, i, 3) for i in range(20)], last=False)
        wait_processed(pipe, 4)
        pipe.processes[0].send_signal(signal.SIGKILL)
        pipe.processes[0].wait(10)
        killed = time.monotonic()
        time.sleep(0.5)  # the survivor alone takes what comes next
        pipe.feed([make_frame(s, i, 3) for i in range(20, 40)] + [SeriesEnd(s.series_id)])
        assert pipe.collector.wait_closed(1, 30)
        waited = time.monotonic() - killed
        frames = pipe.collector.total.as_dict()
    assert frames["received"] == 40 and balanced(frames)
    assert frames["dropped"].get("worker_lost", 0) >= 1 and set(frames["dropped"]) == {"worker_lost"}, frames
    assert waited < 20.0
    assert any("exited with status" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_live_frames_of_a_silent_worker_go_once_it_is_given_up(tmp_path, caplog):
    """A worker on another host can vanish without its connection closing (power, network) and
    no parent sees it exit. Here a local worker is stopped (SIGSTOP), which the pipeline's
    process watch does not see either. Not heard from for fanout.worker_silence_s (3 s here),
    it is given up: the frames in its queue go as worker_lost long before the result timeout
    (60 s), the survivor takes the rest. Resumed, it is heard again and takes frames again."""
    config = Config(fanout=FanoutConfig(worker_silence_s=3.0))
    with Pipeline(config, n_workers=2, live=True, worker_args=fake_args("SlowCountingAnalyser"), worker_env=ENV,
                  result_timeout_s=60.0) as pipe:
        victim = pipe.processes[0]
        name = f"{socket.gethostname()}:{victim.pid}"
        s = make_series(n_images=40)
        pipe.feed([s] + [make_frame(s, i, 3) for i in range(20)], last=False)
        wait_processed(pipe, 4)
        victim.send_signal(signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            pipe.feed([make_frame(s, i, 3) for i in range(20, 40)] + [SeriesEnd(s.series_id)], last=False)
            assert pipe.collector.wait_closed(1, 30)
            waited = time.monotonic() - stopped
            frames = pipe.collector.total.as_dict()
            assert pipe.collector.roster.silent == {name}
        finally:
            victim.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 10
        while name not in pipe.collector.roster.joined:
            assert time.monotonic() < deadline, "the resumed worker was not taken back"
            time.sleep(0.05)
        again = make_series("again", n_images=10)
        pipe.feed([again] + [make_frame(again, i, 3) for i in range(10)] + [SeriesEnd("again")], last=False)
        assert pipe.collector.wait_closed(2, 30)
        second = pipe.collector.series["again"]
        lost = pipe.metrics.workers_lost.labels(how="silent")._value.get()
    assert frames["received"] == 40 and balanced(frames)
    assert frames["dropped"].get("worker_lost", 0) >= 1 and set(frames["dropped"]) == {"worker_lost"}, frames
    assert waited < 20.0
    assert second.tally.as_dict() == {"received": 10, "processed": 10, "dropped": {}}
    assert len(second.worker_seq) == 2  # both workers took frames of it
    assert lost == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("no word from worker" in m for m in messages) and any("heard from again" in m for m in messages)


@pytest.mark.slow
def test_a_hung_worker_loses_at_most_its_credit(tmp_path):
    """A worker stopped (SIGSTOP) for longer than fanout.worker_silence_s while live frames come
    at 40 Hz: it is given up, and it lost only the frames it had granted credit for (its queue
    depth), not every frame the fan-out kept sending it (160 of 400 with round-robin PUSH, as
    by-reference messages that socket buffers absorb). Resumed, it takes frames again."""
    credit = inspect.signature(Worker).parameters["rcvhwm"].default
    config = Config(fanout=FanoutConfig(worker_silence_s=2.0))  # the least it may be
    with Pipeline(config, n_workers=2, live=True, worker_args=fake_args(), worker_env=ENV,
                  result_timeout_s=60.0) as pipe:
        victim = pipe.processes[0]
        name = f"{socket.gethostname()}:{victim.pid}"
        s = make_series(n_images=200)
        pipe.feed([s], last=False)
        stopped: list[float] = []

        def frames():
            for i in range(200):
                if i == 20:
                    victim.send_signal(signal.SIGSTOP)
                    stopped.append(time.monotonic())
                elif len(stopped) == 1 and time.monotonic() - stopped[0] > 3.0:  # given up by now
                    assert name in pipe.collector.roster.silent
                    victim.send_signal(signal.SIGCONT)
                    stopped.append(time.monotonic())
                yield make_frame(s, i, 3)
                time.sleep(0.025)
            yield SeriesEnd(s.series_id)

        try:
            pipe.feed(frames(), last=False)
        finally:
            victim.send_signal(signal.SIGCONT)
        assert pipe.collector.wait_closed(1, 30)
        frames_seen = pipe.collector.total.as_dict()
        state = pipe.collector.series[s.series_id]
    assert len(stopped) == 2
    assert frames_seen["received"] == 200 and balanced(frames_seen)
    assert set(frames_seen["dropped"]) <= {"worker_lost"}, frames_seen
    assert 1 <= frames_seen["dropped"].get("worker_lost", 0) <= credit, frames_seen
    assert name in state.worker_seq and state.worker_seq[name] > 150  # resumed, it took frames again


@pytest.mark.slow
def test_live_frames_with_no_worker_alive_are_dropped_at_once(tmp_path, caplog):
    """Live, the only worker killed: its exit is logged as an error, and each later frame is
    dropped as no_worker at once, not after waiting overload_wait_s (1 s) for a free worker,
    which put the receiver a second per frame behind the detector."""
    with Pipeline(Config(), n_workers=1, live=True, worker_args=fake_args(), worker_env=ENV) as pipe:
        pipe.processes[0].send_signal(signal.SIGKILL)
        pipe.processes[0].wait(10)
        deadline = time.monotonic() + 10
        while pipe.collector.roster.joined:
            assert time.monotonic() < deadline, "the exit was not noticed"
            time.sleep(0.05)
        s = make_series(n_images=100)
        t0 = time.monotonic()
        pipe.feed([s] + [make_frame(s, i, 3) for i in range(100)] + [SeriesEnd(s.series_id)])
        fed = time.monotonic() - t0
        assert pipe.collector.wait_closed(1, 30)
        frames = pipe.collector.total.as_dict()
    assert frames["received"] == 100 and balanced(frames)
    assert frames["dropped"].get("no_worker", 0) >= 90 and frames["processed"] == 0
    assert fed < 10.0  # the first frames may still fill the dead worker's pipe; then no waiting
    assert any(r.levelname == "ERROR" and "no worker left" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_recorded_data_does_not_hang_when_every_worker_died(tmp_path):
    with Pipeline(Config(), n_workers=1, live=False, worker_args=fake_args(), worker_env=ENV) as pipe:
        pipe.processes[0].send_signal(signal.SIGKILL)
        pipe.processes[0].wait(10)
        s = make_series(n_images=200)
        with pytest.raises(RuntimeError, match="worker processes exited"):
            pipe.feed([s] + [make_frame(s, i, 1) for i in range(200)])
        assert pipe.wait(60)  # the collector still closes the books
        frames = pipe.collector.total.as_dict()
    assert balanced(frames) and frames["dropped"].get("worker_lost", 0) == frames["received"]


@pytest.mark.slow
def test_live_last_frames_of_a_killed_worker_go_once_the_survivor_is_idle(tmp_path):
    """The frames a killed worker held at the very end of a series: no later frame passes them,
    so they waited the whole result timeout (60 s here) before the series could close. The
    survivor now says when it is idle, and they are given up about a second after that. (The
    victim is the worker the fan-out sent the series' last frame.)"""
    with Pipeline(Config(), n_workers=2, live=True, worker_args=fake_args("SlowCountingAnalyser"), worker_env=ENV,
                  result_timeout_s=60.0) as pipe:
        s = make_series(n_images=40)
        pipe.feed([s] + [make_frame(s, i, 3) for i in range(40)] + [SeriesEnd(s.series_id)], last=False)
        # every frame is dispatched when feed returns; the last went to the worker whose credit was
        # used last, and it holds it behind at most 3 others (30 ms each): stopped at once
        routing_id = max(pipe.fanout.last_sent, key=pipe.fanout.last_sent.get).decode()
        victim = next(p for p in pipe.processes if routing_id.rsplit("/", 1)[0].endswith(f":{p.pid}"))
        victim.send_signal(signal.SIGSTOP)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed = time.monotonic()
        assert pipe.collector.wait_closed(1, 30)
        state = pipe.collector.series[s.series_id]
        waited = time.monotonic() - killed
        frames = pipe.collector.total.as_dict()
    assert frames["received"] == 40 and balanced(frames)
    assert 39 in state.dropped_images and set(frames["dropped"]) == {"worker_lost"}, frames
    assert waited < 10.0


@pytest.mark.slow
def test_a_worker_setting_up_a_series_is_not_idle(tmp_path):
    """After a worker died, the next series' frames reach the survivors while they set that
    series up (seconds): they must not say they are idle then, or the collector gives up
    frames still in their queues (all 6 were dropped as worker_lost, their results ignored)."""
    with Pipeline(Config(), n_workers=3, live=True, worker_args=fake_args("SlowSetUpAnalyser"), worker_env=ENV,
                  result_timeout_s=60.0) as pipe:
        first = make_series("first", n_images=6)
        pipe.feed([first] + [make_frame(first, i, 3) for i in range(6)] + [SeriesEnd("first")], last=False)
        assert pipe.collector.wait_closed(1, 30)
        victim = pipe.processes[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        deadline = time.monotonic() + 10
        while not pipe.collector.roster.gone and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pipe.collector.roster.gone
        slow = make_series("slow", n_images=6)
        pipe.feed([slow], last=False)
        time.sleep(0.3)  # armed, then triggered
        pipe.feed([make_frame(slow, i, 3) for i in range(6)] + [SeriesEnd("slow")], last=False)
        assert pipe.collector.wait_closed(2, 90)
        assert pipe.collector.series["slow"].tally.as_dict() == {"received": 6, "processed": 6, "dropped": {}}
