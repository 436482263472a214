"""`bench perimage`'s comparison with DIALS 3.12: `dials.find_spots`'s own spot finding, in process.

DIALS runs under Debian's /usr/bin/python3 (it is not importable from our venv), one core
(nproc=1, OMP_NUM_THREADS=1), through `do_spotfinding` as `dials.find_spots` calls it. Two sets
of frames:
- `same_frames`: the benchmark's own frames, which DIALS reads as EIGER2 miniCBFs (its
  FormatCBFMiniEiger: the module gaps masked from the detector model, the gap pixels' all-ones
  value, -1 as int32, below the trusted range) while we decode them from bitshuffle-LZ4 as the
  detector sends them. The spot counts of the two must agree: same algorithm, same parameters.
- `thaumatin_6m`: real PILATUS 6M CBFs from ../shared, read by both sides from the file.
dxtbx keeps the last image it read twice over: in the ImageSet (`get_raw_data` and
`get_raw_data_as_double` caches) and in the Format instance of the last file
(`Format.get_instance`, its `_raw_data`). `do_spotfinding` on a one-image ImageSet reuses that
ImageSet, so repeating it times no reading, decompression or conversion to double at all. Hence
two figures each:
- dials_ratio: DIALS reads and decompresses every image (both caches dropped before each call
  of N one-image imagesets), as `dials.find_spots` on new images does; ours decodes each frame.
- dials_ratio_in_memory: neither reads (DIALS: a one-image call repeated, served from its caches
  as double; ours: `find_spots` of decoded pixels).
Ours is `ImageAnalyser.find_spots`: threshold, labelling, centroids and spot filters, what
`do_spotfinding` does. dials_ratio_with_statistics times `analyse` instead, which adds the
per-image statistics and radial profile that DIALS computes in no spot finding call.
Per-series set-up is left out of both per-image times and reported on its own: DIALS's
`generate_mask` (once per imageset, i.e. per still image here, subtracted from its time) and
our `ImageAnalyser(...)`. Figures only, never pass/fail.
"""

from __future__ import annotations

import bz2
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from streamer.config import Config
from streamer.perimage import ImageAnalyser
from streamer.series import EncodedFrame, SeriesInfo
from tools.bench.timing import median_s

THAUMATIN = Path("data") / "real-images" / "thaumatin_grid"


def shared_thaumatin() -> Path:
    """The real thaumatin CBFs of ../shared: $XTALSTREAM_SHARED if set, else `shared` beside
    the working directory or beside the source tree (an installed, non-editable package lives
    in site-packages, far from it): the first that holds them, else the last tried."""
    override = os.environ.get("XTALSTREAM_SHARED")
    if override:
        return Path(override) / THAUMATIN
    candidates = [Path.cwd().parent / "shared", Path.cwd() / "shared",
                  Path(__file__).resolve().parents[2].parent / "shared"]
    for root in candidates:
        if (root / THAUMATIN).is_dir():
            return root / THAUMATIN
    return candidates[-1] / THAUMATIN


# Prints one JSON line: seconds per do_spotfinding call, with and without reading, and what each
# call read.
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



def run_dials(paths: list[Path], algorithm: str, repeats: int, cwd: str) -> dict[str, Any]:
    """DIALS_SCRIPT on `paths` (one imageset each), or {"error": why}."""
    proc = subprocess.run(["/usr/bin/python3", "-c", DIALS_SCRIPT, algorithm, str(repeats), *map(str, paths)],
                          capture_output=True, text=True, timeout=1800, cwd=cwd,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    if proc.returncode != 0:
        return {"error": f"DIALS run failed: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _per_image(dials: dict[str, Any], n: int) -> tuple[float, float]:
    """DIALS seconds per image (reading, in memory); generate_mask runs once per imageset, not per image."""
    return dials["fresh_call_s"] / n - dials["mask_setup_s"], dials["cached_call_s"] - dials["mask_setup_s"]


def _missing_dials() -> str | None:
    return "dials.find_spots not on PATH: no DIALS comparison" if shutil.which("dials.find_spots") is None else None


def write_eiger_cbf(path: Path, frame: np.ndarray, series: SeriesInfo, detector: str) -> Path:
    """`frame` (uint32) as an EIGER miniCBF with the series' geometry, which dxtbx reads with
    FormatCBFMiniEiger (it masks the module gaps from the detector size; the all-ones gap
    pixels are -1 as int32)."""
    import fabio.cbfimage

    beam_x, beam_y = series.beam_centre_px
    header = "\n".join([
        f"# Detector: Dectris EIGER2 X {detector}, S/N E-00-0000",
        f"# Pixel_size {series.pixel_size_mm[0] * 1e-3:g} m x {series.pixel_size_mm[1] * 1e-3:g} m",
        "# Silicon sensor, thickness 0.000450 m",
        f"# Exposure_time {series.count_time_s:.6f} s",
        f"# Exposure_period {series.frame_time_s:.6f} s",
        f"# Count_cutoff {series.saturation_value} counts",
        f"# Wavelength {series.wavelength_A:.5f} A",
        f"# Detector_distance {series.distance_mm * 1e-3:.5f} m",
        f"# Beam_xy ({beam_x:.2f}, {beam_y:.2f}) pixels",
        "# Start_angle 0.0000 deg.",
        "# Angle_increment 0.0000 deg.",
    ])
    fabio.cbfimage.CbfImage(data=np.ascontiguousarray(frame).view(np.int32),
                            header={"_array_data.header_convention": '"PILATUS_1.2"',
                                    "_array_data.header_contents": header}).write(str(path))
    return path


def same_frames(frames: list[np.ndarray], encoded: list[EncodedFrame], series: SeriesInfo, config: Config,
                detector: str, repeats: int = 3) -> dict[str, Any]:
    """DIALS on the benchmark's own frames (as EIGER miniCBFs) against ours on the same frames
    (bitshuffle-LZ4, decoded as a worker does), or a note why not."""
    missing = _missing_dials()
    if missing:
        return {"dials_note": missing}
    analyser = ImageAnalyser(series, config)
    buffer = np.empty(series.image_shape, dtype=series.dtype)
    n = len(frames)
    spots: list[int] = []

    def stream() -> None:
        spots.clear()
        for i, frame in enumerate(encoded):
            image, source = analyser.prepare(frame, buffer)
            spots.append(len(analyser.find_spots(image, i, source)[1]))

    def stream_with_statistics() -> None:
        for i, frame in enumerate(encoded):
            image, source = analyser.prepare(frame, buffer)
            analyser.analyse(image, i, source)

    ours_s = median_s(stream, repeats) / n
    ours_statistics_s = median_s(stream_with_statistics, repeats) / n
    decoded = [analyser.check(frame) for frame in frames]
    ours_memory_s = median_s(lambda: [analyser.find_spots(image, i) for i, image in enumerate(decoded)], repeats) / n
    with tempfile.TemporaryDirectory(prefix="xtal-bench-dials-") as tmp:
        cbfs = [write_eiger_cbf(Path(tmp) / f"bench_{i + 1:04d}.cbf", frame, series, detector)
                for i, frame in enumerate(frames)]
        dials = run_dials(cbfs, config.spotfinding.algorithm, repeats, tmp)
    if "error" in dials:
        return {"dials_note": dials["error"]}
    dials_s, dials_memory_s = _per_image(dials, n)
    return {
        "dials_ratio": dials_s / ours_s,
        "dials_ratio_in_memory": dials_memory_s / ours_memory_s,
        "dials_ratio_with_statistics": dials_s / ours_statistics_s,
        "dials_frames": n,
        "dials_s_per_frame": dials_s,
        "ours_s_per_frame": ours_s,
        "ours_with_statistics_s_per_frame": ours_statistics_s,
        "dials_in_memory_s_per_frame": dials_memory_s,
        "ours_in_memory_s_per_frame": ours_memory_s,
        "dials_read_ms": dials["read_s"] * 1e3,
        "dials_setup_s": dials["mask_setup_s"],
        "dials_spots_per_frame": dials["spots"] / n,
        "ours_spots_per_frame": sum(spots) / n,
        "dials_note": (f"the same {n} {detector} frames, one core each, per-series set-up excluded; dials_ratio: "
                       "DIALS reads each as an EIGER miniCBF, we decode its bitshuffle-LZ4; "
                       "dials_ratio_in_memory: neither reads"),
    }


def _ours(cbfs: list[Path], config: Config, repeats: int) -> dict[str, float]:
    """Our seconds per image on the same CBFs: read + find spots (and + statistics), find spots
    only, read only; set-up."""
    import fabio

    from streamer.sources.image_files import ImageSeriesSource

    source = ImageSeriesSource(cbfs)
    n = len(cbfs)
    setup_s = median_s(lambda: ImageAnalyser(source.info, config), min(repeats, 3))
    analyser = ImageAnalyser(source.info, config)
    buffer = np.empty(source.info.image_shape, dtype=source.info.dtype)
    spots = []

    def read_and_find() -> None:
        spots.clear()
        for i in range(n):
            spots.append(len(analyser.find_spots(source.pixels(i, out=buffer), i)[1]))

    def read_and_analyse() -> None:
        for i in range(n):
            analyser.analyse(source.pixels(i, out=buffer), i)

    with_reading_s = median_s(read_and_find, repeats) / n
    with_statistics_s = median_s(read_and_analyse, repeats) / n
    images = [source.pixels(i) for i in range(n)]
    in_memory_s = median_s(lambda: [analyser.find_spots(image, i) for i, image in enumerate(images)], repeats) / n
    read_s = float(np.mean([median_s(lambda i=i: source.pixels(i, out=buffer), repeats) for i in range(n)]))
    fabio_s = float(np.mean([median_s(lambda p=p: fabio.open(str(p)).data, repeats) for p in cbfs]))
    return {"with_reading_s": with_reading_s, "with_statistics_s": with_statistics_s, "in_memory_s": in_memory_s,
            "read_s": read_s, "fabio_read_s": fabio_s, "setup_s": setup_s, "spots": sum(spots)}



def thaumatin_6m(config: Config, n_images: int = 5, repeats: int = 3) -> dict[str, Any]:
    """DIALS vs ours on the first `n_images` real PILATUS 6M CBFs (both read the files), keys
    *_6M, or a note why not."""
    missing = _missing_dials()
    if missing:
        return {"dials_note_6M": missing}
    folder = shared_thaumatin()
    sources = sorted(folder.glob("thau_3_2_*.cbf.bz2"))[:n_images]
    if not sources:
        return {"dials_note_6M": f"no thau_3_2_*.cbf.bz2 in {folder} (set XTALSTREAM_SHARED): no DIALS comparison"}
    with tempfile.TemporaryDirectory(prefix="xtal-bench-dials-") as tmp:
        cbfs = []
        for source in sources:
            cbfs.append(Path(tmp) / source.name.removesuffix(".bz2"))
            with bz2.open(source) as src, open(cbfs[-1], "wb") as dst:
                shutil.copyfileobj(src, dst)
        dials = run_dials(cbfs, config.spotfinding.algorithm, repeats, tmp)
        if "error" in dials:
            return {"dials_note_6M": dials["error"]}
        ours = _ours(cbfs, config, repeats)
    n = len(cbfs)
    dials_s, dials_memory_s = _per_image(dials, n)
    return {
        "dials_ratio_6M": dials_s / ours["with_reading_s"],
        "dials_ratio_in_memory_6M": dials_memory_s / ours["in_memory_s"],
        "dials_ratio_with_statistics_6M": dials_s / ours["with_statistics_s"],
        "dials_images_6M": n,
        "dials_s_per_frame_6M": dials_s,
        "ours_s_per_frame_6M": ours["with_reading_s"],
        "ours_with_statistics_s_per_frame_6M": ours["with_statistics_s"],
        "dials_in_memory_s_per_frame_6M": dials_memory_s,
        "ours_in_memory_s_per_frame_6M": ours["in_memory_s"],
        "dials_read_ms_6M": dials["read_s"] * 1e3,
        "ours_read_ms_6M": ours["read_s"] * 1e3,
        "fabio_read_ms_6M": ours["fabio_read_s"] * 1e3,
        "dials_setup_s_6M": dials["mask_setup_s"],
        "ours_setup_s_6M": ours["setup_s"],
        "dials_reads_per_frame_6M": dials["fresh_reads_per_call"] / n,
        "dials_in_memory_reads_per_frame_6M": dials["cached_reads_per_call"],
        "dials_spots_per_frame_6M": dials["spots"] / n,
        "ours_spots_per_frame_6M": ours["spots"] / n,
        "dials_note_6M": (f"same {n} real PILATUS 6M CBFs, one core each, per-series set-up excluded; both read "
                          "and decompress each CBF (in memory: neither does)"),
    }
