"""Workers the collector can no longer count on: the frames in the queue of one that exited are
given up once the living have passed them or said they are idle; one that falls silent (a
remote host that vanished, a stopped process) is given up as if it had exited, and taken back
when heard from again; a heartbeat keeps a busy worker in."""

from __future__ import annotations

import threading
import time

import zmq
from pipeline_fakes import make_series
from test_collector import Clock, check_balance, make

from streamer import wire
from streamer.pipeline_messages import FrameResult
from streamer.worker_roster import HEARTBEAT_S, WorkerRoster, send_heartbeats


def series_out_with(workers, n_images, clock=None, end=True, **collector_options):
    """A collector with `workers` joined and a series of `n_images` frames all dispatched (and,
    with `end`, its end reported): (collector, publisher, series)."""
    c, pub = make(clock=clock, **collector_options)
    s = make_series(n_images=n_images)
    c.series_start(s)
    for name in workers:
        c.worker_joined(name)
    for seq in range(n_images):
        c.dispatched(s.series_id, seq, seq, c.clock())
    if end:
        c.series_end(s.series_id, n_images)
    return c, pub, s


def test_a_worker_not_heard_from_for_the_silence_is_given_up_once():
    clock = Clock()
    roster = WorkerRoster(silence_s=5.0, clock=clock)
    roster.joined_now("a")
    roster.joined_now("b")
    clock.t += 4.0
    roster.alive_notice("a")
    assert roster.fall_silent() == []
    clock.t += 1.5  # b: 5.5 s of silence, a: 1.5 s
    assert roster.fall_silent() == ["b"]
    assert roster.joined == {"a"} and roster.gone == {"b"} and roster.silent == {"b"}
    clock.t += 10.0
    roster.result_from("a")
    assert roster.fall_silent() == []  # b is not given up twice


def test_a_silent_worker_heard_again_takes_frames_again_but_an_exited_one_does_not():
    clock = Clock()
    roster = WorkerRoster(silence_s=5.0, clock=clock)
    for name in ("a", "b"):
        roster.joined_now(name)
    clock.t += 6.0
    assert roster.fall_silent() == ["a", "b"]
    roster.exited("b")  # its process ended after all: gone for good
    roster.alive_notice("a")
    roster.alive_notice("b")  # a late beat, sent before it exited
    assert roster.joined == {"a"} and roster.gone == {"b"} and not roster.silent


def test_time_the_collector_itself_was_away_is_nobodys_silence(caplog):
    """The collector's process stopped for 7 s (a pause, swapping): when it resumes, the beats
    sent meanwhile may not have reached its socket yet. It must not give every worker up; a
    worker that stays silent while the collector runs is still given up. The pause is logged."""
    clock = Clock()
    roster = WorkerRoster(silence_s=5.0, clock=clock)
    for name in ("a", "b"):
        roster.joined_now(name)
    roster.present()
    clock.t += 7.0
    with caplog.at_level("WARNING", logger="streamer.worker_roster"):
        roster.present()
    assert any("away for 7.0 s" in r.getMessage() for r in caplog.records)
    assert roster.fall_silent() == [] and roster.joined == {"a", "b"}
    for _ in range(11):  # 5.5 s of the collector's ticks (every 0.5 s here), with beats from a only
        clock.t += 0.5
        roster.present()
        roster.alive_notice("a")
    assert roster.fall_silent() == ["b"]


def test_frames_of_a_silent_worker_go_once_the_living_pass_them():
    """The collector side: b falls silent holding frames 1 and 3; a returns 2 and 4, so 1 and 3
    are given up at once (not after the 60 s result timeout), counted as worker_lost and in
    xtal_workers_lost_total{how="silent"}; b's late result of 1 is ignored."""
    clock = Clock()
    c, _, s = series_out_with(("a", "b"), 5, clock, result_timeout_s=60.0, worker_silence_s=5.0)
    for seq in (0, 2, 4):
        c.result(FrameResult(s.series_id, seq, seq, "a", stats={"n_spots": 1}))
    c.tick()
    clock.t += 3.0
    c.worker_alive("a")
    c.check_silence()
    assert not c.series[s.series_id].closed  # 3 s of silence is not enough
    clock.t += 3.0
    c.worker_alive("a")
    c.check_silence()
    state = c.series[s.series_id]
    assert state.closed and state.dropped_images == [1, 3] and state.tally.dropped == {"worker_lost": 2}
    assert c.metrics.workers_lost.labels(how="silent")._value.get() == 1
    c.result(FrameResult(s.series_id, 1, 1, "b", stats={"n_spots": 1}))  # it comes back: too late for 1
    assert state.tally.processed == 3 and "b" in c.roster.joined
    check_balance(c)
    clock.t += 6.0
    c.worker_alive("a")
    c.check_silence()  # silent again, and then its process is seen to exit: one worker lost, counted once
    c.worker_gone("b")
    lost = {how: c.metrics.workers_lost.labels(how=how)._value.get() for how in ("silent", "exited")}
    assert lost == {"silent": 2, "exited": 0}


def test_a_worker_beats_while_its_main_loop_is_busy(tmp_path):
    """The heartbeat comes from its own thread: a worker busy for longer than the silence (a
    series' set-up, a long frame) is still heard."""
    ctx = zmq.Context()
    results = ctx.socket(zmq.PULL)
    results.bind(f"ipc://{tmp_path}/results")
    stop = threading.Event()
    beat = threading.Thread(target=send_heartbeats, args=(ctx, f"ipc://{tmp_path}/results", "w", stop, {}))
    beat.start()
    try:
        started = time.monotonic()
        busy_until = started + 2.5 * HEARTBEAT_S
        while time.monotonic() < busy_until:  # the GIL is taken, released and taken again
            sum(range(10000))
        beats = []
        while results.poll(int(2000 * HEARTBEAT_S)) and len(beats) < 3:
            beats.append(wire.decode(results.recv_multipart()))
    finally:
        stop.set()
        beat.join(5)
        results.close()
        ctx.term()
    assert len(beats) >= 2 and {(m.kind, m.body["worker"]) for m in beats} == {("alive", "w")}


def test_frames_of_an_exited_worker_are_given_up_once_the_living_have_passed_them():
    """Each worker takes its frames in dispatch order: once a worker has exited, a frame that
    every live worker has passed was in the dead one's queue, and goes at once."""
    c, pub, s = series_out_with(("a", "b", "c"), 12, end=False, result_timeout_s=1000.0)

    def result(seq, worker):
        c.result(FrameResult(s.series_id, seq, seq, worker, stats={"n_spots": 1}))

    result(0, "a")
    result(1, "b")  # "c" held frame 2, then died
    result(3, "a")
    c.worker_gone("c")
    assert [p["image"] for p in pub.images()] == [0, 1]  # "b" has not passed 2 yet: it may hold it
    result(4, "b")
    assert [(p["image"], p["dropped"]) for p in pub.images()][2:] == [(2, "worker_lost"), (3, None), (4, None)]
    result(6, "a")
    assert [p["image"] for p in pub.images()][-1] == 4  # 5 waits: "b" may still hold it
    result(5, "b")
    assert [p["image"] for p in pub.images()][-2:] == [5, 6]
    c.worker_joined("c2")  # a new worker: nothing is given up until it has returned frames too
    result(9, "a")
    result(10, "b")
    assert [p["image"] for p in pub.images()][-1] == 6


def test_idle_notices_settle_the_last_frames_of_a_dead_workers_queue():
    """After a worker exits, a frame no live worker has passed is given up once each live worker
    has said it is idle more than IDLE_GRACE_S after the frame's dispatch; a notice sooner (the
    frame may be on its way) or a result after the notice (it works again) does not count."""
    from streamer.worker_roster import IDLE_GRACE_S

    clock = Clock()
    c, _, s = series_out_with(("a", "b"), 3, clock, result_timeout_s=60.0)
    c.result(FrameResult(s.series_id, 0, 0, "a", stats={"n_spots": 1}))
    c.worker_gone("b")  # it held frames 1 and 2
    c.worker_idle("a")  # too soon: frame 1 could still be on its way to a
    c.tick()
    assert not c.series[s.series_id].closed
    clock.t += IDLE_GRACE_S + 0.1
    c.worker_idle("a")
    c.result(FrameResult(s.series_id, 0, 0, "a"))  # a late duplicate: a works again, its idle notice is void
    c.tick()
    assert not c.series[s.series_id].closed
    clock.t += 0.5
    c.worker_idle("a", time.time() - 1.0)  # sent a second ago, read late behind results: before the grace
    c.tick()
    assert not c.series[s.series_id].closed
    c.worker_idle("a", time.time())
    c.tick()
    state = c.series[s.series_id]
    assert state.closed and state.dropped_images == [1, 2] and state.tally.dropped == {"worker_lost": 2}
    check_balance(c)


def test_a_workers_unreadable_messages_reach_the_metrics_through_its_heartbeats():
    """A worker counts the messages it cannot read (it has no /metrics of its own) and says the
    running counts in every heartbeat; the collector adds what is new, once, and takes a
    restarted worker's counts (from zero again) without counting backwards."""
    c, _ = make()

    def told(reason):
        return c.metrics.registry.get_sample_value("xtal_internal_messages_refused_total",
                                                   {"reader": "worker", "reason": reason}) or 0

    c.worker_alive("a", {})
    c.worker_alive("a", {"wire_malformed": 2})
    c.worker_alive("a", {"wire_malformed": 2})  # the next beat says the same: nothing new
    c.worker_alive("b", {"wire_malformed": 1, "wire_version": 1})
    assert (told("wire_malformed"), told("wire_version")) == (3, 1)
    c.worker_alive("a", {"wire_malformed": 1})  # a restarted "a"
    c.worker_alive("a", {"wire_malformed": 2})
    assert told("wire_malformed") == 4
    c.worker_alive("a", {"x" * 100: 5, "ok": "5", "": -1})  # what a peer says is bounded and checked
    c.worker_alive("a", ["not", "a", "map"])
    assert told("ok") == 0 and told("x" * 100) == 0 and told("wire_malformed") == 4
