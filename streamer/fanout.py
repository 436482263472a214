"""The fan-out: the receiver thread's side of the pipeline, one source event at a time.

Series starts (corrected by the configured geometry, repeated ids renamed), frames (numbered
per series, refused when duplicated or when no worker is alive or free in time, sent to the
workers as bytes or by their place in the shared frame store), drops and ends: each becomes a
notice to the collector on the inproc feed, so that every frame is accounted for there.

Dispatch is credit-based: each worker's DEALER grants credit on the frames ROUTER (its queue
depth once connected, then one per finished frame), and a frame goes only to a worker with
credit. A hung or dead worker so holds at most its credit, never the hundreds of small
by-reference messages that socket buffers absorb when frames are pushed round-robin.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import zmq

from streamer import header_corrections, pipeline_messages, wire
from streamer.config import GeometryOverride
from streamer.frame_store import FrameStore
from streamer.metrics import Metrics
from streamer.series import Dropped, EncodedFrame, SeriesEnd, SeriesInfo

if TYPE_CHECKING:
    from streamer.pipeline import Endpoints

log = logging.getLogger(__name__)

MISSING_END = "missing_end_of_series"


def _is_frame(dropped: Dropped) -> bool:
    """Whether a message the receiver refused counts as a lost frame.

    A refused series header, or the end of a series that never started, is not a frame; any
    other unusable message is taken for one (detectors send images, and an unreadable message
    may have been one): the accounting errs on the side of showing a loss.
    """
    if dropped.reason == "bad_header":
        return False
    return not (dropped.reason == "no_series" and dropped.image_number is None and "end of series" in dropped.message)


FANOUT_DROPS = {"overload": "no worker was free in time", "no_worker": "no worker is alive",
                "duplicate_image": "its image number came before in this series"}


class Fanout:
    """The receiver side: sends frames to the workers, tells the collector what it did.

    A frame goes to the worker with the most credit (see the module docstring). With none,
    `overload_wait_s` None waits until a worker grants some (recorded data: as fast as the
    workers go); a number is how long a live frame may wait for it before it is dropped as
    "overload" (the detector does not wait for us).

    With a shared store, each frame is copied into it first and the workers are sent its place
    there (pinned until the collector has its result), unless a worker that cannot map the
    store has joined or the store has no room that no worker may still be reading.
    """

    def __init__(self, ctx: zmq.Context, endpoints: Endpoints, hwm: int, overload_wait_s: float | None,
                 store: FrameStore | None = None, metrics: Metrics | None = None,
                 geometry: GeometryOverride | None = None):
        self.frames = ctx.socket(zmq.ROUTER)
        self.frames.setsockopt(zmq.LINGER, 0)
        self.frames.setsockopt(zmq.SNDHWM, hwm)
        self.frames.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a peer that has gone raises EHOSTUNREACH
        self.frames.bind(endpoints.frames)
        self.frames_url = self.frames.getsockopt_string(zmq.LAST_ENDPOINT)
        self.feed = ctx.socket(zmq.PUSH)
        self.feed.setsockopt(zmq.LINGER, 0)
        self.feed.setsockopt(zmq.SNDHWM, 0)
        self.feed.connect(endpoints.feed)
        self.overload_wait_s = overload_wait_s
        self.store = store
        self.by_reference = store is not None and store.shared  # until a worker cannot map it
        self.n_by_reference = 0  # frames sent as their place in the store
        self.credit: dict[bytes, int] = {}  # worker routing id -> frames it may still be sent
        self.last_sent: dict[bytes, int] = {}  # worker routing id -> dispatch count at its latest frame
        self.n_sent = 0  # frames sent to workers
        self.n_refused_credits = 0  # credit messages that could not be read
        self.metrics = metrics
        self.check_workers: Callable[[], None] = lambda: None  # raises when no worker is left
        self.workers_alive: Callable[[], bool] = lambda: True  # False once every known worker has exited
        self.open: dict[str, int] = {}  # series id -> frames dispatched so far
        self.images: dict[str, set[int]] = {}  # series id -> image numbers dispatched (duplicates are dropped)
        self.seen: set[str] = set()  # series ids announced so far, and the aliases given
        self.aliases: dict[str, str] = {}  # a repeated series id -> the id it has in this run
        self.n_series_ended = 0  # ends received, of series open here or never started
        self.n_dropped: dict[str, int] = {}  # frames the fan-out itself dropped, by reason (for its log)
        self.run = uuid.uuid4().hex[:16]  # this run's token, in every frame and in the workers' endpoints
        self.geometry = geometry or GeometryOverride()  # the configured header corrections

    def handle(self, event: Any) -> None:
        """Dispatch one source event (SeriesInfo, EncodedFrame, SeriesEnd, Dropped)."""
        if isinstance(event, EncodedFrame):
            alias = self.aliases.get(event.series_id)
            self._frame(event if alias is None else dataclasses.replace(event, series_id=alias))
        elif isinstance(event, SeriesInfo):
            event = header_corrections.entering(event, self.geometry)  # what every later stage sees
            series_id = event.series_id
            for other in list(self.open):
                if other != self.aliases.get(series_id, series_id):
                    log.warning("series %s started before %s ended", series_id, other)
                    self._end(other, MISSING_END)
            if series_id in self.seen and self.aliases.get(series_id, series_id) not in self.open:
                # the same id again (a detector restarted its numbering): a new series for us,
                # with a name no series of this run has had (the id may come back many times)
                n = 1
                while f"{series_id}~{n}" in self.seen:
                    n += 1
                self.aliases[series_id] = f"{series_id}~{n}"
                self.seen.add(self.aliases[series_id])
                event = dataclasses.replace(event, series_id=self.aliases[series_id])
            self.seen.add(series_id)
            if event.series_id not in self.open:
                self.open[event.series_id] = 0
                self.feed.send_multipart(pipeline_messages.encode_series(event), copy=False)
        elif isinstance(event, SeriesEnd):
            series_id = self.aliases.get(event.series_id, event.series_id)
            if series_id in self.open:
                self._end(series_id, "end" if event.reason == "end" else MISSING_END)
        elif isinstance(event, Dropped):
            is_frame = _is_frame(event)
            series_id = self.aliases.get(event.series_id, event.series_id)  # None stays None
            self._drop(event.reason, series_id, event.image_number, is_frame=is_frame)
            if not is_frame and event.reason == "no_series" and not self.open:
                # the end of a series joined too late to see its start (its frames dropped): it has
                # ended for `--once` too; while a series is open, a stray end is only counted
                self.n_series_ended += 1
        else:
            raise TypeError(f"unexpected source event {type(event).__name__}")

    def _frame(self, frame: EncodedFrame) -> None:
        seq = self.open.get(frame.series_id)
        if seq is None:
            log.warning("frame %d of series %s that never started: dropped", frame.image_number, frame.series_id)
            self._drop("unknown_series", frame.series_id, frame.image_number)
            return
        images = self.images.setdefault(frame.series_id, set())
        if frame.image_number in images:  # sent twice: one row per image, one count per frame
            self._drop("duplicate_image", frame.series_id, frame.image_number)
            return
        images.add(frame.image_number)
        received_at = frame.received_at or time.monotonic()
        if frame.received_at == 0.0:
            frame = dataclasses.replace(frame, received_at=received_at)
        pin = (frame.series_id, seq)
        by_reference = self.store is not None and self.by_reference
        stored_at = self.store.add(frame, pin=pin) if by_reference else None
        parts = pipeline_messages.encode_frame(frame, seq, stored_at, self.run)  # stored: read from the store
        if not self._send(parts):
            if self.overload_wait_s is not None:
                if not self.workers_alive():  # waiting would only put the receiver behind the detector
                    if stored_at is not None:
                        self.store.release(pin)
                    self._drop("no_worker", frame.series_id, frame.image_number)
                    return
                if not self._send_within(parts, self.overload_wait_s):
                    if stored_at is not None:
                        self.store.release(pin)
                    self._drop("overload", frame.series_id, frame.image_number)
                    return
            else:  # recorded data: wait for a worker, as long as there is one
                while not self._send_within(parts, 1.0):
                    self.check_workers()
        self.open[frame.series_id] = seq + 1
        self.n_by_reference += stored_at is not None
        self.feed.send_multipart(wire.encode("dispatched", {
            "series_id": frame.series_id, "seq": seq, "image_number": frame.image_number, "received_at": received_at}))
        if self.store is not None:
            if not by_reference:  # kept for re-integration (one refused by reference had no room then)
                self.store.add(frame)
            if self.metrics is not None:
                self.metrics.queue["store"].set(len(self.store.frames))

    def _send(self, parts: list[Any]) -> bool:
        """Send a frame to the worker with the most credit (ties in turn); False when none has any.

        A worker that has gone (EHOSTUNREACH) is forgotten, its credit with it; one whose pipe
        is full (it granted more than the high-water mark) keeps no credit until it grants more.
        """
        self._read_credits()
        while self.credit:
            peer = max(self.credit, key=lambda p: (self.credit[p], -self.last_sent.get(p, -1)))
            try:
                self.frames.send_multipart([peer, *parts], copy=False, flags=zmq.NOBLOCK)
            except zmq.Again:
                del self.credit[peer]
                continue
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                log.info("worker %r has gone from the frames socket: its credit is forgotten", peer)
                del self.credit[peer]
                continue
            self.credit[peer] -= 1
            if not self.credit[peer]:
                del self.credit[peer]
            self.last_sent[peer] = self.n_sent
            self.n_sent += 1
            return True
        return False

    def _send_within(self, parts: list[Any], wait_s: float) -> bool:
        """Wait up to `wait_s` seconds for a credit, sending the frame as soon as one comes."""
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            if self.frames.poll(max(1, int(left * 1000)), zmq.POLLIN) and self._send(parts):
                return True
        return False

    def _read_credits(self) -> None:
        """Take every credit grant waiting on the frames socket (never blocks)."""
        while True:
            try:
                peer, *msg = self.frames.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                n = pipeline_messages.credit_from(wire.decode(msg))
            except wire.WireError as exc:  # counted where every unreadable internal message is
                self.n_refused_credits += 1
                if self.metrics is not None:
                    self.metrics.internal_refused.labels(reader="fanout", reason=exc.reason).inc()
                if self.n_refused_credits & (self.n_refused_credits - 1) == 0:
                    log.warning("unreadable credit message on the frames socket (%s): %s (%d so far)", exc.reason,
                                exc, self.n_refused_credits)
                continue
            key = peer.bytes
            self.credit[key] = self.credit.get(key, 0) + n

    def storeless_worker(self, name: str) -> None:
        """A worker that cannot map the shared store joins (another host): send bytes from now on.

        Called from the collector's thread before that worker connects for frames, so no frame
        sent by reference can reach it.
        """
        if self.by_reference:
            log.warning("worker %s cannot map the frame store (another host?): every frame goes as bytes now", name)
        self.by_reference = False

    def _drop(self, reason: str, series_id: str | None, image_number: int | None, is_frame: bool = True) -> None:
        if reason in FANOUT_DROPS:  # the fan-out's own reasons (the receiver logs its own)
            n = self.n_dropped[reason] = self.n_dropped.get(reason, 0) + 1
            if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...: visible, never a flood
                log.warning("series %s image %s dropped: %s (%d so far)", series_id, image_number,
                            FANOUT_DROPS[reason], n)
        self.feed.send_multipart(wire.encode("received_drop", {
            "reason": reason, "series_id": series_id, "image_number": image_number, "frame": is_frame}))

    def _end(self, series_id: str, how: str) -> None:
        n = self.open.pop(series_id)
        self.images.pop(series_id, None)
        self.feed.send_multipart(wire.encode("series_end", {"series_id": series_id, "n_dispatched": n, "how": how}))
        self.n_series_ended += 1

    def finish(self) -> None:
        """The source is exhausted: close what is open as missing its end, then stop the collector."""
        for series_id in list(self.open):
            self._end(series_id, MISSING_END)
        self.feed.send_multipart(wire.encode("stop"))

    def close(self) -> None:
        self.frames.close(linger=0)
        self.feed.close(linger=0)
        if self.store is not None:
            self.store.close()
