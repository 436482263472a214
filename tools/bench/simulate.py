"""`xtalstream bench simulate`: simulator frames/s on one core.

Sweep: the lysozyme preset on an EIGER2 X 4M (or 16M) preset, 0.1 deg images, default
background (sparse: ~0.01 photons/pixel) and zingers. After set-up (prediction, partialities,
alias table: `setup_s`), times `frame(i)` for `--frames` images (generate-only:
`frames_per_s`) and `frame(i)` + bitshuffle-LZ4 compression as the detector sends it
(`frames_per_s_compressed`). Also reports the mean spot photons and compressed size per frame.
Figures only, never pass/fail. numba's threads are not used (one core).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from streamer import codecs
from tools.simulator.sweep import Simulation, SimulationSpec

DETECTORS = {"4M": "eiger2_4m", "16M": "eiger2_16m"}


def add_arguments(parser: Any) -> None:
    parser.add_argument("--frames", type=int, default=100, help="timed frames (default 100)")


def run(args: Any) -> dict:
    n = int(args.frames)
    spec = SimulationSpec(detector=DETECTORS[args.detector], n_images=n + 1, seed=3, d_min=1.6, b_factor=15.0)
    sim = Simulation(spec)
    sim.frame(0)  # compile / warm up
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        sim.frame(i)
    generate = time.perf_counter() - t0
    sizes = []
    t0 = time.perf_counter()
    for i in range(1, n + 1):
        sizes.append(len(codecs.encode(sim.frame(i), "bslz4")))
    both = time.perf_counter() - t0
    rows = [sim.rows_of_image(i) for i in range(1, n + 1)]
    return {
        "frames_per_s": n / generate,
        "frames_per_s_compressed": n / both,
        "detector": sim.preset.name,
        "pixels": int(np.prod(sim.preset.shape)),
        "setup_s": sim.setup_s,
        "reflections_per_frame": float(np.mean([r.stop - r.start for r in rows])),
        "background_photons_per_frame": sim.background.total,
        "compressed_bytes_per_frame": float(np.mean(sizes)),
        "frames": n,
    }
