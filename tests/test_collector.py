"""The collector's ordering and accounting: every frame received ends processed or dropped with
a reason, results come out in frame order, lost frames are given up on time, never twice."""

from __future__ import annotations

import random

import numpy as np
import pytest
from pipeline_fakes import make_series

from streamer.collector import Collector
from streamer.metrics import Metrics
from streamer.pipeline_messages import FrameResult


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Recorder:
    """Stands in for the PUB socket: keeps what would be published."""

    def __init__(self):
        self.messages = []

    def publish(self, topic, payload):
        self.messages.append((topic, dict(payload)))

    def images(self):
        return [p for t, p in self.messages if t == "image"]


class JoinStage:
    def __init__(self, series):
        self.seen = []

    def add(self, series, result):
        self.seen.append(result.image_number)

    def finish(self):
        return {"spots_joined": len(self.seen)}


def ok(series_id, seq, image, n_spots=3):
    return FrameResult(series_id, seq, image, "w", 0.001, 0.002,
                       stats={"n_spots": n_spots, "estimated_d_min": 2.5, "ice_rings": 0},
                       spots={"x_px": np.arange(n_spots, dtype="<f4")})


def make(clock=None, **kw):
    pub = Recorder()
    c = Collector(Metrics(), pub, clock=clock or Clock(), **kw)
    return c, pub


def check_balance(c):
    t = c.total
    assert t.received == t.processed + sum(t.dropped.values())


def test_out_of_order_results_are_published_in_frame_order():
    c, pub = make(stage_factories=[JoinStage])
    s = make_series(n_images=50)
    c.series_start(s)
    for seq in range(50):
        c.dispatched(s.series_id, seq, seq, 100.0)
    order = list(range(50))
    random.Random(1).shuffle(order)
    for seq in order:
        c.result(ok(s.series_id, seq, seq))
    c.series_end(s.series_id, 50)
    assert [p["image"] for p in pub.images()] == list(range(50))
    assert c.wait_closed(1, 5)
    assert c.series[s.series_id].outputs == {"spots_joined": 50}
    assert c.total.as_dict() == {"received": 50, "processed": 50, "dropped": {}}
    assert [t for t, _ in pub.messages][0] == "series_start" and pub.messages[-1][0] == "series_end"
    assert pub.messages[-1][1]["frames"]["processed"] == 50


def test_receiver_and_worker_drops_are_counted_by_reason():
    c, pub = make()
    s = make_series()
    c.series_start(s)
    c.received_drop("corrupt_compression", s.series_id, 0)
    c.dispatched(s.series_id, 0, 1, 100.0)
    c.dispatched(s.series_id, 1, 2, 100.0)
    c.received_drop("malformed_message")  # not even a series id
    c.result(FrameResult(s.series_id, 1, 2, "w", drop_reason="empty_frame"))
    c.result(ok(s.series_id, 0, 1))
    c.series_end(s.series_id, 2)
    assert c.total.as_dict() == {"received": 4, "processed": 1,
                                 "dropped": {"corrupt_compression": 1, "empty_frame": 1, "malformed_message": 1}}
    assert c.series[s.series_id].tally.received == 3
    assert [(p["image"], p["dropped"]) for p in pub.images()] == [
        (0, "corrupt_compression"), (None, "malformed_message"), (1, None), (2, "empty_frame")]
    text = c.metrics.exposition().decode()
    assert 'xtal_frames_dropped_total{reason="empty_frame"} 1.0' in text
    assert "xtal_frames_received_total 4.0" in text


def test_frame_of_a_dead_worker_times_out_and_a_late_result_is_not_counted_twice():
    clock = Clock()
    c, pub = make(clock=clock, result_timeout_s=5.0)
    s = make_series()
    c.series_start(s)
    for seq in range(4):
        c.dispatched(s.series_id, seq, seq, clock.t)
    c.result(ok(s.series_id, 0, 0))
    c.result(ok(s.series_id, 2, 2))
    c.result(ok(s.series_id, 3, 3))
    c.tick()
    assert [p["image"] for p in pub.images()] == [0]  # 1 is still awaited
    clock.t += 5.1
    c.tick()
    assert [(p["image"], p["dropped"]) for p in pub.images()] == [(0, None), (1, "worker_lost"), (2, None), (3, None)]
    c.result(ok(s.series_id, 1, 1))  # the late one
    c.series_end(s.series_id, 4)
    assert c.total.as_dict() == {"received": 4, "processed": 3, "dropped": {"worker_lost": 1}}


def test_frames_queued_behind_a_slow_worker_are_not_lost():
    # `process` queues frames for as long as the workers take: 40 frames dispatched at once,
    # one result every 0.5 s, so the last waits 20 s, twice the timeout, and none is lost
    clock = Clock()
    c, pub = make(clock=clock, result_timeout_s=10.0, timeout_from_progress=True)
    s = make_series(n_images=40)
    c.series_start(s)
    for seq in range(40):
        c.dispatched(s.series_id, seq, seq, clock.t)
    for seq in range(40):
        clock.t += 0.5
        c.tick()
        c.result(ok(s.series_id, seq, seq))
    c.series_end(s.series_id, 40)
    assert c.total.as_dict() == {"received": 40, "processed": 40, "dropped": {}}
    # once the workers fall silent for the timeout, what is still out is lost
    s2 = make_series("s2", n_images=3)
    c.series_start(s2)
    for seq in range(3):
        c.dispatched(s2.series_id, seq, seq, clock.t)
    c.result(ok(s2.series_id, 0, 0))
    clock.t += 9.9
    c.tick()
    assert c.series[s2.series_id].tally.dropped == {}
    clock.t += 0.2
    c.tick()
    assert c.series[s2.series_id].tally.dropped == {"worker_lost": 2}


def test_recorded_frames_queued_behind_another_series_are_not_lost():
    # `process` of several series (or a replay into it): the frames of the second wait behind
    # the first's in the workers' queues, 20 s here, twice the timeout, with no result of their own
    clock = Clock()
    c, pub = make(clock=clock, result_timeout_s=10.0, timeout_from_progress=True)
    a, b = make_series("a", n_images=40), make_series("b", n_images=3)
    for s in (a, b):
        c.series_start(s)
        for seq in range(s.n_images):
            c.dispatched(s.series_id, seq, seq, clock.t)
    for seq in range(40):
        clock.t += 0.5
        c.tick()
        c.result(ok("a", seq, seq))
    for seq in range(3):
        c.result(ok("b", seq, seq))
    assert c.total.as_dict() == {"received": 43, "processed": 43, "dropped": {}}


def test_recorded_frames_are_overdue_from_their_dispatch_not_from_their_reading():
    # `process` reads a frame, then waits for the sweep stages (30 s here, the workers idle),
    # then hands it to the workers: it is not overdue at once, only 10 s (the timeout) later
    clock = Clock()
    c, pub = make(clock=clock, result_timeout_s=10.0, timeout_from_progress=True)
    s = make_series(n_images=1)
    c.series_start(s)
    read_at = clock.t
    clock.t += 30.0
    c.dispatched(s.series_id, 0, 0, read_at)
    c.tick()
    assert c.series[s.series_id].tally.dropped == {}
    clock.t += 10.5
    c.tick()
    assert c.series[s.series_id].tally.dropped == {"worker_lost": 1}


def test_no_frame_is_overdue_while_results_wait_unread():
    # the service expires frames only once it has read every result that came (`tick(expire)`):
    # after a pause of its loop, a result waiting in the socket is not a lost frame
    clock = Clock()
    c, pub = make(clock=clock, result_timeout_s=10.0)
    s = make_series(n_images=2)
    c.series_start(s)
    for seq in range(2):
        c.dispatched(s.series_id, seq, seq, clock.t)
    clock.t += 30.0
    c.tick(expire=False)
    c.series_end(s.series_id, 2)  # read before the results (the feed comes first): no expiry there either
    assert c.series[s.series_id].tally.dropped == {}
    c.result(ok(s.series_id, 0, 0))
    c.tick()
    assert c.series[s.series_id].tally.dropped == {"worker_lost": 1}


def test_live_frames_time_out_from_their_dispatch_whatever_else_returns():
    clock = Clock()
    c, pub = make(clock=clock, result_timeout_s=10.0)
    s = make_series(n_images=30)
    c.series_start(s)
    t0 = clock.t
    c.dispatched(s.series_id, 0, 0, t0)  # its worker is silent; the others go on
    for seq in range(1, 30):
        clock.t += 0.5
        c.dispatched(s.series_id, seq, seq, clock.t)
        c.result(ok(s.series_id, seq, seq))
        c.tick()
        assert [p["image"] for p in pub.images()] == ([] if clock.t - t0 <= 10.0 else list(range(seq + 1)))
    assert c.series[s.series_id].tally.dropped == {"worker_lost": 1}


def test_full_reorder_buffer_gives_up_the_missing_frame():
    c, pub = make(reorder_bound=8)
    s = make_series(n_images=30)
    c.series_start(s)
    for seq in range(30):
        c.dispatched(s.series_id, seq, seq, 100.0)
    for seq in range(1, 10):
        c.result(ok(s.series_id, seq, seq))
    # 9 buffered > bound 8: frame 0 is given up and everything buffered flows out
    assert [p["image"] for p in pub.images()] == list(range(10))
    assert c.total.dropped == {"worker_lost": 1}
    assert len(c.series[s.series_id].buffer) == 0


def test_missing_end_of_series_and_shutdown_account_for_every_frame():
    c, pub = make()
    s = make_series()
    c.series_start(s)
    for seq in range(5):
        c.dispatched(s.series_id, seq, seq, 100.0)
    for seq in (0, 1, 3):
        c.result(ok(s.series_id, seq, seq))
    c.finish()  # no end-of-series ever came; frames 2 and 4 never returned
    state = c.series[s.series_id]
    assert state.closed and state.how_ended == "missing_end_of_series"
    assert c.total.as_dict() == {"received": 5, "processed": 3, "dropped": {"worker_lost": 2}}
    assert pub.messages[-1] == ("series_end", {"series_id": s.series_id, "how": "missing_end_of_series",
                                               "frames": c.total.as_dict()})
    check_balance(c)


def test_result_for_unknown_series_is_ignored():
    c, pub = make()
    c.result(ok("nope", 0, 0))
    assert c.total.received == 0 and pub.images() == []


@pytest.mark.parametrize("seed", range(5))
def test_random_interleavings_keep_the_books_balanced(seed):
    rng = random.Random(seed)
    clock = Clock()
    c, pub = make(clock=clock, result_timeout_s=3.0, reorder_bound=5)
    s = make_series(n_images=60)
    c.series_start(s)
    outstanding = []
    for seq in range(60):
        if rng.random() < 0.1:
            c.received_drop("overload", s.series_id, 1000 + seq)
        c.dispatched(s.series_id, seq, seq, clock.t)
        outstanding.append(seq)
        rng.shuffle(outstanding)
        while outstanding and rng.random() < 0.6:
            k = outstanding.pop()
            if rng.random() < 0.05:
                continue  # lost with its worker
            c.result(ok(s.series_id, k, k) if rng.random() < 0.9 else
                     FrameResult(s.series_id, k, k, "w", drop_reason="bad_frame"))
        clock.t += rng.random()
        c.tick()
    for k in outstanding:
        c.result(ok(s.series_id, k, k))
    c.series_end(s.series_id, 60)
    clock.t += 10
    c.tick()
    state = c.series[s.series_id]
    assert state.closed
    check_balance(c)
    images = [p["image"] for p in pub.images() if p["image"] < 1000]
    assert images == list(range(60))  # each dispatched frame published exactly once, in order


def test_tick_updates_the_queue_gauges_and_forgets_closed_series():
    c, _ = make()

    def depths():
        return tuple(c.metrics.registry.get_sample_value("xtal_queue_depth", {"queue": q})
                     for q in ("in_flight", "reorder"))

    for name in ("a", "b"):
        c.series_start(make_series(series_id=name))
        for seq in range(3):
            c.dispatched(name, seq, seq, c.clock())
    c.result(ok("a", 1, 1))  # waits for 0 in the reorder buffer
    c.tick()
    assert depths() == (6, 1)
    for seq in (0, 2):
        c.result(ok("a", seq, seq))
    c.series_end("a", 3)
    c.tick()
    assert list(c.open) == ["b"] and c.series["a"].closed
    assert depths() == (3, 0)


def test_headers_of_closed_series_are_forgotten_but_the_latest_few():
    """The collector service kept every series' header (with its pixel mask: 18 MB for a 4M
    detector) for the whole run; it now keeps those of open series and of the latest closed."""
    from streamer.collector_service import CollectorService

    service = CollectorService.__new__(CollectorService)  # the pruning alone, without sockets
    service.collector, _ = make()
    for sid in ("a", "b", "c", "d"):
        service.collector.series_start(make_series(sid, n_images=1))
    service.headers = {sid: [b"header"] for sid in ("a", "b", "c", "d")}
    for sid in ("a", "b", "c"):
        service.collector.series_end(sid, 0)
    service._forget_closed_headers(keep=2)
    assert list(service.headers) == ["b", "c", "d"]  # d is still open
