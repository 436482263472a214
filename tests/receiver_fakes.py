"""Shared by the receiver tests: a small series and its frames, events until the ends, one whole
series received, a thread that reports its errors (the ctx and url fixtures are in conftest.py)."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import zmq

from streamer import codecs
from streamer.config import ReceiverConfig
from streamer.receiver import Receiver
from streamer.series import Dropped, EncodedFrame, SeriesEnd, SeriesInfo

TIMEOUT_S = 10.0


def collect(receiver: Receiver, n_ends: int, timeout_s: float = TIMEOUT_S) -> list:
    """Events until `n_ends` SeriesEnd events were seen (a timeout fails the test)."""
    events, ends = [], 0
    while ends < n_ends:
        batch = receiver.poll(timeout_s)
        assert batch, f"no event for {timeout_s} s; got {[type(e).__name__ for e in events]}"
        events += batch
        ends += sum(isinstance(e, SeriesEnd) for e in batch)
    return events


def small_series(n=5, dtype="<u2", shape=(16, 20), mask=False):
    pixel_mask = np.zeros(shape, "<u4") if mask else None
    if mask:
        pixel_mask[3, 4] = 2
    return SeriesInfo(series_id="7", source="simulator", image_shape=shape, dtype=dtype, n_images=n,
                      frame_time_s=0.05, count_time_s=0.04, wavelength_A=0.98, distance_mm=200.0,
                      beam_centre_px=(10.5, 8.5), omega_start_deg=1.0, omega_increment_deg=0.5,
                      bit_depth_image=8 * np.dtype(dtype).itemsize, saturation_value=60000, pixel_mask=pixel_mask)


def encoded_frames(series, encoding="bslz4"):
    rng = np.random.default_rng(1)
    arrays = [rng.poisson(3, series.image_shape).astype(series.dtype) for _ in range(series.n_images)]
    return arrays, [EncodedFrame(series.series_id, i, series.image_shape, series.dtype, encoding,
                                 codecs.encode(a, encoding)) for i, a in enumerate(arrays)]


def in_thread(target):
    errors = []

    def run():
        try:
            target()
        except Exception as exc:  # surfaced in the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@dataclass
class ReceivedSeries:
    """What `receive_series` saw: the series, its frames in arrival order, its end, drops, counters."""

    info: SeriesInfo | None = None
    frames: list[EncodedFrame] = field(default_factory=list)
    end: SeriesEnd | None = None
    dropped: list[Dropped] = field(default_factory=list)
    counters: Counter[str] = field(default_factory=Counter)


def receive_series(endpoint: str, timeout_s: float = 10.0, ctx: zmq.Context | None = None,
                   config: ReceiverConfig | None = None) -> ReceivedSeries:
    """Receive one whole series from `endpoint`.

    Returns at the first SeriesEnd of a started series; raises TimeoutError naming the endpoint
    if no message arrives for `timeout_s` seconds before that.
    """
    ctx = ctx or zmq.Context.instance()
    out = ReceivedSeries()
    with Receiver(ctx, endpoint, config, out.counters) as receiver:
        while True:
            batch = receiver.poll(timeout_s)
            if not batch:
                raise TimeoutError(f"no message from {endpoint} for {timeout_s} s")
            for event in batch:
                if isinstance(event, SeriesInfo):
                    out.info = event
                elif isinstance(event, EncodedFrame):
                    out.frames.append(event)
                elif isinstance(event, Dropped):
                    out.dropped.append(event)
                elif isinstance(event, SeriesEnd) and out.info is not None and event.series_id == out.info.series_id:
                    out.end = event
                    return out
