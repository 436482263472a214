"""The collector's sockets: one thread polls them and turns messages into `Collector` events.

Workers say hello (then `joining`, saying whether they mapped the shared frame store) and ask
for series headers on the control socket, send results to the results socket, and hear series
announcements and crystal models on the model socket; the fan-out reports dispatches, receiver
drops and series ends on the feed socket.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from streamer import pipeline_messages, wire
from streamer.collector import Collector

log = logging.getLogger(__name__)

POLL_MS = 50  # the longest the loop sleeps without a message
# the largest message part each worker-facing socket takes: a result's largest part is a table of
# strong pixels (a 16M frame at the 25 % bound: 4.5 M pixels, 36 MB); control messages are small
MAX_PART_BYTES = {"results": 256 * 1024 * 1024, "control": 1024 * 1024}
TICK_S = 0.02  # result timeouts, queue gauges, models and header requests are checked this often
RESULTS_PER_TURN = 1000  # results read before the feed is looked at again
KEEP_CLOSED_HEADERS = 2  # series headers kept after their series closed (for a worker that asks late)


class CollectorService:
    """The collector's sockets, polled by one thread (`run`); events go to a `Collector`.

    Binds: `control` (ROUTER: worker hello -> endpoints, series_request -> series header),
    `results` (PULL from workers), `model` (PUB to workers: each new series header, so that
    workers set up before its first frame, and crystal models), and `feed`
    (PULL, usually inproc://, from the fan-out: series starts, dispatch notices, receiver drops,
    series ends, stop). A series_request for a series not announced yet waits up to
    `header_wait_s` for its announcement (the fan-out announces before it dispatches).
    """

    def __init__(self, ctx, collector: Collector, control: str, results: str, model: str, feed: str,
                 header_wait_s: float = 5.0, drain_timeout_s: float = 30.0):
        import zmq

        self._zmq = zmq
        self.collector = collector
        self.header_wait_s = header_wait_s
        self.drain_timeout_s = drain_timeout_s
        self.sockets = {}
        for name, kind, url in (("control", zmq.ROUTER, control), ("results", zmq.PULL, results),
                                ("model", zmq.PUB, model), ("feed", zmq.PULL, feed)):
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if kind == zmq.PULL:
                sock.setsockopt(zmq.RCVHWM, 0 if name == "feed" else 10000)
            if name in MAX_PART_BYTES:  # reachable from other hosts (--listen): a bound on any one part;
                sock.setsockopt(zmq.MAXMSGSIZE, MAX_PART_BYTES[name])  # past it ZeroMQ drops the sender
            sock.bind(url)
            self.sockets[name] = sock
        self.urls = {name: s.getsockopt_string(zmq.LAST_ENDPOINT) for name, s in self.sockets.items()}
        self.headers: dict[str, list[Any]] = {}
        self.pending: dict[str, list[tuple[bytes, float]]] = {}
        self.hellos: set[str] = set()
        # names of workers that exited since the last call (the pipeline watches its own processes)
        self.exited_workers: Callable[[], list[str]] = lambda: []
        self.hello_event = threading.Condition()
        self.stopped = threading.Event()
        self.hurried = threading.Event()  # `hurry`: stop waiting for the workers' last results
        self.n_bad_messages = 0

    def wait_workers(self, n: int, timeout: float) -> bool:
        """Block until `n` distinct workers have said hello."""
        with self.hello_event:
            return self.hello_event.wait_for(lambda: len(self.hellos) >= n, timeout)

    def run(self) -> None:
        zmq = self._zmq
        poller = zmq.Poller()
        for name in ("feed", "results", "control"):
            poller.register(self.sockets[name], zmq.POLLIN)
        feed, results, control = (self.sockets[name] for name in ("feed", "results", "control"))
        stop_at: float | None = None
        next_tick = 0.0
        try:
            while True:
                events = dict(poller.poll(POLL_MS))
                if feed in events:  # notices first: they precede the frames
                    for parts in self._drain(feed):
                        if self._on_feed(parts):
                            stop_at = time.monotonic() + self.drain_timeout_s
                if results in events:
                    for parts in self._drain(results, RESULTS_PER_TURN):
                        self._on_result(parts)
                if control in events:
                    for parts in self._drain(control):
                        self._on_control(parts)
                now = time.monotonic()
                if now >= next_tick:  # timeouts, gauges, models: not per message
                    # every result and heartbeat that came has been read: a frame overdue, or a
                    # worker silent, is really so (not waiting behind this loop's pause: a sweep
                    # stage recorded data wait for, a process stopped or swapped out)
                    drained = not results.poll(0)
                    self.collector.tick(expire=drained)  # first: a pause of this loop is nobody's silence
                    for name in self.exited_workers():
                        self.collector.worker_gone(name)
                    if drained:
                        self.collector.check_silence()
                    self._publish_models()
                    self._expire_requests()
                    self._forget_closed_headers()
                    next_tick = now + TICK_S
                hurried = self.hurried.is_set()
                if stop_at is not None and (not self.collector.open or now > stop_at or hurried):
                    self.collector.finish()
                    # the sweep stages' last models (made once their series ended) go out too
                    self.collector.wait_stages(1.0 if hurried else self.drain_timeout_s)
                    self._publish_models()
                    break
        finally:
            self.stopped.set()

    def hurry(self) -> None:
        """Once the feed has ended, stop waiting for results: open series close now, their
        frames still out counted as worker_lost (an operator's second Ctrl-C)."""
        self.hurried.set()

    def _drain(self, sock, limit: int = 0) -> Iterator[list[Any]]:
        """The messages waiting on `sock` (at most `limit` if given), without blocking."""
        n = 0
        while not limit or n < limit:
            try:
                yield sock.recv_multipart(self._zmq.NOBLOCK, copy=False)
            except self._zmq.Again:
                return
            n += 1

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close(linger=0)

    def _on_feed(self, parts: list[Any]) -> bool:
        """One notice from the fan-out; True when it is the stop notice."""
        msg = wire.decode(parts)  # our own process: a bad notice is a bug, let it raise
        b = msg.body
        if msg.kind == "series":
            series = pipeline_messages.series_from(msg)
            self.headers[series.series_id] = pipeline_messages.encode_series(series)
            # Every connected worker sets the series up now, while the detector starts.
            self.sockets["model"].send_multipart(self.headers[series.series_id], copy=False)
            self.collector.series_start(series)
            for identity, _ in self.pending.pop(series.series_id, []):
                self.sockets["control"].send_multipart([identity, *self.headers[series.series_id]], copy=False)
        elif msg.kind == "dispatched":
            self.collector.dispatched(b["series_id"], int(b["seq"]), int(b["image_number"]), float(b["received_at"]))
        elif msg.kind == "received_drop":
            if b.get("frame", True):
                self.collector.received_drop(str(b["reason"]), b.get("series_id"), b.get("image_number"))
            else:
                self.collector.metrics.messages_dropped.labels(reason=str(b["reason"])).inc()
        elif msg.kind == "series_end":
            self.collector.series_end(b["series_id"], int(b["n_dispatched"]), str(b.get("how", "end")))
        elif msg.kind == "stop":
            return True
        return False

    def _on_result(self, parts: list[Any]) -> None:
        try:
            msg = wire.decode(parts)
            if msg.kind == "idle":  # a worker with nothing to do (`Worker.IDLE_NOTICE_S`)
                self.collector.worker_idle(str(msg.body.get("worker")), msg.body.get("sent_at"))
                return
            if msg.kind == "alive":  # a worker's heartbeat (`worker_roster.HEARTBEAT_S`)
                self.collector.worker_alive(str(msg.body.get("worker")), msg.body.get("unreadable"))
                return
            result = pipeline_messages.result_from(msg)
        except wire.WireError as exc:  # the frame it was about will time out as worker_lost
            self._unreadable(exc, "result")
            return
        self.collector.result(result)

    def _unreadable(self, exc: wire.WireError, what: str) -> None:
        """A message from a worker that cannot be read: logged and counted (in the metrics too)."""
        self.n_bad_messages += 1
        self.collector.metrics.internal_refused.labels(reader="collector", reason=exc.reason).inc()
        log.warning("unreadable %s message (%s): %s", what, exc.reason, exc)

    def _on_control(self, parts: list[Any]) -> None:
        if len(parts) < 2:
            return
        identity = parts[0].bytes
        sock = self.sockets["control"]
        try:
            msg = wire.decode(parts[1:])
        except wire.WireError as exc:
            # Answered, so that the worker waits no longer and says why (one of another wire
            # version cannot read the answer either, and names both versions).
            self._unreadable(exc, "control")
            sock.send_multipart([identity, *wire.encode("refused", {"reason": exc.reason, "message": str(exc)[:500]})])
            return
        if msg.kind == "hello" and msg.body.get("ready"):
            with self.hello_event:
                self.hellos.add(str(msg.body.get("worker")))
                self.hello_event.notify_all()
            self.collector.worker_joined(str(msg.body.get("worker")))
        elif msg.kind == "hello":
            urls = {k: self.urls[k] for k in ("results", "model")}
            urls["frames"] = self.frames_url
            urls["run"] = self.run_token
            urls.update(self.store_info or {})
            sock.send_multipart([identity, *wire.encode("endpoints", urls)])
        elif msg.kind == "joining":  # before the worker connects for frames
            if self.store_info and not msg.body.get("store"):
                self.storeless_worker(str(msg.body.get("worker")))
            sock.send_multipart([identity, *wire.encode("welcome")])
        elif msg.kind == "series_request":
            series_id = str(msg.body.get("series_id"))
            if series_id in self.headers:
                sock.send_multipart([identity, *self.headers[series_id]], copy=False)
            else:
                self.pending.setdefault(series_id, []).append((identity, time.monotonic() + self.header_wait_s))

    frames_url: str = ""  # set by the pipeline: where the fan-out binds its frames socket
    run_token: str = ""  # set by the pipeline: the token the fan-out puts in every frame
    store_info: dict[str, str] | None = None  # set by the pipeline: the shared frame store's place
    storeless_worker: Callable[[str], None] = staticmethod(lambda name: None)  # one that cannot map it

    def _forget_closed_headers(self, keep: int = KEEP_CLOSED_HEADERS) -> None:
        """Headers (each with its pixel mask: 18 MB for a 4M detector) of series the collector
        has closed, but for the latest few: no frame of theirs is out with a worker any more."""
        closed = [sid for sid in self.headers if sid not in self.collector.open]
        for series_id in closed[:max(len(closed) - keep, 0)]:
            del self.headers[series_id]

    def _expire_requests(self) -> None:
        now = time.monotonic()
        for series_id in list(self.pending):
            waiting = self.pending[series_id]
            for identity, deadline in [w for w in waiting if w[1] < now]:
                self.sockets["control"].send_multipart(
                    [identity, *wire.encode("unknown_series", {"series_id": series_id})])
            self.pending[series_id] = [w for w in waiting if w[1] >= now]
            if not self.pending[series_id]:
                del self.pending[series_id]

    def _publish_models(self) -> None:
        while True:
            try:
                series_id, model = self.collector.models.get_nowait()
            except queue.Empty:
                return
            self.sockets["model"].send_multipart(wire.encode("model", {"series_id": series_id, "model": model}))
            if self.collector.publisher:
                self.collector.publisher.publish("indexing", {"series_id": series_id, "indexing": model})
