"""`xtalstream bench decode`: receive + decompress throughput of bslz4 uint32 frames.

A realistic frame (Poisson background of 0.3 photons/pixel, ~400 Gaussian spots, the module
gaps of an EIGER2 X 4M or 16M at 0xFFFFFFFF, as the detector sends them) of 2068x2162 (4M) or
4148x4362 (16M) pixels is compressed once as a DECTRIS detector does (bitshuffle-LZ4, 8 kB
blocks). A `DetectorSender` thread streams it N times (stream v1) to a `Receiver`, which
decodes every frame into one reused buffer; the same is done over ipc:// and tcp://127.0.0.1.
The baseline is a memory-bandwidth copy of the decoded frame (`tools.bench.memcopy`),
measured in the same run: memcpy_ratio = our frames/s over memory-copy frames/s (1.0 would
be "as fast as copying the pixels"). Figures only, never pass/fail.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from streamer import codec_backends, codecs
from streamer.config import ReceiverConfig
from streamer.detector_presets import load_preset
from streamer.receiver import Receiver
from streamer.sender import DetectorSender
from streamer.series import EncodedFrame, SeriesInfo
from tools.bench.memcopy import memory_copy_rate

PRESETS = {"4M": "eiger2_4m", "16M": "eiger2_16m"}  # the detectors the benchmark frames come from
SHAPES = {detector: load_preset(name).shape for detector, name in PRESETS.items()}  # numpy order (slow, fast)


def add_arguments(parser: Any) -> None:
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per transport (default 200 for 4M, 60 for 16M)")
    parser.add_argument("--threads", type=int, default=1,
                        help="OpenMP threads of the bitshuffle decoder (codec_backends.set_decode_threads)")
    parser.add_argument("--backend", choices=codec_backends.available_backends(), default=None,
                        help=f"decoder back-end (default {codec_backends.fastest_backend('bslz4')})")


def gap_mask(detector: str) -> np.ndarray:
    """The pixel mask an EIGER2 4M or 16M announces in its series header: the module gaps flagged
    (bit 0), uint32 (slow, fast)."""
    return load_preset(PRESETS[detector]).gap_mask()


def realistic_frame(detector: str, seed: int = 0, background: float = 0.3, n_spots: int = 400) -> np.ndarray:
    """uint32 frame of an EIGER2 4M or 16M: Poisson background, sparse Gaussian spots, module
    gaps at the all-ones value."""
    rng = np.random.default_rng(seed)
    preset = load_preset(PRESETS[detector])
    frame = rng.poisson(background, size=preset.shape).astype("<u4")
    ny, nx = preset.shape
    yy, xx = np.mgrid[-3:4, -3:4]
    for _ in range(n_spots):
        y, x = rng.integers(4, ny - 4), rng.integers(4, nx - 4)
        peak = rng.lognormal(5, 1)
        spot = rng.poisson(peak * np.exp(-(xx**2 + yy**2) / 2.0)).astype("<u4")
        frame[y - 3:y + 4, x - 3:x + 4] += spot
    frame[preset.gap_mask() != 0] = 0xFFFFFFFF
    return frame


def _series(shape: tuple[int, int], n: int) -> SeriesInfo:
    return SeriesInfo(series_id="1", source="simulator", image_shape=shape, dtype="<u4", n_images=n,
                      frame_time_s=0.01, count_time_s=0.01, bit_depth_image=32)


def _decode_only_rate(frame: EncodedFrame, out: np.ndarray, n: int, backend: str) -> float:
    codecs.decode(frame, out=out, backend=backend)
    t0 = time.perf_counter()
    for _ in range(n):
        codecs.decode(frame, out=out, backend=backend)
    return n / (time.perf_counter() - t0)


def _stream_rate(url: str, series: SeriesInfo, blob: bytes, truth: np.ndarray, n: int, backend: str) -> float:
    """Frames/s of DetectorSender -> Receiver -> decode into a reused buffer (first frame not timed)."""
    ctx = zmq.Context()
    sender = DetectorSender(ctx, url, fmt="v1", sndhwm=8)
    receiver = Receiver(ctx, sender.endpoint, ReceiverConfig(rcvhwm=8, idle_timeout_s=30.0))
    out = np.empty(series.image_shape, dtype=series.dtype)

    def send() -> None:
        sender.send_start(series)
        for i in range(n + 1):
            sender.send_frame(EncodedFrame(series.series_id, i, series.image_shape, series.dtype, "bslz4", blob))
        sender.send_end()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    n_done, t0 = 0, None
    try:
        for event in receiver.events(timeout_s=30.0):
            if isinstance(event, EncodedFrame):
                codecs.decode(event, out=out, backend=backend)
                n_done += 1
                if n_done == 1:
                    t0 = time.perf_counter()
                    if not np.array_equal(out, truth):
                        raise AssertionError("decoded frame differs from the original")
            elif not isinstance(event, SeriesInfo):
                break
        elapsed = time.perf_counter() - t0 if t0 is not None else float("nan")
    finally:
        thread.join(timeout=30.0)
        receiver.close()
        sender.close()
        ctx.term()
    if n_done != n + 1:
        raise RuntimeError(f"received {n_done} of {n + 1} frames")
    return n / elapsed


def run(args: Any) -> dict[str, Any]:
    detector = getattr(args, "detector", "4M") or "4M"
    shape = SHAPES[detector]
    n = args.frames or (200 if detector == "4M" else 60)
    backend = getattr(args, "backend", None) or codec_backends.fastest_backend("bslz4")
    threads = getattr(args, "threads", 1) or 1
    codec_backends.set_decode_threads(threads)
    frame = realistic_frame(detector)
    blob = codecs.encode(frame, "bslz4")
    series = _series(shape, n + 1)
    encoded = EncodedFrame("1", 0, shape, "<u4", "bslz4", blob)
    out = np.empty(shape, dtype="<u4")
    copy_fps = 1.0 / memory_copy_rate(frame, n)[1]  # the median copy: robust to a slow outlier
    decode_only = {b: _decode_only_rate(encoded, out, max(10, n // 2), b) for b in codec_backends.available_backends()}
    with tempfile.TemporaryDirectory(prefix="xtal-bench-") as tmp:
        transports = {
            "ipc": _stream_rate(f"ipc://{Path(tmp) / 'decode.ipc'}", series, blob, frame, n, backend),
            "tcp": _stream_rate("tcp://127.0.0.1:*", series, blob, frame, n, backend),
        }
    gb = frame.nbytes / 1e9
    return {
        "frames_per_s": transports["ipc"],
        "gb_per_s": transports["ipc"] * gb,
        "memcpy_ratio": transports["ipc"] / copy_fps,
        "detector": detector,
        "frames": n,
        "backend": backend,
        "decode_threads": threads,
        "compression_ratio": frame.nbytes / len(blob),
        "memcpy_frames_per_s": copy_fps,
        "transports": {name: {"frames_per_s": fps, "gb_per_s": fps * gb, "memcpy_ratio": fps / copy_fps}
                       for name, fps in transports.items()},
        "decode_only_frames_per_s": decode_only,
    }
