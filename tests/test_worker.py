"""The worker loop against the real collector service over ipc:// sockets: it joins with one
URL, fetches series headers it lacks, decodes (real codecs) and reports results or drop reasons."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from pipeline_fakes import HOT, make_frame, make_series

from streamer import codecs, pipeline_messages, wire
from streamer.collector import Collector
from streamer.collector_service import CollectorService
from streamer.config import Config
from streamer.metrics import Metrics
from streamer.frame_store import FrameStore, StoreReader
from streamer.fanout import Fanout
from streamer.pipeline import Endpoints, connect_service
from streamer.series import SeriesEnd
from streamer.worker import Worker

ANALYSER = "pipeline_fakes:CountingAnalyser"


class Capture:
    """A sweep stage that keeps the spot tables it is fed."""

    seen: dict[int, dict] = {}

    def __init__(self, series):
        Capture.seen = {}

    def add(self, series, result):
        Capture.seen[result.image_number] = result.spots

    def finish(self):
        return {}


class Rig:
    """Collector service + fan-out in this process, workers as threads."""

    def __init__(self, tmp_path, store: FrameStore | None = None):
        self.ctx = zmq.Context()
        self.ep = Endpoints.make(Config(), str(tmp_path))
        self.collector = Collector(Metrics(), None, stage_factories=[Capture], result_timeout_s=30)
        self.service = CollectorService(self.ctx, self.collector, self.ep.control, self.ep.results, self.ep.model,
                                        self.ep.feed)
        self.fanout = Fanout(self.ctx, self.ep, hwm=16, overload_wait_s=None, store=store)
        connect_service(self.fanout, self.service, self.collector)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()
        self.workers: list[tuple[Worker, threading.Thread]] = []

    def add_worker(self, name):
        w = Worker(self.ctx, self.ep.control, analyser=ANALYSER, name=name, header_timeout_s=2.0)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        self.workers.append((w, t))
        assert self.service.wait_workers(len(self.workers), 10)
        return w

    def close(self):
        if self.thread.is_alive():
            self.fanout.finish()
            self.thread.join(10)
        for w, t in self.workers:
            w.stop.set()
            t.join(10)
        self.fanout.close()
        self.service.close()
        self.ctx.term()


def next_result(results: zmq.Socket) -> wire.Message:
    """The next message on a worker's results socket that is not an idle notice (a worker
    says it is idle every IDLE_NOTICE_S without frames)."""
    while True:
        msg = wire.decode(results.recv_multipart())
        if msg.kind not in ("idle", "alive"):
            return msg


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.close()


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_worker_sets_up_on_the_announcement_and_reports_spot_counts(rig):
    w = rig.add_worker("w1")
    s = make_series(n_images=6)
    rig.fanout.handle(s)
    wait_for(lambda: s.series_id in w.setups.analysers)  # set up before any frame of the series came
    assert w.n_frames == 0
    truth = {}
    for i in range(6):
        frame = make_frame(s, i, n_hot=i + 1)
        truth[i] = i + 1
        if i % 2:  # half of them bitshuffle-LZ4 compressed, as a detector sends them
            image = np.frombuffer(frame.data, "<u2").reshape(s.image_shape)
            frame = type(frame)(s.series_id, i, s.image_shape, "<u2", "bslz4", codecs.encode(image, "bslz4"))
        rig.fanout.handle(frame)
    rig.fanout.handle(SeriesEnd(s.series_id))
    assert rig.collector.wait_closed(1, 20)
    state = rig.collector.series[s.series_id]
    assert {r.image_number: r.stats["n_spots"] for r in state.results} == truth
    assert all(r.spots == {} for r in state.results)  # tables went to the sweep stages, not kept
    assert sorted(Capture.seen) == list(range(6))
    for i, spots in Capture.seen.items():
        assert len(spots["x_px"]) == truth[i] and (spots["intensity"] > HOT).all()
    assert rig.workers[0][0].setups.series[s.series_id] == s  # the header it asked for


def test_bad_frames_come_back_as_drops_with_reasons(rig):
    rig.add_worker("w1")
    s = make_series(n_images=4)
    rig.fanout.handle(s)
    good = make_frame(s, 0, 5)
    rig.fanout.handle(good)
    corrupt = bytearray(codecs.encode(np.frombuffer(good.data, "<u2").reshape(s.image_shape), "bslz4"))
    corrupt[16:] = b"\xff" * (len(corrupt) - 16)  # keep the chunk header, break the LZ4 blocks
    rig.fanout.handle(type(good)(s.series_id, 1, s.image_shape, "<u2", "bslz4", bytes(corrupt)))
    rig.fanout.handle(type(good)(s.series_id, 2, s.image_shape, "<u2", "raw", b"\x00" * (64 * 48 * 2)))  # empty
    rig.fanout.handle(type(good)(s.series_id, 3, s.image_shape, "<u2", "zstd", b"abc"))
    rig.fanout.handle(type(good)("never-started", 0, s.image_shape, "<u2", "raw", good.data))
    rig.fanout.handle(SeriesEnd(s.series_id))
    assert rig.collector.wait_closed(1, 20)
    assert rig.collector.total.as_dict() == {
        "received": 5, "processed": 1,
        "dropped": {"corrupt_compression": 1, "empty_frame": 1, "unknown_encoding": 1, "unknown_series": 1},
    }


def test_a_bug_in_analysis_drops_frames_with_a_reason_and_the_worker_goes_on(rig, caplog):
    """An exception that is no BadInput (a bug, a header nobody foresaw) costs the frames it
    hits, counted as worker_error with its traceback logged, not the worker and every series after."""
    w = Worker(rig.ctx, rig.ep.control, analyser="pipeline_fakes:FailingAnalyser", name="w1", header_timeout_s=2.0)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    rig.workers.append((w, t))
    assert rig.service.wait_workers(1, 10)
    for name in ("s1", "broken", "s3"):
        _send_series(rig, make_series(name, n_images=3), lambda i: 2)
    tallies = {name: rig.collector.series[name].tally.as_dict() for name in ("s1", "broken", "s3")}
    assert tallies["s1"] == tallies["s3"] == {"received": 3, "processed": 2, "dropped": {"worker_error": 1}}
    assert tallies["broken"] == {"received": 3, "processed": 0, "dropped": {"worker_error": 3}}
    assert t.is_alive()
    assert any("analysis set-up failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_a_worker_left_from_an_earlier_run_joins_the_new_one_before_analysing(rig, caplog):
    """ZeroMQ reconnects a worker that outlived its run to a new run on the same ports: the
    first frame with the new run's token makes it join again (the new store, none of the old
    run's headers or set-ups), so its results are the new run's, and its collector counts it."""
    w = rig.add_worker("w1")
    _send_series(rig, make_series("1", n_images=2), lambda i: 1)
    assert "1" in w.setups.series
    rig.fanout.run = rig.service.run_token = "the-next-run"  # what a new run on these ports looks like
    assert _send_series(rig, make_series("2", n_images=3), lambda i: 4) == {0: 4, 1: 4, 2: 4}
    assert w.endpoints["run"] == "the-next-run" and "1" not in w.setups.series
    assert any("frames of another run" in r.getMessage() for r in caplog.records)


def test_a_worker_grants_credit_afresh_when_its_frames_socket_reconnects(rig):
    """A new fan-out bound where the old one was (a new run on the same ports) has none of the
    worker's credit: ZeroMQ reconnects the worker's DEALER, the handshake makes it grant a full
    queue again, and so the new run's frames reach it (and it joins that run)."""
    w = rig.add_worker("w1")
    _send_series(rig, make_series("1", n_images=2), lambda i: 1)
    old = rig.fanout
    old.frames.close(linger=0)
    try:
        rig.fanout = Fanout(rig.ctx, rig.ep, hwm=16, overload_wait_s=None)
        rig.service.run_token = rig.fanout.run
        wait_for(lambda: rig.fanout._read_credits() or sum(rig.fanout.credit.values()) >= w.rcvhwm)
        time.sleep(0.2)  # a full queue's worth, no grant made while no fan-out was there
        rig.fanout._read_credits()
        assert sum(rig.fanout.credit.values()) == w.rcvhwm
        assert _send_series(rig, make_series("2", n_images=6), lambda i: 4) == {i: 4 for i in range(6)}
        assert w.endpoints["run"] == rig.fanout.run
        wait_for(lambda: rig.fanout._read_credits() or sum(rig.fanout.credit.values()) >= w.rcvhwm)
        time.sleep(0.2)  # and no more than that: one credit back per frame
        rig.fanout._read_credits()
        assert sum(rig.fanout.credit.values()) == w.rcvhwm
    finally:
        old.feed.close(linger=0)


def test_late_worker_gets_the_header_of_a_running_series_and_models(rig):
    rig.add_worker("w1")
    s = make_series(n_images=40)
    rig.fanout.handle(s)
    for i in range(20):
        rig.fanout.handle(make_frame(s, i, 2))
    wait_for(lambda: rig.collector.total.processed == 20)
    late = rig.add_worker("late")
    for i in range(20, 40):
        rig.fanout.handle(make_frame(s, i, 2))
    rig.fanout.handle(SeriesEnd(s.series_id))
    assert rig.collector.wait_closed(1, 20)
    assert rig.collector.total.processed == 40
    workers = {r.worker for r in rig.collector.series[s.series_id].results[20:]}
    assert "late" in workers and late.setups.series[s.series_id] == s
    rig.collector.models.put((s.series_id, {"indexed": True, "unit_cell": [79.1, 79.1, 38.0, 90, 90, 90]}))
    wait_for(lambda: s.series_id in late.models)
    assert late.models[s.series_id]["unit_cell"][0] == 79.1


def test_worker_drops_a_frame_whose_series_the_collector_does_not_know(tmp_path):
    """A worker asked for a header nobody has: the frame is reported as unknown_series."""
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.bind(f"ipc://{tmp_path}/c")
        frames, results, model = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PULL), ctx.socket(zmq.PUB)
        urls = {}
        for name, sock in (("frames", frames), ("results", results), ("model", model)):
            sock.bind(f"ipc://{tmp_path}/{name}")
            urls[name] = f"ipc://{tmp_path}/{name}"
        w = Worker(ctx, f"ipc://{tmp_path}/c", analyser=ANALYSER, name="w", header_timeout_s=5)
        t = threading.Thread(target=w.run, daemon=True)
        t.start()
        ident, *parts = router.recv_multipart()
        assert wire.decode(parts).kind == "hello"
        router.send_multipart([ident, *wire.encode("endpoints", urls)])
        joining = wire.decode(router.recv_multipart()[1:])  # no store offered: none mapped
        assert joining.kind == "joining" and joining.body == {"worker": "w", "store": False}
        router.send_multipart([ident, *wire.encode("welcome")])
        assert wire.decode(router.recv_multipart()[1:]).body["ready"]
        worker, *grant = frames.recv_multipart()  # connected: a full queue's credit
        assert pipeline_messages.credit_from(wire.decode(grant)) == w.rcvhwm
        s = make_series()
        frames.send_multipart([worker, *pipeline_messages.encode_frame(make_frame(s, 0, 1), 0)], copy=False)
        ident, *parts = router.recv_multipart()
        request = wire.decode(parts)
        assert request.kind == "series_request" and request.body["series_id"] == s.series_id
        router.send_multipart([ident, *wire.encode("unknown_series", {"series_id": s.series_id})])
        result = pipeline_messages.result_from(next_result(results))
        assert result.drop_reason == "unknown_series"
        frames.send_multipart([worker, b"\x93garbage"])  # unreadable: counted by the worker, loop goes on
        frames.send_multipart([worker, *pipeline_messages.encode_frame(make_frame(s, 1, 1), 1)], copy=False)
        ident, *parts = router.recv_multipart()
        router.send_multipart([ident, *pipeline_messages.encode_series(s)])
        result = pipeline_messages.result_from(next_result(results))
        assert result.stats["n_spots"] == 1 and w.n_bad_messages == 1
        deadline = time.monotonic() + 10  # its heartbeats tell the collector, which has the metrics
        while (beat := wire.decode(results.recv_multipart())).kind != "alive" or not beat.body["unreadable"]:
            assert time.monotonic() < deadline
        assert beat.body["unreadable"] == {"wire_malformed": 1}
        w.stop.set()
        t.join(10)
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def shared_rig(tmp_path):
    r = Rig(tmp_path, FrameStore(64 << 10, shared=True))  # ten 6 KB frames: laps while frames are in flight
    yield r
    r.close()


def _send_series(rig, s, n_hot=lambda i: i % 5 + 1):
    closed = rig.collector.n_closed  # before: the series may close before the wait below starts
    rig.fanout.handle(s)
    for i in range(s.n_images):
        rig.fanout.handle(make_frame(s, i, n_hot(i)))
    rig.fanout.handle(SeriesEnd(s.series_id))
    assert rig.collector.wait_closed(closed + 1, 20)
    return {r.image_number: r.stats["n_spots"] for r in rig.collector.series[s.series_id].results}


def test_local_workers_read_frames_from_the_shared_store_and_unpin_them(shared_rig):
    rig = shared_rig
    w1, w2 = rig.add_worker("w1"), rig.add_worker("w2")
    assert w1.store is not None and w2.store is not None
    s = make_series(n_images=60)
    assert _send_series(rig, s) == {i: i % 5 + 1 for i in range(60)}  # no pinned frame was overwritten
    # by bytes while the ring has no room that no worker may still be reading
    assert 10 <= rig.fanout.n_by_reference <= 60
    assert {r.worker for r in rig.collector.series[s.series_id].results} == {"w1", "w2"}
    store = rig.fanout.store
    store.add(make_frame(s, 0, 1))  # drains the releases: no frame stays pinned
    assert store._pins == {}


def test_a_worker_that_cannot_map_the_store_turns_frames_into_bytes(shared_rig, monkeypatch):
    rig = shared_rig
    rig.add_worker("local")
    first = make_series("first", n_images=10)
    assert len(_send_series(rig, first)) == 10 and rig.fanout.n_by_reference == 10
    monkeypatch.setattr(StoreReader, "attach", classmethod(lambda cls, *a: None))  # as on another host
    remote = rig.add_worker("remote")
    assert remote.store is None and not rig.fanout.by_reference
    second = make_series("second", n_images=30)
    assert _send_series(rig, second) == {i: i % 5 + 1 for i in range(30)}
    assert rig.fanout.n_by_reference == 10  # none of the second series went by reference
    assert {r.worker for r in rig.collector.series["second"].results} == {"local", "remote"}


def test_frames_in_a_store_a_worker_cannot_read_are_dropped_with_a_reason(shared_rig, monkeypatch):
    rig = shared_rig
    monkeypatch.setattr(StoreReader, "attach", classmethod(lambda cls, *a: None))
    rig.add_worker("unmapped")
    rig.fanout.by_reference = True  # as if it had been let through: it cannot read them
    s = make_series(n_images=3)
    assert _send_series(rig, s) == {}
    assert rig.collector.total.as_dict()["dropped"] == {"frame_store": 3}


def test_a_frame_outside_the_store_is_dropped_with_a_reason(shared_rig, monkeypatch):
    rig = shared_rig
    w = rig.add_worker("w1")
    s = make_series(n_images=4)
    store = rig.fanout.store
    real_add = store.add
    monkeypatch.setattr(store, "add", lambda frame, pin=None: store.max_bytes - 10 if frame.image_number == 2
                        else real_add(frame, pin))
    assert _send_series(rig, s) == {0: 1, 1: 2, 3: 4}
    assert rig.collector.total.as_dict()["dropped"] == {"frame_store": 1} and w.store is not None


def test_the_worker_facing_sockets_refuse_oversized_parts(rig, caplog):
    """A peer sending a part over the bound (`--listen` exposes these sockets) is cut off by
    ZeroMQ before the bytes are held; the service goes on answering others."""
    junk = rig.ctx.socket(zmq.DEALER)
    junk.connect(rig.ep.control)
    junk.send(b"x" * (2 * 1024 * 1024))  # over the control socket's 1 MiB
    w = rig.add_worker("w1")  # a well-formed hello is still answered
    assert _send_series(rig, make_series(n_images=1), lambda i: 2) == {0: 2} and w.n_frames == 1
    assert not any("unreadable control message" in r.getMessage() for r in caplog.records)  # never read
    junk.close(linger=0)


def test_a_peer_of_another_wire_version_is_refused_and_counted(rig, caplog):
    """A worker of the build before the heartbeat (wire version 1) would be given up as silent
    once it had joined. Its hello is answered with `refused` (reason wire_version) instead of
    silence, which it cannot read either and so logs with both versions; the collector logs
    and counts it, as it counts any result message it cannot read, and goes on."""
    old = rig.ctx.socket(zmq.DEALER)
    old.connect(rig.ep.control)
    old.send(msgpack.packb({"v": 1, "kind": "hello", "body": {"worker": "old"}, "arrays": []}))
    assert old.poll(10_000)
    answer = old.recv_multipart()
    assert msgpack.unpackb(answer[0])["v"] == wire.WIRE_VERSION != 1
    refused = wire.decode(answer)
    assert refused.kind == "refused" and refused.body["reason"] == "wire_version"
    assert "unknown wire version 1" in refused.body["message"]
    junk = rig.ctx.socket(zmq.PUSH)
    junk.connect(rig.service.urls["results"])
    junk.send(b"\x93garbage")

    def counted(reason):
        return rig.collector.metrics.registry.get_sample_value(
            "xtal_internal_messages_refused_total", {"reader": "collector", "reason": reason})

    wait_for(lambda: counted("wire_malformed") == 1)
    assert counted("wire_version") == 1
    w = rig.add_worker("w1")  # a worker of this build still joins and works
    assert _send_series(rig, make_series(n_images=2), lambda i: 3) == {0: 3, 1: 3} and w.n_frames == 2
    old.close(linger=0)
    junk.close(linger=0)


def test_a_worker_says_why_the_collector_refused_it(tmp_path, caplog):
    """A worker whose hello the collector could not read logs the collector's reason (and
    keeps asking), instead of only 'no answer yet'."""
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.bind(f"ipc://{tmp_path}/c")
        w = Worker(ctx, f"ipc://{tmp_path}/c", analyser=ANALYSER, name="w", header_timeout_s=5)
        stopped = []
        t = threading.Thread(target=lambda: stopped.append(pytest.raises(TimeoutError, w.run)), daemon=True)
        t.start()
        ident, *_ = router.recv_multipart()
        router.send_multipart([ident, *wire.encode("refused", {"reason": "wire_version", "message": "v9"})])
        wait_for(lambda: any("could not read our hello (wire_version): v9" in r.getMessage() for r in caplog.records))
        w.stop.set()
        t.join(10)
        assert stopped  # stopped before it joined: no collector answered (what `xtalstream worker` reports)
    finally:
        ctx.destroy(linger=0)
