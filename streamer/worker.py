"""The worker loop: encoded frames in, per-image results out (one process per core).

A worker knows one URL, the collector's control socket. It asks it (`hello`) where the
frames, results and model channel are, maps the receiver's shared frame store if it is on the
same host (`joining` tells the collector whether it could), then takes frames on a DEALER (`wire`
"frame" messages: the compressed bytes as one zero-copy part, or their place in the store) as
it grants credit for them ("credit": its queue depth on each connection, then one per frame
finished), so that it never holds more than a few frames it has not analysed; decodes
each into a buffer reused for the series (bslz4 frames band by band inside the threshold pass:
`ImageAnalyser.prepare`), runs the series' `ImageAnalyser`, and PUSHes a "result" (or
"dropped" with the reason) back. A frame of a series it has not seen makes it ask the
collector for that series' header (late-joining and remote workers get it the same way).
Bad input never stops the loop.

The analyser and decoder are given as "module:name" so the same loop runs the product's
(`streamer.perimage:ImageAnalyser`, `streamer.codecs:decode`) or another implementation.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import socket as _socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from streamer import pipeline_messages, wire
from streamer.allocator import keep_freed_memory
from streamer.errors import BadInput
from streamer.frame_store import StoreReader
from streamer.series import SeriesInfo
from streamer.series_setups import SeriesSetups
from streamer.worker_roster import HEARTBEAT_S, send_heartbeats

log = logging.getLogger(__name__)

DEFAULT_ANALYSER = "streamer.perimage:ImageAnalyser"
DEFAULT_DECODER = "streamer.codecs:decode"
IDLE_NOTICE_S = 0.5  # with no frame for this long, the worker says so (again each time it passes)


def load_object(spec: str) -> Any:
    """Import "package.module:name"."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"expected module:name, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def _reachable(url: str, control_url: str) -> str:
    """Endpoints bound on all interfaces are reached on the host the control URL names."""
    parts = urlsplit(url)
    if parts.scheme == "tcp" and parts.hostname in ("0.0.0.0", "*", "::"):
        host = urlsplit(control_url).hostname or "127.0.0.1"
        return f"tcp://{host}:{parts.port}"
    return url


class Worker:
    """One worker's sockets and state; `run()` loops until `stop` is set."""

    def __init__(
        self,
        ctx: zmq.Context,
        control_url: str,
        config: Any = None,
        analyser: str = DEFAULT_ANALYSER,
        decoder: str = DEFAULT_DECODER,
        name: str | None = None,
        header_timeout_s: float = 10.0,
        rcvhwm: int = 4,
    ):
        self.ctx = ctx
        self.control_url = control_url
        self.config = config
        self.analyser_factory: Callable[..., Any] = load_object(analyser)
        self.decode: Callable[..., np.ndarray] = load_object(decoder)
        # the product's decoder may hand back its own (read-only) output instead of copying it
        self.default_decoder = decoder == DEFAULT_DECODER
        self.decode_options = {"allow_view": True} if self.default_decoder else {}
        self.name = name or f"{_socket.gethostname()}:{os.getpid()}"
        self.header_timeout_s = header_timeout_s
        self.rcvhwm = rcvhwm
        self.stop = threading.Event()
        self.setups = SeriesSetups(self.analyser_factory, config)
        self.models: dict[str, dict[str, Any]] = {}
        self.n_frames = 0
        self.n_bad_messages = 0  # frame messages it could not read
        self.unreadable: dict[str, int] = {}  # every message it could not read, by reason: told in its heartbeats
        self.store: StoreReader | None = None  # the receiver's frame store, when on this host
        self.endpoints: dict[str, str] = {}  # of the run joined (its token: "run")
        self.heartbeat: threading.Thread | None = None
        self.frames_monitor: zmq.Socket | None = None  # handshakes of the frames socket: each grants credit

    # ------------------------------------------------------------------ sockets
    def _connect(self) -> None:
        self.control = self.ctx.socket(zmq.DEALER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.connect(self.control_url)
        endpoints = self._hello()
        self._attach_store(endpoints)
        self._ask("joining", {"worker": self.name, "store": self.store is not None}, "welcome")
        self.frames = self.ctx.socket(zmq.DEALER)
        self.frames.setsockopt(zmq.LINGER, 0)
        self.frames.setsockopt(zmq.RCVHWM, self.rcvhwm)
        # grants go only over a live connection: one queued while the fan-out is away would add to
        # the full queue's worth the next handshake grants
        self.frames.setsockopt(zmq.IMMEDIATE, 1)
        # unique per socket: the fan-out's credits are per routing id, and a new socket starts afresh
        self.frames.setsockopt(zmq.ROUTING_ID, f"{self.name}/{uuid.uuid4().hex[:8]}".encode())
        self.results = self.ctx.socket(zmq.PUSH)
        self.results.setsockopt(zmq.LINGER, 2000)  # let the last results leave on a clean stop
        self.results.connect(_reachable(endpoints["results"], self.control_url))
        self.model = self.ctx.socket(zmq.SUB)
        self.model.setsockopt(zmq.LINGER, 0)
        self.model.setsockopt(zmq.SUBSCRIBE, b"")
        # Join only once the fan-out can route frames here and announcements reach us.
        self._connect_and_wait(self.model, endpoints["model"])
        self.frames_monitor = self._connect_and_wait(self.frames, endpoints["frames"], keep_monitor=True)
        warm_up = getattr(self.analyser_factory, "warm_up_kernels", None)
        if warm_up is not None:  # compiled before joining: no frame waits behind the compiler
            t0 = time.perf_counter()
            warm_up(self.config)
            log.info("worker %s: kernels ready in %.1f s", self.name, time.perf_counter() - t0)
        # Counted as joined only now, when its frame socket is connected.
        beat_to = _reachable(endpoints["results"], self.control_url)
        self.heartbeat = threading.Thread(target=send_heartbeats, name="heartbeat", daemon=True,
                                          args=(self.ctx, beat_to, self.name, self.stop, self.unreadable))
        self.heartbeat.start()
        self.control.send_multipart(wire.encode("hello", {"worker": self.name, "ready": True}))
        self.endpoints = endpoints
        log.info("worker %s connected to %s", self.name, self.control_url)

    def _attach_store(self, endpoints: dict[str, str]) -> None:
        """Map the run's shared frame store, when it has one this host can map."""
        self.store = None
        if "store_path" in endpoints:
            try:
                self.store = StoreReader.attach(endpoints["store_path"], endpoints.get("store_token", ""),
                                                int(endpoints.get("store_bytes", "0")))
            except ValueError:
                self.store = None
            log.info("worker %s %s the frame store", self.name, "maps" if self.store else "cannot map")

    def _rejoin(self, run: str) -> None:
        """A frame of another run came: this worker outlived the run it joined, and ZeroMQ
        reconnected it to a new one on the same ports. Join the new run properly (its frame
        store, no headers or set-ups of the old one, counted by its collector) before any
        frame of it is analysed; a run on other endpoints cannot be joined this way."""
        log.warning("worker %s: frames of another run (%s) at %s: joining it anew", self.name, run, self.control_url)
        endpoints = self._hello()
        same_sockets = all(endpoints.get(k) == self.endpoints.get(k) for k in ("frames", "results", "model"))
        if endpoints.get("run") != run or not same_sockets:
            raise RuntimeError(f"the run at {self.control_url} changed its endpoints: start this worker again")
        if self.store is not None:
            self.store.close()
        self._attach_store(endpoints)
        self.setups.clear()
        self.models.clear()
        self._ask("joining", {"worker": self.name, "store": self.store is not None}, "welcome")
        self.control.send_multipart(wire.encode("hello", {"worker": self.name, "ready": True}))
        self.endpoints = endpoints

    def _connect_and_wait(self, sock: zmq.Socket, url: str, timeout_s: float = 10.0,
                          keep_monitor: bool = False) -> zmq.Socket | None:
        """Connect and wait for the handshake. `keep_monitor`: return the monitor, its events
        unread (the frames socket grants credit on each handshake, the first one included)."""
        monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            sock.connect(_reachable(url, self.control_url))
            if not monitor.poll(int(timeout_s * 1000)):
                log.warning("worker %s: no connection to %s after %.0f s", self.name, url, timeout_s)
        finally:
            if not keep_monitor:
                sock.disable_monitor()
                monitor.close()
        return monitor if keep_monitor else None

    def _on_handshake(self) -> None:
        """The frames socket (re)connected: the fan-out at its other end, new or restarted, knows
        no credit of ours, so grant a full queue's worth. (A run joined anew by `_rejoin` is
        reached by such a reconnection, so its credit is granted here, once.)"""
        event = recv_monitor_message(self.frames_monitor)
        if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._grant(self.rcvhwm)

    def _grant(self, n: int) -> None:
        """Tell the fan-out it may send `n` more frames here."""
        try:
            self.frames.send_multipart(pipeline_messages.encode_credit(self.name, n), zmq.DONTWAIT)
        except zmq.Again:  # no connection: the next handshake grants a full queue's worth
            log.debug("worker %s: no fan-out connected for a credit grant", self.name)

    def _hello(self) -> dict[str, str]:
        """Ask the collector for the endpoints; retry until it answers or we are stopped."""
        return {k: str(v) for k, v in self._ask("hello", {"worker": self.name}, "endpoints").items()}

    def _ask(self, kind: str, body: dict[str, Any], answer: str) -> dict[str, Any]:
        """Send a control message until the collector answers with `answer`; its body."""
        while not self.stop.is_set():
            self.control.send_multipart(wire.encode(kind, body))
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and not self.stop.is_set():
                if self.control.poll(100):
                    try:
                        msg = wire.decode(self.control.recv_multipart(copy=False))
                    except wire.WireError as exc:
                        self._unreadable(exc, f"answer from {self.control_url}")
                        continue
                    if msg.kind == answer:
                        return dict(msg.body)
                    if msg.kind == "refused":
                        log.error("the collector at %s could not read our %s (%s): %s", self.control_url, kind,
                                  msg.body.get("reason"), msg.body.get("message"))
            if not self.stop.is_set():
                log.info("no answer from collector at %s yet, retrying", self.control_url)
        raise TimeoutError(f"no collector answered at {self.control_url}")

    def _unreadable(self, exc: wire.WireError, what: str) -> None:
        """A message this worker could not read: logged, and counted for the collector's metrics."""
        self.unreadable[exc.reason] = self.unreadable.get(exc.reason, 0) + 1
        log.warning("worker %s: unreadable %s (%s): %s", self.name, what, exc.reason, exc)

    def _close(self) -> None:
        if self.frames_monitor is not None:
            self.frames.disable_monitor()
            self.frames_monitor.close()
        for name in ("frames", "model", "control", "results"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close()
        if self.heartbeat is not None:
            self.stop.set()
            self.heartbeat.join(2 * HEARTBEAT_S)
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Join the collector, then analyse frames until `stop`. Raises TimeoutError when
        stopped before a collector answered; the sockets are closed either way (an open one
        would make the context's term() wait for ever)."""
        keep_freed_memory()  # every frame arrives in a fresh megabyte buffer: reuse the memory
        try:
            self._connect()
            poller = zmq.Poller()
            poller.register(self.frames, zmq.POLLIN)
            poller.register(self.model, zmq.POLLIN)
            poller.register(self.frames_monitor, zmq.POLLIN)
            busy_at = time.monotonic()  # the last frame, or the last idle notice
            while not self.stop.is_set():
                events = dict(poller.poll(100))
                if self.model in events:
                    self._on_model(self.model.recv_multipart(copy=False))
                    busy_at = time.monotonic()  # a series' set-up takes seconds: frames may have come meanwhile
                if self.frames_monitor in events:
                    self._on_handshake()
                if self.frames in events:
                    self._on_frame(self.frames.recv_multipart(copy=False))
                    self._grant(1)  # its result has gone (a frame it could not read used a credit too)
                    busy_at = time.monotonic()
                elif time.monotonic() - busy_at > IDLE_NOTICE_S and not self.frames.poll(0):
                    self._say_idle()
                    busy_at = time.monotonic()
        finally:
            self._close()
        log.info("worker %s stopped after %d frames", self.name, self.n_frames)
        return 0

    def _say_idle(self) -> None:
        """Tell the collector this worker's queue is empty. On the results socket, after every
        result sent before it: a frame of a dead worker's queue that no live worker has (and so
        no later frame passes, at a series' end) is given up at once, not after the timeout. It
        says when it was sent: the collector may read it late, behind a backlog of results."""
        try:
            self.results.send_multipart(wire.encode("idle", {"worker": self.name, "sent_at": time.time()}),
                                        zmq.DONTWAIT)
        except zmq.Again:  # the collector is not reading: nothing is waiting on this notice
            pass

    def _on_model(self, parts: list[Any]) -> None:
        try:
            msg = wire.decode(parts)
        except wire.WireError as exc:
            self._unreadable(exc, "model message")
            return
        if msg.kind == "model":
            self.models[str(msg.body.get("series_id"))] = dict(msg.body.get("model") or {})
        elif msg.kind == "series":  # announced: set up now rather than on the first frame
            try:
                series = pipeline_messages.series_from(msg)
            except wire.WireError as exc:
                self._unreadable(exc, "series announcement")
                return
            self.setups.remember(series)
            try:
                self.setups.analyser(series.series_id, self._series)
            except BadInput as exc:
                log.warning("series %s cannot be analysed: %s", series.series_id, exc)

    def _on_frame(self, parts: list[Any]) -> None:
        try:
            work = pipeline_messages.frame_from(wire.decode(parts))
        except wire.WireError as exc:
            # Without a readable header the frame cannot be named; the collector times it out.
            self.n_bad_messages += 1
            self._unreadable(exc, "frame message")
            return
        joined = self.endpoints.get("run")
        if work.run and joined and work.run != joined:
            self._rejoin(work.run)
        frame = work.frame
        self.n_frames += 1
        result = pipeline_messages.FrameResult(frame.series_id, work.seq, frame.image_number, self.name)
        try:
            if work.stored is not None:
                frame = dataclasses.replace(frame, data=self._stored(*work.stored))
            analyser = self.setups.analyser(frame.series_id, self._series)
            t0 = time.perf_counter()
            buffer = self.setups.buffer(frame.shape, frame.dtype)
            prepare = getattr(analyser, "prepare", None) if self.default_decoder else None
            if prepare is not None:  # the product's analyser may decode inside its threshold pass
                image, source = prepare(frame, buffer)
                t1 = time.perf_counter()
                out = analyser.analyse(image, frame.image_number, source)
            else:
                image = self.decode(frame, out=buffer, **self.decode_options)
                t1 = time.perf_counter()
                out = analyser.analyse(image, frame.image_number)
            t2 = time.perf_counter()
            stats, profiles, spots = pipeline_messages.split_result(out)
            result = pipeline_messages.FrameResult(frame.series_id, work.seq, frame.image_number, self.name,
                                                   decode_s=t1 - t0, analyse_s=t2 - t1,
                                                   stats=stats, profiles=profiles, spots=spots)
        except BadInput as exc:
            log.info("series %s image %d dropped: %s", frame.series_id, frame.image_number, exc)
            result = pipeline_messages.FrameResult(frame.series_id, work.seq, frame.image_number, self.name,
                                                   drop_reason=exc.reason, drop_message=str(exc)[:500])
        except Exception as exc:  # a bug: logged with its traceback, the frame counted, the worker goes on
            log.exception("series %s image %d: analysis failed", frame.series_id, frame.image_number)
            result = pipeline_messages.FrameResult(frame.series_id, work.seq, frame.image_number, self.name,
                                                   drop_reason="worker_error", drop_message=repr(exc)[:500])
        self.results.send_multipart(pipeline_messages.encode_result(result), copy=False)

    def _stored(self, offset: int, size: int) -> memoryview:
        """A frame's bytes in the receiver's shared store (read before its result is sent)."""
        if self.store is None:
            raise BadInput("frame sent by its place in a frame store this worker has not mapped",
                           reason="frame_store")
        try:
            return self.store.view(offset, size)
        except ValueError as exc:
            raise BadInput(str(exc), reason="frame_store") from exc

    def _series(self, series_id: str) -> SeriesInfo:
        """The header of a series, asked of the collector the first time a frame of it comes."""
        if series_id in self.setups.series:
            return self.setups.series[series_id]
        self.control.send_multipart(wire.encode("series_request", {"series_id": series_id}))
        deadline = time.monotonic() + self.header_timeout_s
        while time.monotonic() < deadline and not self.stop.is_set():
            if not self.control.poll(100):
                continue
            try:
                msg = wire.decode(self.control.recv_multipart(copy=False))
            except wire.WireError as exc:
                self._unreadable(exc, "control message")
                continue
            if msg.kind == "series":
                series = pipeline_messages.series_from(msg)
                self.setups.remember(series)
                if series.series_id == series_id:
                    return series
            elif msg.kind == "unknown_series" and msg.body.get("series_id") == series_id:
                break
        raise BadInput(f"no header for series {series_id!r}", reason="unknown_series")
