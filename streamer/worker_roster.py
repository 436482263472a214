"""Which workers the collector can count on: joined, exited, idle, silent.

The fan-out sends frames to workers as they grant credit (a few each), so the collector never
knows which worker holds a frame; it knows which workers are alive and how far each has got.
A local worker's exit is seen by its parent (`Pipeline`). A worker on another host that dies without closing its
connection (power, network, a hung or stopped host) says nothing at all: so every worker
says it is alive every `HEARTBEAT_S` from a thread of its own, even while it sets a series
up (`send_heartbeats`), and one not heard from for `silence_s` is given up as if it had
exited. One heard from again takes frames again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from streamer import wire

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0  # a worker says it is alive this often, whatever its main loop is doing
SILENCE_S = 5.0  # default: a worker not heard from this long is given up
IDLE_GRACE_S = 1.0  # an idle notice this long after a frame's dispatch: the frame is in no live worker's queue
AWAY_WARNING_S = 2.0  # a pause of the collector's loop this long is logged
SEEN_WINDOW_S = 60.0  # the workers_seen gauge counts workers with a result this recent


class WorkerRoster:
    """The workers of one run as the collector hears them (one thread calls the methods)."""

    def __init__(self, silence_s: float = SILENCE_S, clock: Callable[[], float] = time.monotonic):
        self.silence_s = silence_s
        self.clock = clock
        self.joined: set[str] = set()  # said they are ready, and neither exited nor fell silent
        self.gone: set[str] = set()  # exited, or silent: the frames in their queues are lost
        self.silent: set[str] = set()  # gone because nothing was heard from them (they may come back)
        self.heard: dict[str, float] = {}  # worker -> clock at its latest message of any kind
        self.last_result: dict[str, float] = {}  # worker -> clock at its latest result
        self.idle: dict[str, float] = {}  # worker -> clock at its latest idle notice (none since a result)
        self.present_at: float | None = None  # clock at the collector loop's latest `present`

    def joined_now(self, name: str) -> None:
        """A worker said it is ready: it takes frames from now on."""
        self.joined.add(name)
        self.gone.discard(name)
        self.silent.discard(name)
        self.heard[name] = self.clock()

    def result_from(self, name: str) -> float:
        """A result came from `name`; the clock now."""
        now = self._hear(name)
        self.last_result[name] = now
        self.idle.pop(name, None)
        return now

    def idle_notice(self, name: str, sent_at: Any = None) -> None:
        """`name` has had no frame for a while. `sent_at` (wall clock, seconds) dates the notice:
        one read late, behind a backlog of results, must not count as idleness after a frame
        dispatched meanwhile."""
        now = self._hear(name)
        late = time.time() - sent_at if isinstance(sent_at, (int, float)) and math.isfinite(sent_at) else 0.0
        self.idle[name] = now - max(0.0, late)

    def alive_notice(self, name: str) -> None:
        """`name`'s heartbeat."""
        self._hear(name)

    def exited(self, name: str) -> None:
        """A worker's process ended: the frames in its queue are lost."""
        self.joined.discard(name)
        self.silent.discard(name)
        self.gone.add(name)

    def present(self) -> None:
        """The collector's loop is running (it says so every tick). A gap longer than a heartbeat
        means the collector itself was away (its process stopped, paused or swapped out), and
        the beats sent meanwhile may not even have reached its socket yet: that time is no
        worker's silence, so it is credited to every worker."""
        now = self.clock()
        gap = 0.0 if self.present_at is None else now - self.present_at
        self.present_at = now
        if gap > HEARTBEAT_S:
            for name in self.joined:
                self.heard[name] = min(now, self.heard.get(name, now) + gap)
        if gap > AWAY_WARNING_S:  # frames wait meanwhile: worth a line in the log
            log.warning("the collector's loop was away for %.1f s (its process stopped or swapped out, or a "
                        "sweep stage holding the interpreter): results and worker requests waited", gap)

    def fall_silent(self) -> list[str]:
        """Joined workers not heard from for `silence_s`, now given up (each once). Call it only
        when every message that reached the collector has been read: a backlog is not silence."""
        now = self.clock()
        names = sorted(name for name in self.joined if now - self.heard.get(name, now) > self.silence_s)
        for name in names:
            self.joined.discard(name)
            self.gone.add(name)
            self.silent.add(name)
            log.warning("no word from worker %s for %.1f s (workers say they are alive every %.0f s): given up; "
                        "the frames in its queue are dropped as worker_lost", name, now - self.heard[name], HEARTBEAT_S)
        return names

    def passed_by_the_living(self, worker_seq: Mapping[str, int], seq: int, noticed_at: float) -> bool:
        """A worker is gone and every worker alive has returned a frame after `seq` of the
        series (`worker_seq`: each worker's latest; each takes its frames in dispatch order),
        or has said it is idle more than IDLE_GRACE_S after `seq` was dispatched (a frame on its
        way would have reached it): no live queue holds it. The idle notices settle the last
        frames of a series, which no later frame passes."""
        if not self.gone or not self.joined:
            return False
        return all(worker_seq.get(name, -1) > seq or self.idle.get(name, -1.0) > noticed_at + IDLE_GRACE_S
                   for name in self.joined)

    def n_seen(self) -> int:
        """Workers joined, or with a result in the last SEEN_WINDOW_S, and not gone."""
        now = self.clock()
        recent = {name for name, t in self.last_result.items() if now - t < SEEN_WINDOW_S} - self.gone
        return len(recent | self.joined)

    def _hear(self, name: str) -> float:
        now = self.clock()
        before = self.heard.get(name, now)
        self.heard[name] = now
        if name in self.silent:  # it was only out of reach (a stopped process, a network cut)
            log.warning("worker %s is heard from again after %.1f s: it takes frames again; the frames given up "
                        "meanwhile stay dropped", name, now - before)
            self.silent.discard(name)
            self.gone.discard(name)
            self.joined.add(name)
        return now


def send_heartbeats(ctx: zmq.Context, results_url: str, name: str, stop: threading.Event,
                    unreadable: Mapping[str, int]) -> None:
    """A worker's heartbeat thread: say 'alive' every HEARTBEAT_S from its own socket until
    `stop`, whatever the worker's main loop is doing (a series' set-up takes seconds), with the
    worker's running counts of the messages it could not read (`unreadable`, by reason: a
    worker has no /metrics of its own)."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 2)  # beats that cannot leave are stale: never queue many
    sock.connect(results_url)
    try:
        while not stop.wait(HEARTBEAT_S):
            try:  # dict(): one step under the GIL, so never a dict changing size as it is read
                sock.send_multipart(wire.encode("alive", {"worker": name, "unreadable": dict(unreadable)}),
                                    zmq.DONTWAIT)
            except zmq.Again:
                pass
    finally:
        sock.close()
