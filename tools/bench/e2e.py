"""`xtalstream bench e2e`: receiver + workers + collector end to end, as `run` does it.

A detector sender (a separate process: the detector is not us) streams realistic frames
(EIGER2 frames with their module gaps, Poisson background with sparse Gaussian Bragg spots,
uint32, bitshuffle-LZ4 as an EIGER sends them, stream v2; the start message carries the pixel
mask with the gaps flagged, header detail "all") over loopback TCP at a target rate.
The processor side is exactly the `run` layout: `Receiver` -> `Pipeline` (fan-out, N worker
processes, collector, result stream; the sweep stages with `--sweep-stages`). The rate ramps
up in short series; a rate is sustained when every frame was received and processed (no
drops) and results were published at >= 95% of the sent rate, timed from the detector's first
frame sent to the last result (so frames that wait in the detector socket before the receiver
reads them count: the fan-out waits for a worker's credit, and the backlog waits there); after
the first rate that is not, `--refine` steps bisect (geometrically) between it and the last
sustained one.
Figures: the highest sustained rate, and at that rate the drops and the latency from frame
received to per-image result published (p50, p99), and what each process spends per frame at
that rate (CPU ms per frame from /proc: the main process split by thread, the workers, the
sender), which shows where the cores go when the rate is limited by CPU rather than by the
analysis. The frame store's memory is mapped before the ramp (as in a processor that waited
for its detector; the time it took is reported), so that the ramp measures the steady state.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from typing import Any

import numpy as np

from tools.bench.decode import SHAPES, gap_mask, realistic_frame

log = logging.getLogger(__name__)

DISTINCT_FRAMES = 6
STEP_SECONDS = 2.5
MIN_FRAMES = 40
RAMP_FACTOR = 1.3
REFINE_STEPS = 3  # after the first rate not sustained, halve the gap to the last sustained one this often
TIME_BUDGET_S = 100.0
# start message -> first image (a detector is armed, then triggered): the workers set each series
# up meanwhile (measured ~0.25 s for a 4M, ~1 s for a 16M), as they would before a real sweep
ARM_S = {"4M": 0.5, "16M": 1.5}


def add_arguments(parser) -> None:
    parser.add_argument("--start-rate", type=float, default=20.0, help="first rate of the ramp (frames/s)")
    parser.add_argument("--max-rate", type=float, default=2000.0, help="stop the ramp at this rate (frames/s)")
    parser.add_argument("--refine", type=int, default=REFINE_STEPS,
                        help="steps between the last sustained and the first unsustained rate (geometric bisection)")
    parser.add_argument("--analyser", default=None, metavar="MODULE:NAME",
                        help="per-image analyser the workers run (default streamer.perimage:ImageAnalyser; "
                             "tools.bench.decode_only:DecodeOnlyAnalyser measures the pipeline's own ceiling)")
    parser.add_argument("--sweep-stages", action="store_true",
                        help="also run the collector's sweep stages (spot joining, indexing) as `run` does; off by "
                             "default: the bench frames are not a rotation sweep, so indexing would only keep failing")


def make_frames(detector: str, n: int, seed: int = 1) -> list[np.ndarray]:
    """EIGER2 frames with their module gaps: ~1 photon/pixel background, a few hundred sparse spots each."""
    return [realistic_frame(detector, seed=seed + i, background=1.0, n_spots=300) for i in range(n)]


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int | str = "self", tid: int | None = None) -> float:
    """CPU seconds (user + system) of a process (all its threads) or of one of its threads (Linux /proc)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        with open(path) as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:  # the process or thread has gone
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime (fields 14, 15 of stat(5))


class CpuMeter:
    """CPU seconds per part of the processor: main-process threads, workers (and the sender)."""

    def __init__(self, threads: dict[str, int | None], worker_pids: list[int], sender_pid: int | None):
        self.threads = {name: tid for name, tid in threads.items() if tid is not None}
        self.worker_pids = worker_pids
        self.sender_pid = sender_pid

    def sample(self) -> dict[str, float]:
        out = {"main": _cpu_s()}
        for name, tid in self.threads.items():
            out[f"main.{name}"] = _cpu_s("self", tid)
        out["main.other"] = out["main"] - sum(out[f"main.{name}"] for name in self.threads)  # zmq I/O threads
        out["workers"] = sum(_cpu_s(pid) for pid in self.worker_pids)
        if self.sender_pid is not None:
            out["sender"] = _cpu_s(self.sender_pid)
        return out

    @staticmethod
    def per_frame_ms(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        return {key: round(1000.0 * (after[key] - before[key]) / max(n, 1), 3) for key in after}


def series_for(shape: tuple[int, int], series_id: str, n_images: int, pixel_mask: np.ndarray | None = None):
    """The series the sender announces; `pixel_mask`: the detector's (its gaps flagged), sent in
    the start message (header detail "all") as a DECTRIS detector sends it."""
    from streamer.series import SeriesInfo

    return SeriesInfo(series_id=series_id, source="simulator", image_shape=shape, dtype="<u4", n_images=n_images,
                      detector_description=f"bench {shape[1]}x{shape[0]}", pixel_size_mm=(0.075, 0.075),
                      beam_centre_px=(shape[1] / 2, shape[0] / 2), distance_mm=150.0, wavelength_A=0.9763,
                      omega_increment_deg=0.1, count_time_s=0.001, frame_time_s=0.001,
                      saturation_value=2**31, bit_depth_image=32, pixel_mask=pixel_mask)


def _sender(url: str, detector: str, conn, arm_s: float = 0.0) -> None:
    """Child process: the detector. Receives (series_id, rate, n) steps, streams each, reports."""
    import zmq

    from streamer import codecs
    from streamer.sender import DetectorSender
    from streamer.series import EncodedFrame

    shape = SHAPES[detector]
    mask = gap_mask(detector)
    payloads = [codecs.encode(image, "bslz4") for image in make_frames(detector, DISTINCT_FRAMES)]
    ctx = zmq.Context()
    sender = DetectorSender(ctx, url, fmt="v2")
    conn.send(("ready", float(np.mean([len(p) for p in payloads]))))
    try:
        while True:
            step = conn.recv()
            if step is None:
                break
            series_id, rate, n = step
            sender.rate_hz = rate
            sender.send_start(series_for(shape, series_id, n, mask), header_detail="all")
            time.sleep(arm_s)
            t0 = time.monotonic()
            for i in range(n):
                data = payloads[i % len(payloads)]
                sender.send_frame(EncodedFrame(series_id, i, shape, "<u4", "bslz4", data))
            sent_s = time.monotonic() - t0
            sender.send_end()
            # CLOCK_MONOTONIC is the host's: the processor reads the same clock
            conn.send(("sent", n / sent_s if sent_s > 0 else float("inf"), t0, t0 + sent_s))
    finally:
        sender.close(linger_s=1.0)
        ctx.term()


def _step_figures(state, sent_rate: float, n: int, first_sent: float, last_sent: float) -> dict[str, Any]:
    lat = np.asarray(state.latencies_s) if state.latencies_s else np.zeros(1)
    tally = state.tally
    # results per second over the step: n frames from the first sent to the last result published
    span = state.last_result - first_sent if state.last_result > 0 else float("inf")
    return {
        "sent_rate": sent_rate,
        "received": tally.received,
        "processed": tally.processed,
        "dropped": sum(tally.dropped.values()),
        "dropped_by_reason": dict(tally.dropped),
        "published_rate": (n - 1) / span if span > 0 else 0.0,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p99_s": float(np.percentile(lat, 99)),
        "drain_s": state.last_result - last_sent if state.last_result > 0 else float("inf"),  # last sent -> last result
    }


def run(args) -> dict[str, Any]:
    import socket

    import zmq

    from streamer.config import load_config
    from streamer.pipeline import Pipeline, default_stages, default_workers
    from streamer.receiver import Receiver

    config = load_config(args.config)
    workers = default_workers(args.workers or 0)  # as `run` chooses: cores - 1, at least 1
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    proc = mp.Process(target=_sender, args=(url, args.detector, child, ARM_S[args.detector]), daemon=True)
    proc.start()
    _, compressed_bytes = parent.recv()
    worker_args = ["--analyser", args.analyser] if args.analyser else []
    ctx = zmq.Context.instance()
    ramp: list[dict[str, Any]] = []
    map_s = float("nan")
    best: dict[str, Any] | None = None
    started = time.monotonic()
    try:
        stages = default_stages(config) if getattr(args, "sweep_stages", False) else ()
        with Pipeline(config, n_workers=workers, live=True, stage_factories=stages, worker_args=worker_args,
                      result_stream="tcp://127.0.0.1:*") as pipe:  # published as in `run` (no subscriber)
            receiver = Receiver(ctx, url, config.receiver)
            store = pipe.fanout.store
            map_s = 0.0
            if store is not None:  # a processor waiting for its detector has mapped its frame store
                t0 = time.monotonic()
                store.start_mapping(store.max_bytes)
                store.wait_mapped(120.0)
                map_s = time.monotonic() - t0
            meter = CpuMeter({"receiver": threading.get_native_id(), "collector": pipe._thread.native_id,
                              "stages": pipe.collector.stages.native_id,
                              "store_map": store.mapper.native_id if store and store.mapper else None},
                             [p.pid for p in pipe.processes], proc.pid)
            try:
                rate = args.start_rate
                step = 0
                sustained, failed = None, None
                refine = max(0, int(getattr(args, "refine", REFINE_STEPS)))
                while rate <= args.max_rate and time.monotonic() - started < TIME_BUDGET_S:
                    warmup = step == 0
                    n = 20 if warmup else max(MIN_FRAMES, int(rate * STEP_SECONDS))
                    series_id = f"bench-{step}"
                    cpu_before = meter.sample()
                    parent.send((series_id, 20.0 if warmup else rate, n))
                    pipe.feed(receiver.events(), once=True, last=False)
                    if not pipe.collector.wait_closed(step + 1, 60):
                        raise TimeoutError(f"series {series_id} was not closed within 60 s")
                    cpu_ms = CpuMeter.per_frame_ms(cpu_before, meter.sample(), n)
                    _, sent_rate, first_sent, last_sent = parent.recv()
                    step += 1
                    if warmup:
                        continue
                    state = pipe.collector.series[pipe.collector.order[step - 1]]  # the receiver names it
                    figures = {"target_rate": rate, **_step_figures(state, sent_rate, n, first_sent, last_sent),
                               "cpu_ms_per_frame": cpu_ms}
                    ramp.append(figures)
                    ok = (figures["dropped"] == 0 and figures["received"] == n and sent_rate >= 0.95 * rate
                          and figures["published_rate"] >= 0.95 * rate)
                    log.info("rate %.0f/s: sent %.0f/s, published %.0f/s, dropped %d, p99 %.3f s, drain %.3f s -> %s",
                             rate, sent_rate, figures["published_rate"], figures["dropped"], figures["latency_p99_s"],
                             figures["drain_s"], "sustained" if ok else "not sustained")
                    if ok:
                        best, sustained = figures, rate
                    else:
                        failed = rate if failed is None else min(failed, rate)
                    if failed is None:
                        rate *= RAMP_FACTOR
                    elif refine > 0 and sustained is not None:  # narrow the ramp's last step down
                        refine -= 1
                        rate = math.sqrt(sustained * failed)
                    else:
                        break
            finally:
                receiver.close()
    finally:
        parent.send(None)
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    at = best or (ramp[0] if ramp else {})
    return {
        "frames_per_s": float(best["target_rate"]) if best else 0.0,
        "dropped": int(at.get("dropped", 0)),
        "latency_p50_s": at.get("latency_p50_s", float("nan")),
        "latency_p99_s": at.get("latency_p99_s", float("nan")),
        "drain_s": at.get("drain_s", float("nan")),
        "workers": workers,
        "main_cpu_ms_per_frame": at.get("cpu_ms_per_frame", {}).get("main", float("nan")),
        "worker_cpu_ms_per_frame": at.get("cpu_ms_per_frame", {}).get("workers", float("nan")),
        "cpu_ms_per_frame": at.get("cpu_ms_per_frame", {}),
        "frame_store_map_s": map_s,
        "detector": args.detector,
        "compressed_mb_per_frame": compressed_bytes / 1e6,
        "first_unsustained_rate": min((r["target_rate"] for r in ramp if r["target_rate"] > (best or {}).get(
            "target_rate", 0.0)), default=None),
        "ramp": ramp,
    }
