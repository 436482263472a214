"""`xtalstream bench perimage`: one core, decode + threshold + label + centroid (+ statistics) per frame.

The frame is `tools.bench.decode.realistic_frame` (Poisson background 0.3 photons/pixel, ~400
spots, module gaps at the all-ones value) of 2068x2162 (4M) or 4148x4362 (16M) uint32
pixels, bitshuffle-LZ4 compressed as a DECTRIS detector sends it. Each timed iteration
decodes it into a reused buffer and runs the series' `ImageAnalyser.analyse` (threshold,
labelling, centroids, filters and the per-image statistics): frames_per_s. memcpy_ratio is
that rate over `np.copyto` of the decoded frame in the same run. dials_ratio (only when
`dials.find_spots` is on PATH and ../shared holds the thaumatin images): DIALS 3.12's
in-process spot finding (`do_spotfinding`, one core, reading + thresholding + labelling +
centroids) on a real PILATUS 6M CBF against ours on the same image (fabio read + analyse),
frames/s over frames/s. Figures only, never pass/fail.
"""

from __future__ import annotations

import bz2
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamer import codecs
from streamer.config import Config, load_config
from streamer.perimage import ImageAnalyser
from streamer.series import EncodedFrame, SeriesInfo
from tools.bench.decode import SHAPES, realistic_frame

SHARED_THAUMATIN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real-images" / "thaumatin_grid"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--frames", type=int, default=None, help="timed frames (default 40 for 4M, 10 for 16M)")
    parser.add_argument("--algorithm", choices=["dispersion_extended", "dispersion"], default=None,
                        help="threshold algorithm (default: the configuration's, DIALS's dispersion_extended)")
    parser.add_argument("--no-dials", action="store_true", help="skip the DIALS comparison")


def _series(shape: tuple[int, int]) -> SeriesInfo:
    return SeriesInfo(series_id="bench", source="simulator", image_shape=shape, dtype="<u4", n_images=1000,
                      pixel_size_mm=(0.075, 0.075), beam_centre_px=(shape[1] / 2, shape[0] / 2), distance_mm=150.0,
                      wavelength_A=1.0, saturation_value=2**32 - 2, bit_depth_image=32)


def _best_rate(func, n: int) -> tuple[float, float]:
    """(frames/s over n calls, median seconds per call)."""
    func()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return n / sum(times), float(np.median(times))


DIALS_SCRIPT = textwrap.dedent("""
    import sys, time
    from dials.command_line.find_spots import phil_scope, do_spotfinding
    from dxtbx.model.experiment_list import ExperimentListFactory
    experiments = ExperimentListFactory.from_filenames([sys.argv[1]])
    params = phil_scope.extract()
    params.spotfinder.mp.nproc = 1
    params.spotfinder.threshold.algorithm = sys.argv[2]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        do_spotfinding(experiments, params)
        times.append(time.perf_counter() - t0)
    print(sorted(times)[1])
""")


def dials_comparison(algorithm: str, config: Config) -> dict[str, Any]:
    """DIALS in-process spot finding vs ours on one real PILATUS 6M image, or a note why not."""
    if shutil.which("dials.find_spots") is None:
        return {"dials_note": "dials.find_spots not on PATH: no DIALS comparison"}
    source = SHARED_THAUMATIN / "thau_3_2_0003.cbf.bz2"
    if not source.is_file():
        return {"dials_note": f"{source} absent: no DIALS comparison"}
    from streamer.sources.image_files import ImageSeriesSource

    with tempfile.TemporaryDirectory(prefix="xtal-bench-dials-") as tmp:
        cbf = Path(tmp) / "thau_3_2_0003.cbf"
        with bz2.open(source) as src, open(cbf, "wb") as dst:
            shutil.copyfileobj(src, dst)
        env_python = "/usr/bin/python3"
        proc = subprocess.run([env_python, "-c", DIALS_SCRIPT, str(cbf), algorithm], capture_output=True, text=True,
                              timeout=600, cwd=tmp, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
        if proc.returncode != 0:
            return {"dials_note": f"DIALS run failed: {proc.stderr.strip().splitlines()[-1:]}"}
        dials_s = float(proc.stdout.strip().splitlines()[-1])
        source_images = ImageSeriesSource([cbf])
        analyser = ImageAnalyser(source_images.info, config)
        _, ours_s = _best_rate(lambda: analyser.analyse(source_images.pixels(0), 0), 3)
        image = source_images.pixels(0)
        _, analyse_s = _best_rate(lambda: analyser.analyse(image, 0), 5)
    return {"dials_ratio": dials_s / ours_s, "dials_s_per_frame_6M": dials_s, "ours_s_per_frame_6M": ours_s,
            "ours_analyse_only_s_per_frame_6M": analyse_s,
            "dials_note": "same real PILATUS 6M image, one core each; both include reading the CBF"}


def run(args: Any) -> dict[str, Any]:
    detector = getattr(args, "detector", "4M") or "4M"
    shape = SHAPES[detector]
    n = getattr(args, "frames", None) or (40 if detector == "4M" else 10)
    config = load_config(getattr(args, "config", None))
    algorithm = getattr(args, "algorithm", None) or config.spotfinding.algorithm
    config = config.model_copy(update={"spotfinding": config.spotfinding.model_copy(update={"algorithm": algorithm})})
    frame = realistic_frame(shape)
    blob = codecs.encode(frame, "bslz4")
    encoded = EncodedFrame("bench", 0, shape, "<u4", "bslz4", blob)
    buffer = np.empty(shape, dtype="<u4")
    analyser = ImageAnalyser(_series(shape), config)
    copy_out = np.empty_like(frame)

    def whole() -> None:
        analyser.analyse(codecs.decode(encoded, out=buffer), 0)

    copy_fps, copy_s = _best_rate(lambda: np.copyto(copy_out, frame), n)
    fps, median_s = _best_rate(whole, n)
    _, decode_s = _best_rate(lambda: codecs.decode(encoded, out=buffer), n)
    _, threshold_s = _best_rate(lambda: analyser.strong(buffer), n)
    result = analyser.analyse(buffer, 0)
    figures: dict[str, Any] = {
        "frames_per_s": fps,
        "memcpy_ratio": fps / copy_fps,
        "detector": detector,
        "algorithm": algorithm,
        "frames": n,
        "ms_per_frame_median": median_s * 1e3,
        "decode_ms": decode_s * 1e3,
        "threshold_ms": threshold_s * 1e3,
        "memcpy_ms": copy_s * 1e3,
        "spots": result.n_spots,
        "strong_pixels": result.strong_pixels,
    }
    if not getattr(args, "no_dials", False):
        figures.update(dials_comparison(algorithm, config))
    return figures
