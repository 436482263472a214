"""`xtalstream bench perimage`: one core, decode + threshold + label + centroid per frame.

The frames are `tools.bench.decode.realistic_frame`s (Poisson background 0.3 photons/pixel,
~400 spots, the module gaps of an EIGER2 X at the all-ones value; `--background`, `--spots`)
of 2068x2162 (4M) or 4148x4362 (16M) uint32 pixels, `--distinct` of them, bitshuffle-LZ4
compressed as a DECTRIS detector sends them (its series header carrying the pixel mask that
flags the gaps). Each timed iteration takes the next one and decodes it as a worker does
(`ImageAnalyser.prepare`: band by band inside the threshold pass, into a reused buffer;
decoded_in_pass says whether the timed frames were) and runs the series'
`ImageAnalyser.find_spots` (threshold, labelling, centroids, DIALS's spot filters: what the
contract's frames_per_s and `dials.find_spots` cover): frames_per_s, ms_per_frame_median.
analysis_ms_per_frame is the same with `ImageAnalyser.analyse`, which adds the per-image
statistics and radial background profile, as a worker does.

memcpy_ratio is the median time of a memory-bandwidth copy of a decoded frame in the same
run (`tools.bench.memcopy`: each copy reads and writes main memory) over our median time per
frame; medians, because a shared machine's slow outliers swing means. memcpy_hot_ms is the
same copy repeated between two buffers, which a 32 MB L3 partly holds (4M: 2 x 17.9 MB).
decode_ms (a whole frame, as a worker decodes it outside the pass) and threshold_ms (of a
decoded frame) are the parts on their own; bit_transpose names the bit transpose that
decodes the blocks (`streamer.band_decode.transpose_name`).

dials_ratio (when `dials.find_spots` is on PATH): DIALS 3.12's spot finding against ours on the
same frames, one core each (`tools.bench.dials_compare.same_frames`); the *_6M figures do the
same on real PILATUS 6M CBFs from ../shared (`thaumatin_6m`). Figures only, never pass/fail.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kernels.bslz4_native import decode_all
from streamer import band_decode, codecs
from streamer.allocator import keep_freed_memory
from streamer.config import load_config
from streamer.perimage import ImageAnalyser
from streamer.series import EncodedFrame, SeriesInfo
from tools.bench import dials_compare
from tools.bench.decode import SHAPES, gap_mask, realistic_frame
from tools.bench.memcopy import memory_copy_rate
from tools.bench.timing import best_rate


def add_arguments(parser: Any) -> None:
    parser.add_argument("--frames", type=int, default=None, help="timed frames (default 40 for 4M, 10 for 16M)")
    parser.add_argument("--distinct", type=int, default=5, help="distinct frames, taken in turn (also DIALS's)")
    parser.add_argument("--background", type=float, default=0.3,
                        help="mean background, photons per pixel (0.3: a fast EIGER frame; 10-20: long exposures)")
    parser.add_argument("--spots", type=int, default=400, help="spots per frame")
    parser.add_argument("--algorithm", choices=["dispersion_extended", "dispersion"], default=None,
                        help="threshold algorithm (default: the configuration's, DIALS's dispersion_extended)")
    parser.add_argument("--no-dials", action="store_true", help="skip the DIALS comparisons")
    parser.add_argument("--dials-images", type=int, default=5, help="real 6M CBFs in the DIALS comparison (0-19)")
    parser.add_argument("--dials-repeats", type=int, default=3, help="timed repeats in the DIALS comparisons")


def decode_whole(frame: EncodedFrame, out: np.ndarray) -> None:
    """Decode a whole frame as a worker does when it does not decode inside the pass: by the
    codec libraries' block functions (`kernels.bslz4_native`; for a 16M frame 7.6 ms against
    12 ms through `codecs.decode`), else through `codecs.decode`."""
    if band_decode.block_decoder_functions() is not None:
        if not decode_all(band_decode.bslz4_band_source(frame, out)):
            raise ValueError("bench frame does not decode")
    else:
        codecs.decode(frame, out=out, allow_view=True)


def series_for(shape: tuple[int, int], detector: str | None = None) -> SeriesInfo:
    """The benchmark series; with `detector` ("4M", "16M") its header carries that EIGER2's
    pixel mask with the module gaps flagged, as a DECTRIS detector's does (and as DIALS masks
    them in the comparison): the gap pixels are masked, not counted as overloads."""
    mask = gap_mask(detector) if detector is not None else None
    return SeriesInfo(series_id="bench", source="simulator", image_shape=shape, dtype="<u4", n_images=1000,
                      pixel_size_mm=(0.075, 0.075), beam_centre_px=(shape[1] / 2, shape[0] / 2), distance_mm=150.0,
                      wavelength_A=1.0, saturation_value=2**32 - 2, bit_depth_image=32,
                      count_time_s=0.01, frame_time_s=0.01, pixel_mask=mask)


def run(args: Any) -> dict[str, Any]:
    detector = getattr(args, "detector", "4M") or "4M"
    shape = SHAPES[detector]
    n = getattr(args, "frames", None) or (40 if detector == "4M" else 10)
    distinct = max(1, getattr(args, "distinct", 5) or 5)
    config = load_config(getattr(args, "config", None))
    algorithm = getattr(args, "algorithm", None) or config.spotfinding.algorithm
    config = config.model_copy(update={"spotfinding": config.spotfinding.model_copy(update={"algorithm": algorithm})})
    keep_freed_memory()  # as a worker process does: freed frame buffers are reused, not faulted in again
    background = getattr(args, "background", 0.3)
    n_spots = getattr(args, "spots", 400)
    frames = [realistic_frame(detector, seed=i, background=background, n_spots=n_spots) for i in range(distinct)]
    encoded = [EncodedFrame("bench", i, shape, "<u4", "bslz4", codecs.encode(frame, "bslz4"))
               for i, frame in enumerate(frames)]
    buffer = np.empty(shape, dtype="<u4")
    series = series_for(shape, detector)
    analyser = ImageAnalyser(series, config)
    turn = iter(range(1 << 62))

    def spots() -> None:  # as a worker does: bslz4 frames are decoded band by band inside the threshold pass
        i = next(turn) % distinct
        image, source = analyser.prepare(encoded[i], buffer)
        analyser.find_spots(image, i, source)

    def analysis() -> None:  # the worker's whole per-image result: spots, statistics, radial profile
        i = next(turn) % distinct
        image, source = analyser.prepare(encoded[i], buffer)
        analyser.analyse(image, i, source)

    for _ in range(distinct):  # every frame once: the path each takes settles
        analysis()
    _, copy_s = memory_copy_rate(frames[0], n)
    hot_out = np.empty_like(frames[0])
    _, hot_copy_s = best_rate(lambda: np.copyto(hot_out, frames[0]), n)
    fps, median_s = best_rate(spots, n)
    _, analysis_s = best_rate(analysis, n)
    fused = analyser.workspace.last_fused
    _, decode_s = best_rate(lambda: decode_whole(encoded[0], buffer), n)
    decoded = analyser.check(codecs.decode(encoded[0], out=buffer))  # read-only, as analyse hands it on
    _, threshold_s = best_rate(lambda: analyser.strong(decoded), n)
    result = analyser.analyse(decoded, 0)
    figures: dict[str, Any] = {
        "frames_per_s": fps,
        "memcpy_ratio": copy_s / median_s,  # medians: robust to a slow outlier on a shared machine
        "detector": detector,
        "algorithm": algorithm,
        "frames": n,
        "distinct_frames": distinct,
        "background": background,
        "spots_simulated": n_spots,
        "threshold_pass": analyser.workspace.last_path,
        "final_test": analyser.workspace.last_final,  # the extended variant's: tiles or rows (kernels.final_rows)
        "bit_transpose": band_decode.transpose_name(),
        "ms_per_frame_median": median_s * 1e3,
        "analysis_ms_per_frame": analysis_s * 1e3,
        "decoded_in_pass": fused,
        "decode_ms": decode_s * 1e3,
        "threshold_ms": threshold_s * 1e3,
        "memcpy_ms": copy_s * 1e3,
        "memcpy_hot_ms": hot_copy_s * 1e3,
        "memcpy_hot_ratio": hot_copy_s / median_s,
        "spots": result.n_spots,
        "strong_pixels": result.strong_pixels,
    }
    if not getattr(args, "no_dials", False):
        repeats = getattr(args, "dials_repeats", 3) or 3
        figures.update(dials_compare.same_frames(frames, encoded, series, config, detector, repeats))
        n_6m = getattr(args, "dials_images", 5)
        if n_6m:
            figures.update(dials_compare.thaumatin_6m(config, n_6m, repeats))
    return figures
