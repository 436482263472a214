"""`xtalstream bench indexing`: time from the last image an indexing solution needs to a
published model, and time per re-refinement, on a simulated lysozyme sweep.

Spots come from `streamer.prediction.predict_rotation` (tetragonal lysozyme 78.9 x 78.9 x 36.9 A,
random orientation, 1024 x 1024 pixels of 0.172 mm at 150 mm, 1 A) with 0.3 px and 0.1 image
centroid noise, 10 % missing and 2 % random outliers, and fed image by image to an
`IncrementalIndexer` that starts from a beam centre 1 px and a distance 0.5 % off. Figures:
- model_s: wall time of the step that produced the first accepted model (from the arrival of
  the last image it needed to the model being ready to publish);
- refine_s_mean / refine_s_max: wall time of each re-refinement as the sweep grows;
- attempt_s_10k: one indexing attempt on about 10^4 spots (the size the brief asks about).
Figures only, never pass/fail. Timings are noisy on a shared machine.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def add_arguments(parser: Any) -> None:
    parser.add_argument("--images", type=int, default=60, help="images of 0.5 deg in the sweep (default 60)")
    parser.add_argument("--d-min", type=float, default=1.6, help="resolution of the simulated spots (A)")


def _sweep(n_images: int, d_min: float, seed: int = 3):
    from scipy.spatial.transform import Rotation

    from streamer.crystal import Crystal
    from streamer.geometry import Beam, Detector, Experiment, Goniometer, Scan
    from streamer.prediction import predict_rotation

    rng = np.random.default_rng(seed)
    det = Detector.from_beam_centre((513.0, 513.0), 150.0, (0.172, 0.172), (1024, 1024))
    crystal = Crystal.from_cell((78.9, 78.9, 36.9, 90, 90, 90), Rotation.random(random_state=seed).as_matrix(),
                                "P 43 21 2")
    truth = Experiment(Beam(1.0), det, Goniometer(), Scan(n_images, 0.0, 0.5), crystal)
    p = predict_rotation(truth, d_min)
    keep = rng.random(len(p)) > 0.1
    x = p.x_px[keep] + rng.normal(0, 0.3, keep.sum())
    y = p.y_px[keep] + rng.normal(0, 0.3, keep.sum())
    z = p.z[keep] + rng.normal(0, 0.1, keep.sum())
    n_out = int(0.02 * len(x))
    x = np.concatenate([x, rng.uniform(0, 1024, n_out)])
    y = np.concatenate([y, rng.uniform(0, 1024, n_out)])
    z = np.concatenate([z, rng.uniform(0, n_images, n_out)])
    start = truth.replace(crystal=None,
                          detector=Detector.from_beam_centre((514.0, 512.5), 150.75, (0.172, 0.172), (1024, 1024)))
    return truth, start, x, y, z


def run(args: Any) -> dict[str, Any]:
    from streamer.config import IndexingConfig
    from streamer.indexing import IncrementalIndexer, index_rotation
    from streamer.indexing.rlp import Spots

    truth, start, x, y, z = _sweep(args.images, args.d_min)
    indexer = IncrementalIndexer(start, IndexingConfig())
    image = np.floor(z).astype(int)
    model_s = None
    model_image = None
    refine_times = []
    for i in range(args.images):
        sel = image == i
        indexer.add_spots({"x_px": x[sel], "y_px": y[sel], "z_image": z[sel]}, images_seen=i + 1)
        t0 = time.perf_counter()
        update = indexer.step()
        dt = time.perf_counter() - t0
        if update is None:
            continue
        if update.kind == "indexed" and model_s is None:
            model_s, model_image = dt, i + 1
        elif update.kind == "refined":
            refine_times.append(dt)
    summary = indexer.summary()
    # one attempt on ~10^4 spots
    n10k = np.searchsorted(np.sort(z), np.sort(z)[min(len(z), 10000) - 1], side="right")
    first = np.argsort(z)[:n10k]
    t0 = time.perf_counter()
    attempt = index_rotation(start, Spots(x[first], y[first], z[first]))
    attempt_s = time.perf_counter() - t0
    return {
        "model_s": model_s,
        "refine_s_mean": float(np.mean(refine_times)) if refine_times else None,
        "refine_s_max": float(np.max(refine_times)) if refine_times else None,
        "attempt_s_10k": attempt_s,
        "attempt_spots": int(n10k),
        "attempt_indexed": bool(attempt.indexed),
        "model_image": model_image,
        "n_refinements": len(refine_times),
        "n_spots": int(len(z)),
        "lattice": summary["lattice"],
        "unit_cell": summary["unit_cell"],
        "rmsd_px": summary["rmsd_px"],
        "fraction_indexed": summary["fraction_indexed"],
    }
