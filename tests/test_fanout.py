"""Credit-based dispatch in the fan-out, against fake workers (DEALER sockets in this process):
a frame goes only to a worker that granted credit for it, so a worker that stops granting
(hung, stopped, dead) holds at most its credit and the others take the rest."""

from __future__ import annotations

import threading

import pytest
import zmq
from pipeline_fakes import make_frame, make_series

from streamer import pipeline_messages, wire
from streamer.config import Config
from streamer.fanout import Fanout
from streamer.pipeline import Endpoints
from streamer.series import SeriesEnd


class FakeWorker:
    """A DEALER on the frames socket that grants `first` credits, then (if `keeps_granting`)
    one more per frame it takes."""

    def __init__(self, ctx: zmq.Context, url: str, name: str, first: int, keeps_granting: bool):
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, name.encode())
        self.sock.connect(url)
        self.name, self.keeps_granting = name, keeps_granting
        self.seqs: list[int] = []
        self.sock.send_multipart(pipeline_messages.encode_credit(name, first))

    def take(self, timeout_ms: int) -> bool:
        """Take one frame if one comes within `timeout_ms`; grant for it if this one keeps granting."""
        if not self.sock.poll(timeout_ms):
            return False
        work = pipeline_messages.frame_from(wire.decode(self.sock.recv_multipart()))
        self.seqs.append(work.seq)
        if self.keeps_granting:
            self.sock.send_multipart(pipeline_messages.encode_credit(self.name, 1))
        return True


@pytest.fixture
def rig(tmp_path):
    ctx = zmq.Context()
    ep = Endpoints.make(Config(), str(tmp_path))
    feed = ctx.socket(zmq.PULL)
    feed.bind(ep.feed)
    made: list[Fanout] = []

    def fanout(overload_wait_s):
        made.append(Fanout(ctx, ep, hwm=64, overload_wait_s=overload_wait_s))
        return made[-1]

    yield ctx, fanout, feed
    for f in made:
        f.close()
    feed.close(0)
    ctx.destroy(linger=0)


def granted(fanout: Fanout, credit: dict[bytes, int]) -> None:
    """Until the fan-out has read these grants (they come over a socket)."""
    for _ in range(500):
        fanout._read_credits()
        if fanout.credit == credit:
            return
        fanout.frames.poll(10)
    assert fanout.credit == credit


def notices(feed: zmq.Socket) -> list[wire.Message]:
    out = []
    while feed.poll(200):
        out.append(wire.decode(feed.recv_multipart()))
    return out


def test_a_worker_that_stops_granting_holds_only_its_credit(rig):
    ctx, make, feed = rig
    fanout = make(None)  # recorded data: each frame waits for a credit
    hung = FakeWorker(ctx, fanout.frames_url, "hung", first=4, keeps_granting=False)
    busy = FakeWorker(ctx, fanout.frames_url, "busy", first=4, keeps_granting=True)
    granted(fanout, {b"hung": 4, b"busy": 4})
    stop = threading.Event()

    def work():
        while not stop.is_set():
            busy.take(50)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    s = make_series(n_images=60)
    fanout.handle(s)
    try:
        for i in range(60):
            fanout.handle(make_frame(s, i, 1))
        fanout.handle(SeriesEnd(s.series_id))
        while hung.take(200):
            pass
    finally:
        stop.set()
        thread.join(5)
    while busy.take(200):
        pass
    assert len(hung.seqs) == 4 and len(busy.seqs) == 56
    assert sorted(hung.seqs + busy.seqs) == list(range(60))
    assert hung.seqs == sorted(hung.seqs) and busy.seqs == sorted(busy.seqs)  # each in dispatch order
    sent = [m for m in notices(feed) if m.kind == "dispatched"]
    assert len(sent) == 60
    for w in (hung, busy):
        w.sock.close(0)


def test_the_most_credit_goes_first_and_ties_take_turns(rig):
    ctx, make, _ = rig
    fanout = make(0.5)
    a = FakeWorker(ctx, fanout.frames_url, "a", first=3, keeps_granting=False)
    b = FakeWorker(ctx, fanout.frames_url, "b", first=1, keeps_granting=False)
    granted(fanout, {b"a": 3, b"b": 1})
    s = make_series(n_images=4)
    fanout.handle(s)
    for i in range(4):
        fanout.handle(make_frame(s, i, 1))
    while a.take(200) or b.take(0):
        pass
    assert (a.seqs, b.seqs) == ([0, 1, 3], [2])  # a: 3 > 1, 2 > 1; then 1 = 1, b's turn; then a
    for w in (a, b):
        w.sock.close(0)


def test_live_frames_without_credit_wait_then_go_as_overload(rig):
    ctx, make, feed = rig
    fanout = make(0.2)
    w = FakeWorker(ctx, fanout.frames_url, "w", first=2, keeps_granting=False)
    s = make_series(n_images=5)
    fanout.handle(s)
    for i in range(5):
        fanout.handle(make_frame(s, i, 1))
    while w.take(200):
        pass
    assert w.seqs == [0, 1]
    drops = [m.body["reason"] for m in notices(feed) if m.kind == "received_drop"]
    assert drops == ["overload"] * 3
    w.sock.close(0)


def test_a_worker_that_has_gone_is_forgotten_with_its_credit(rig):
    """ROUTER_MANDATORY: a send to a worker whose connection closed fails, and the frame goes
    to one that is still there instead of vanishing."""
    ctx, make, feed = rig
    fanout = make(0.5)
    gone = FakeWorker(ctx, fanout.frames_url, "gone", first=8, keeps_granting=False)
    w = FakeWorker(ctx, fanout.frames_url, "w", first=2, keeps_granting=False)
    s = make_series(n_images=2)
    fanout.handle(s)
    granted(fanout, {b"gone": 8, b"w": 2})  # both grants in, then one worker goes
    gone.sock.close(0)
    for _ in range(100):  # until the fan-out's socket has seen the connection close
        try:
            fanout.frames.send_multipart([b"gone", b""], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            break
        threading.Event().wait(0.02)
    for i in range(2):
        fanout.handle(make_frame(s, i, 1))
    while w.take(200):
        pass
    assert w.seqs == [0, 1] and b"gone" not in fanout.credit
    assert not [m for m in notices(feed) if m.kind == "received_drop"]
    w.sock.close(0)


def test_an_unreadable_grant_is_counted_where_every_unreadable_internal_message_is(rig):
    from streamer.metrics import Metrics

    ctx, make, _ = rig
    fanout = make(0.2)
    fanout.metrics = Metrics()
    w = FakeWorker(ctx, fanout.frames_url, "w", first=2, keeps_granting=False)
    w.sock.send_multipart([b"not msgpack"])
    w.sock.send_multipart(wire.encode("credit", {"worker": "w", "n": 0}))  # grants nothing
    granted(fanout, {b"w": 2})
    for _ in range(100):
        if fanout.n_refused_credits == 2:
            break
        fanout.frames.poll(10)
        fanout._read_credits()
    refused = {s.labels["reason"]: s.value for s in fanout.metrics.internal_refused.collect()[0].samples
               if s.name.endswith("_total") and s.labels["reader"] == "fanout"}
    assert fanout.n_refused_credits == 2 and sum(refused.values()) == 2, refused
    w.sock.close(0)
