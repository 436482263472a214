"""`xtalstream bench perimage`: one core, decode + threshold + label + centroid (+ statistics) per frame.

The frame is `tools.bench.decode.realistic_frame` (Poisson background 0.3 photons/pixel, ~400
spots, module gaps at the all-ones value) of 2068x2162 (4M) or 4148x4362 (16M) uint32
pixels, bitshuffle-LZ4 compressed as a DECTRIS detector sends it. Each timed iteration
decodes it as a worker does (`ImageAnalyser.prepare`: band by band inside the threshold pass,
into a reused buffer; decoded_in_pass says whether the timed frames were) and runs the
series' `ImageAnalyser.analyse` (threshold,
labelling, centroids, filters and the per-image statistics): frames_per_s. memcpy_ratio is
that rate over `np.copyto` of the decoded frame in the same run. decode_ms (a whole frame,
the fastest decoder) and threshold_ms (of a decoded frame) are the parts on their own.

dials_ratio (only when `dials.find_spots` is on PATH and ../shared holds the thaumatin images):
DIALS 3.12's in-process spot finding (`do_spotfinding`, nproc=1, OMP_NUM_THREADS=1) against
ours (`ImageSeriesSource.pixels` + `ImageAnalyser.analyse`) on the same real PILATUS 6M CBFs,
seconds per image over seconds per image, one core each. dxtbx keeps the last image it read
twice over: in the ImageSet (`get_raw_data` and `get_raw_data_as_double` caches) and in the
Format instance of the last file (`Format.get_instance`, its `_raw_data`). `do_spotfinding` on a
one-image ImageSet reuses that ImageSet, so repeating it times no reading, decompression or
conversion to double at all (the old figure, 0.33 s, was such a repeat). Hence two figures:
- dials_ratio: both read and decompress every CBF from the file (DIALS: both caches dropped
  before each call of N one-image imagesets; ours: `pixels(i)` from the file each time), as
  `dials.find_spots` on new images does.
- dials_ratio_in_memory: neither reads (DIALS: a one-image call repeated, served from its
  caches as double; ours: `analyse` of decoded pixels).
Per-series set-up is left out of both per-image times and reported on its own: DIALS's
`generate_mask` (once per imageset, i.e. per still image here, subtracted from its time) and
our `ImageAnalyser(...)`. Figures only, never pass/fail.
"""

from __future__ import annotations

import bz2
import json
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np

from streamer import codecs
from streamer.allocator import keep_freed_memory
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
    parser.add_argument("--dials-images", type=int, default=5, help="real 6M CBFs in the DIALS comparison (1-19)")
    parser.add_argument("--dials-repeats", type=int, default=3, help="timed repeats in the DIALS comparison")


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


# Runs under Debian's /usr/bin/python3 (DIALS is not importable from our venv). Prints one JSON
# line: seconds per do_spotfinding call, with and without reading, and what each call read.
DIALS_SCRIPT = textwrap.dedent("""
    import json, statistics, sys, time
    import libtbx.phil
    from dials.command_line.find_spots import do_spotfinding, working_phil
    from dials.util.masking import generate_mask
    from dxtbx.model.experiment_list import ExperimentList, ExperimentListFactory

    algorithm, repeats, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    # The parameters as dials.find_spots builds them (fetch, then extract). A bare
    # phil_scope.extract() keeps one empty `spotfinder.filter.untrusted` region, which masks the
    # whole detector: no strong pixel at all.
    overrides = f"spotfinder.mp.nproc=1\\nspotfinder.threshold.algorithm={algorithm}"
    params = working_phil.fetch(sources=[libtbx.phil.parse(overrides)]).extract()
    assert not params.spotfinder.filter.untrusted, params.spotfinder.filter.untrusted
    # One imageset per still, as `dials.import` of each file gives (imported together, these
    # zero-width images make one 5-image sequence in which DIALS 3.12 keeps no spot at all).
    singles = [ExperimentListFactory.from_filenames([p]) for p in paths]
    sweep = ExperimentList()
    for single in singles:
        sweep.extend(single)
    imageset = sweep.imagesets()[0]
    format_class = imageset.get_format_class()
    reads = [0]
    if hasattr(format_class, "_read_cbf_image"):  # count CBF reads + decompressions
        read_cbf = format_class._read_cbf_image
        def counted(self, *args, **kwargs):
            reads[0] += 1
            return read_cbf(self, *args, **kwargs)
        format_class._read_cbf_image = counted

    def drop_caches(experiments):
        for iset in experiments.imagesets():
            iset.clear_cache()
        format_class._current_instance_ = None
        format_class._current_filename_ = None

    def call(experiments, fresh):
        if fresh:
            drop_caches(experiments)
        before = reads[0]
        t0 = time.perf_counter()
        result = do_spotfinding(experiments, params)
        return time.perf_counter() - t0, reads[0] - before, len(result)

    def median_call(experiments, fresh):
        call(experiments, fresh)  # warm-up (and, for a cached run, the one read)
        runs = [call(experiments, fresh) for _ in range(repeats)]
        return statistics.median(r[0] for r in runs), runs[-1][1], runs[-1][2]

    def median_s(func):
        func()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            func()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    fresh_s, fresh_reads, fresh_spots = median_call(sweep, True)
    cached = [median_call(single, False) for single in singles]

    def read_one():
        drop_caches(sweep)
        imageset.get_raw_data(0)

    print(json.dumps({
        "images": len(paths), "repeats": repeats,
        "fresh_call_s": fresh_s, "fresh_reads_per_call": fresh_reads, "spots": fresh_spots,
        "cached_call_s": statistics.mean(c[0] for c in cached),
        "cached_reads_per_call": max(c[1] for c in cached),
        "mask_setup_s": median_s(lambda: generate_mask(imageset, params.spotfinder.filter)),
        "read_s": median_s(read_one),
    }))
""")


def _median_s(func, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    return _best_rate(func, repeats)[1]


def _run_dials(cbfs: list[Path], algorithm: str, repeats: int, cwd: str) -> dict[str, Any]:
    proc = subprocess.run(["/usr/bin/python3", "-c", DIALS_SCRIPT, algorithm, str(repeats), *map(str, cbfs)],
                          capture_output=True, text=True, timeout=1800, cwd=cwd,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        return {"error": f"DIALS run failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ours(cbfs: list[Path], config: Config, repeats: int) -> dict[str, float]:
    """Our seconds per image on the same CBFs: read + analyse, analyse only, read only; set-up."""
    import fabio

    from streamer.sources.image_files import ImageSeriesSource

    source = ImageSeriesSource(cbfs)
    n = len(cbfs)
    setup_s = _median_s(lambda: ImageAnalyser(source.info, config), min(repeats, 3))
    analyser = ImageAnalyser(source.info, config)
    buffer = np.empty(source.info.image_shape, dtype=source.info.dtype)
    spots = []

    def read_and_analyse() -> None:
        spots.clear()
        for i in range(n):
            spots.append(analyser.analyse(source.pixels(i, out=buffer), i).n_spots)

    with_reading_s = _median_s(read_and_analyse, repeats) / n
    images = [source.pixels(i) for i in range(n)]
    analyse_s = _median_s(lambda: [analyser.analyse(image, i) for i, image in enumerate(images)], repeats) / n
    read_s = float(np.mean([_median_s(lambda i=i: source.pixels(i, out=buffer), repeats) for i in range(n)]))
    fabio_s = float(np.mean([_median_s(lambda p=p: fabio.open(str(p)).data, repeats) for p in cbfs]))
    return {"with_reading_s": with_reading_s, "analyse_s": analyse_s, "read_s": read_s, "fabio_read_s": fabio_s,
            "setup_s": setup_s, "spots": sum(spots)}


def dials_comparison(algorithm: str, config: Config, n_images: int = 5, repeats: int = 3) -> dict[str, Any]:
    """DIALS's in-process spot finding vs ours on the first `n_images` real PILATUS 6M CBFs, or a note why not."""
    if shutil.which("dials.find_spots") is None:
        return {"dials_note": "dials.find_spots not on PATH: no DIALS comparison"}
    sources = sorted(SHARED_THAUMATIN.glob("thau_3_2_*.cbf.bz2"))[:n_images]
    if not sources:
        return {"dials_note": f"no thau_3_2_*.cbf.bz2 in {SHARED_THAUMATIN}: no DIALS comparison"}
    with tempfile.TemporaryDirectory(prefix="xtal-bench-dials-") as tmp:
        cbfs = []
        for source in sources:
            cbfs.append(Path(tmp) / source.name.removesuffix(".bz2"))
            with bz2.open(source) as src, open(cbfs[-1], "wb") as dst:
                shutil.copyfileobj(src, dst)
        dials = _run_dials(cbfs, algorithm, repeats, tmp)
        if "error" in dials:
            return {"dials_note": dials["error"]}
        ours = _ours(cbfs, config, repeats)
    n = len(cbfs)
    dials_s = dials["fresh_call_s"] / n - dials["mask_setup_s"]  # generate_mask runs once per imageset
    dials_cached_s = dials["cached_call_s"] - dials["mask_setup_s"]
    return {
        "dials_ratio": dials_s / ours["with_reading_s"],
        "dials_ratio_in_memory": dials_cached_s / ours["analyse_s"],
        "dials_images_6M": n,
        "dials_s_per_frame_6M": dials_s,
        "ours_s_per_frame_6M": ours["with_reading_s"],
        "dials_in_memory_s_per_frame_6M": dials_cached_s,
        "ours_analyse_only_s_per_frame_6M": ours["analyse_s"],
        "dials_read_ms_6M": dials["read_s"] * 1e3,
        "ours_read_ms_6M": ours["read_s"] * 1e3,
        "fabio_read_ms_6M": ours["fabio_read_s"] * 1e3,
        "dials_setup_s_6M": dials["mask_setup_s"],
        "ours_setup_s_6M": ours["setup_s"],
        "dials_reads_per_frame": dials["fresh_reads_per_call"] / n,
        "dials_in_memory_reads_per_frame": dials["cached_reads_per_call"],
        "dials_spots_per_frame": dials["spots"] / n,
        "ours_spots_per_frame": ours["spots"] / n,
        "dials_note": (f"same {n} real PILATUS 6M CBFs, one core each, per-series set-up excluded; dials_ratio: "
                       "both read and decompress each CBF; dials_ratio_in_memory: neither does"),
    }


def run(args: Any) -> dict[str, Any]:
    detector = getattr(args, "detector", "4M") or "4M"
    shape = SHAPES[detector]
    n = getattr(args, "frames", None) or (40 if detector == "4M" else 10)
    config = load_config(getattr(args, "config", None))
    algorithm = getattr(args, "algorithm", None) or config.spotfinding.algorithm
    config = config.model_copy(update={"spotfinding": config.spotfinding.model_copy(update={"algorithm": algorithm})})
    keep_freed_memory()  # as a worker process does: freed frame buffers are reused, not faulted in again
    frame = realistic_frame(shape)
    blob = codecs.encode(frame, "bslz4")
    encoded = EncodedFrame("bench", 0, shape, "<u4", "bslz4", blob)
    buffer = np.empty(shape, dtype="<u4")
    analyser = ImageAnalyser(_series(shape), config)
    copy_out = np.empty_like(frame)

    def whole() -> None:  # as a worker does: bslz4 frames are decoded band by band inside the threshold pass
        image, source = analyser.prepare(encoded, buffer)
        analyser.analyse(image, 0, source)

    copy_fps, copy_s = _best_rate(lambda: np.copyto(copy_out, frame), n)
    fps, median_s = _best_rate(whole, n)
    fused = analyser.workspace.last_fused
    _, decode_s = _best_rate(lambda: codecs.decode(encoded, out=buffer, allow_view=True), n)
    decoded = analyser.check(codecs.decode(encoded, out=buffer))  # read-only, as analyse hands it on
    _, threshold_s = _best_rate(lambda: analyser.strong(decoded), n)
    result = analyser.analyse(decoded, 0)
    figures: dict[str, Any] = {
        "frames_per_s": fps,
        "memcpy_ratio": fps / copy_fps,
        "detector": detector,
        "algorithm": algorithm,
        "frames": n,
        "ms_per_frame_median": median_s * 1e3,
        "decoded_in_pass": fused,
        "decode_ms": decode_s * 1e3,
        "threshold_ms": threshold_s * 1e3,
        "memcpy_ms": copy_s * 1e3,
        "spots": result.n_spots,
        "strong_pixels": result.strong_pixels,
    }
    if not getattr(args, "no_dials", False):
        figures.update(dials_comparison(algorithm, config, getattr(args, "dials_images", 5) or 5,
                                        getattr(args, "dials_repeats", 3) or 3))
    return figures
