"""`xtalstream bench e2e`: receiver + workers + collector end to end, as `run` does it.

A detector sender (a separate process: the detector is not us) streams realistic frames
(Poisson background with sparse Gaussian Bragg spots, uint32, bitshuffle-LZ4 as an EIGER
sends them, stream v2) over loopback TCP at a target rate. The processor side is exactly the
`run` layout: `Receiver` -> `Pipeline` (fan-out, N worker processes, collector). The rate
ramps up in short series; a rate is sustained when every frame was received and processed
(no drops) and results were published at >= 95% of the sent rate. Figures: the highest
sustained rate, and at that rate the drops and the latency from frame received to per-image
result published (p50, p99).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SHAPES = {"4M": (2162, 2068), "16M": (4362, 4148)}  # numpy order (slow, fast)
DISTINCT_FRAMES = 6
STEP_SECONDS = 2.5
MIN_FRAMES = 40
RAMP_FACTOR = 1.3
TIME_BUDGET_S = 100.0


def add_arguments(parser) -> None:
    parser.add_argument("--start-rate", type=float, default=20.0, help="first rate of the ramp (frames/s)")
    parser.add_argument("--max-rate", type=float, default=2000.0, help="stop the ramp at this rate (frames/s)")
    parser.add_argument("--analyser", default=None, metavar="MODULE:NAME",
                        help="per-image analyser the workers run (default streamer.perimage:ImageAnalyser)")


def make_frames(shape: tuple[int, int], n: int, seed: int = 1) -> list[np.ndarray]:
    """Sparse spots on a Poisson background: ~1 photon/pixel, a few hundred spots per frame."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[-3:4, -3:4]
    frames = []
    for _ in range(n):
        image = rng.poisson(1.0, size=shape).astype(np.uint32)
        n_spots = 300
        cy = rng.integers(5, ny - 5, n_spots)
        cx = rng.integers(5, nx - 5, n_spots)
        peak = rng.exponential(200.0, n_spots) + 20
        blob = np.exp(-(xx**2 + yy**2) / (2 * 1.2**2))
        for y, x, p in zip(cy, cx, peak):
            image[y - 3:y + 4, x - 3:x + 4] += rng.poisson(p * blob).astype(np.uint32)
        frames.append(image)
    return frames


def series_for(shape: tuple[int, int], series_id: str, n_images: int):
    from streamer.series import SeriesInfo

    return SeriesInfo(series_id=series_id, source="simulator", image_shape=shape, dtype="<u4", n_images=n_images,
                      detector_description=f"bench {shape[1]}x{shape[0]}", pixel_size_mm=(0.075, 0.075),
                      beam_centre_px=(shape[1] / 2, shape[0] / 2), distance_mm=150.0, wavelength_A=0.9763,
                      omega_increment_deg=0.1, count_time_s=0.001, frame_time_s=0.001,
                      saturation_value=2**31, bit_depth_image=32)


def _sender(url: str, shape: tuple[int, int], conn) -> None:
    """Child process: the detector. Receives (series_id, rate, n) steps, streams each, reports."""
    import zmq

    from streamer import codecs
    from streamer.sender import DetectorSender
    from streamer.series import EncodedFrame

    payloads = [codecs.encode(image, "bslz4") for image in make_frames(shape, DISTINCT_FRAMES)]
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
            sender.send_start(series_for(shape, series_id, n))
            t0 = time.monotonic()
            for i in range(n):
                data = payloads[i % len(payloads)]
                sender.send_frame(EncodedFrame(series_id, i, shape, "<u4", "bslz4", data))
            sent_s = time.monotonic() - t0
            sender.send_end()
            conn.send(("sent", n / sent_s if sent_s > 0 else float("inf")))
    finally:
        sender.close(linger_s=1.0)
        ctx.term()


def _step_figures(state, sent_rate: float, n: int) -> dict[str, Any]:
    lat = np.asarray(state.latencies_s) if state.latencies_s else np.zeros(1)
    tally = state.tally
    # results per second over the step: n frames from first received to last published
    span = lat[-1] + (n - 1) / max(sent_rate, 1e-9) if len(lat) else float("inf")
    return {
        "sent_rate": sent_rate,
        "received": tally.received,
        "processed": tally.processed,
        "dropped": sum(tally.dropped.values()),
        "dropped_by_reason": dict(tally.dropped),
        "published_rate": (n - 1) / span if span > 0 else 0.0,
        "latency_p50_s": float(np.percentile(lat, 50)),
        "latency_p99_s": float(np.percentile(lat, 99)),
    }


def run(args) -> dict[str, Any]:
    import socket

    import zmq

    from streamer.config import load_config
    from streamer.pipeline import Pipeline
    from streamer.receiver import Receiver

    shape = SHAPES[args.detector]
    config = load_config(args.config)
    workers = args.workers or max(1, (multiprocessing.cpu_count() or 2) - 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    proc = mp.Process(target=_sender, args=(url, shape, child), daemon=True)
    proc.start()
    _, compressed_bytes = parent.recv()
    worker_args = ["--analyser", args.analyser] if args.analyser else []
    ctx = zmq.Context.instance()
    ramp: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    started = time.monotonic()
    try:
        with Pipeline(config, n_workers=workers, live=True, result_stream=None, worker_args=worker_args) as pipe:
            receiver = Receiver(ctx, url, config.receiver)
            try:
                rate = args.start_rate
                step = 0
                while rate <= args.max_rate and time.monotonic() - started < TIME_BUDGET_S:
                    warmup = step == 0
                    n = 20 if warmup else max(MIN_FRAMES, int(rate * STEP_SECONDS))
                    series_id = f"bench-{step}"
                    parent.send((series_id, 20.0 if warmup else rate, n))
                    pipe.feed(receiver.events(), once=True, last=False)
                    if not pipe.collector.wait_closed(step + 1, 60):
                        raise TimeoutError(f"series {series_id} was not closed within 60 s")
                    _, sent_rate = parent.recv()
                    step += 1
                    if warmup:
                        continue
                    state = pipe.collector.series[pipe.collector.order[step - 1]]  # the receiver names it
                    figures = {"target_rate": rate, **_step_figures(state, sent_rate, n)}
                    ramp.append(figures)
                    ok = (figures["dropped"] == 0 and figures["received"] == n and sent_rate >= 0.95 * rate
                          and figures["published_rate"] >= 0.95 * rate)
                    log.info("rate %.0f/s: sent %.0f/s, published %.0f/s, dropped %d, p99 %.3f s -> %s", rate,
                             sent_rate, figures["published_rate"], figures["dropped"], figures["latency_p99_s"],
                             "sustained" if ok else "not sustained")
                    if not ok:
                        break
                    best = figures
                    rate *= RAMP_FACTOR
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
        "workers": workers,
        "detector": args.detector,
        "compressed_mb_per_frame": compressed_bytes / 1e6,
        "first_unsustained_rate": ramp[-1]["target_rate"] if ramp and ramp[-1] is not best else None,
        "ramp": ramp,
    }
