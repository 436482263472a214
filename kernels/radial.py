"""Azimuthal (radial) average of the background in resolution bins.

The bin of every pixel (int16, -1 = no bin) is computed once per series from the resolution
map. Rows are sampled every `row_step` rows (the background is smooth; this keeps the pass
cheap). Also once per series, the sampled rows are cut into segments: runs of usable pixels
(mask nonzero, in a bin) that share one bin, in row-major order. Per frame the kernel sums
the values of the non-spot, trusted pixels of each segment into its bin, with no per-pixel
mask or bin look-up and no scatter.

Sums are those of a pixel-by-pixel float64 scan in row-major order, bit for bit: images of
integer dtypes up to 32 bits are summed exactly in int64 (which vectorises), and a float64
sum of integers is exact too while it stays below 2**53; other dtypes are summed in float64
in scan order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from kernels.dispersion_int import BAND_ROWS
from kernels.jit import njit

WINDOW = 16  # pixels summed as one vectorised block per segment (most segments are shorter)


@njit
def _sums_integer(flat, exclude, starts, stops, seg_bins, lo, hi, window, n_windowed, sums, counts, s0, s1):
    """Integer pixels of segments s0 <= s < s1: trusted means lo <= v <= hi (the open float
    interval as integers, in the image's type: the tests then run in lanes of its width, not
    in 64-bit ones).

    The first `window` pixels of each of the first `n_windowed` segments are read as one block
    (the compiler vectorises it; most segments are shorter, and pixels past a segment's end
    are read but not counted, so those segments must end `window` pixels before the image
    does); the rest of a segment, and the last segments, pixel by pixel. (`window` is an
    argument on purpose: with a constant trip count LLVM unrolls the block into scalar code.)
    """
    w = np.uint64(window)
    for s in range(s0, s1):
        a = np.uint64(starts[s])  # unsigned indices: no wraparound test
        length = np.uint64(stops[s]) - a
        acc = np.int64(0)
        n = np.int64(0)
        first = np.uint64(0)
        if s < n_windowed:
            for k in range(np.uint64(0), w):
                v = flat[a + k]
                ok = (k < length) & (exclude[a + k] == 0) & (v >= lo) & (v <= hi)
                acc += np.int64(v) if ok else np.int64(0)
                n += np.int64(1) if ok else np.int64(0)
            first = w
        for i in range(a + first, a + length):
            v = flat[i]
            ok = (exclude[i] == 0) & (v >= lo) & (v <= hi)
            acc += np.int64(v) if ok else np.int64(0)
            n += np.int64(1) if ok else np.int64(0)
        sums[seg_bins[s]] += acc
        counts[seg_bins[s]] += n


@njit
def _sums_float(flat, exclude, starts, stops, seg_bins, lower, upper, sums, counts):
    """Any other dtype: float64 sums accumulated in row-major pixel order."""
    for s in range(starts.shape[0]):
        b = seg_bins[s]
        acc = sums[b]
        n = counts[b]
        for i in range(np.uint64(starts[s]), np.uint64(stops[s])):
            v = np.float64(flat[i])
            if (exclude[i] == 0) & (v > lower) & (v < upper):
                acc += v
                n += 1
        sums[b] = acc
        counts[b] = n


def bin_map(d_star_sq: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int16 bin index of every pixel for ascending bin `edges` (-1 outside)."""
    if len(edges) - 1 > np.iinfo(np.int16).max:
        raise ValueError("too many bins")
    idx = np.searchsorted(edges, d_star_sq, side="right") - 1
    idx[(idx < 0) | (idx >= len(edges) - 1) | ~np.isfinite(d_star_sq)] = -1
    return idx.astype(np.int16)


@njit
def _bins_of_d(d_map, edges, out):
    n_bins = edges.shape[0] - 1
    width = edges[1] - edges[0]
    ny, nx = d_map.shape
    for j in range(ny):
        for i in range(nx):
            d = np.float64(d_map[j, i])
            v = 1.0 / (d * d)  # numpy's d ** 2 is d * d
            b = -1
            if math.isfinite(v) and v >= edges[0] and v < edges[n_bins]:
                b = min(max(int((v - edges[0]) / width), 0), n_bins - 1)  # a guess, then the edges decide
                while b + 1 < n_bins and edges[b + 1] <= v:
                    b += 1
                while b > 0 and edges[b] > v:
                    b -= 1
            out[j, i] = b


def largest_d_star_sq(d_map: np.ndarray) -> float:
    """The largest finite 1 / d**2 over `d_map` (d* squared in float64), 0.0 if none: that of
    its smallest positive d (1 / d**2 falls as d grows, rounding included)."""
    positive = d_map[np.isfinite(d_map) & (d_map > 0)]
    if positive.size == 0:
        return 0.0
    return float((1.0 / np.array([positive.min()], dtype=np.float64) ** 2)[0])


def bin_map_of_d(d_map: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """`bin_map(1 / d_map**2, edges)` (d_map float32, d* squared in float64) in one compiled
    pass, without the two full-size float64 and int64 temporaries (300 MB for a 16M detector).
    `edges`: ascending and evenly spaced, as the analyser's radial bins are."""
    edges = np.ascontiguousarray(edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or len(edges) - 1 > np.iinfo(np.int16).max:
        raise ValueError("edges: 2 to 32768 ascending values")
    if d_map.ndim != 2:
        raise ValueError("d_map must be 2D")
    out = np.empty(d_map.shape, dtype=np.int16)
    _bins_of_d(d_map, edges, out)
    return out


@dataclass(frozen=True)
class RadialSegments:
    """Runs of usable pixels of one bin along the sampled rows (built once per series).

    starts/stops: flat pixel indices [start, stop) into the image, row-major order;
    bins: the bin of each run (int32); shape: the image shape; n_bins: number of bins.
    """

    starts: np.ndarray
    stops: np.ndarray
    bins: np.ndarray
    shape: tuple[int, int]
    n_bins: int


def radial_segments(mask: np.ndarray, bins: np.ndarray, n_bins: int, row_step: int = 4) -> RadialSegments:
    """Segments of the rows 0, row_step, 2 row_step, ... where `mask` is nonzero and `bins` in [0, n_bins)."""
    if mask.shape != bins.shape or mask.ndim != 2:
        raise ValueError("mask and bins must be 2D arrays of the same shape")
    if mask.dtype != np.uint8 or bins.dtype != np.int16:
        raise ValueError("mask must be uint8 and bins int16")
    if row_step < 1:
        raise ValueError("row_step must be >= 1")
    nx = mask.shape[1]
    sampled_bins = bins[::row_step].astype(np.int32)
    key = np.where((mask[::row_step] != 0) & (sampled_bins < n_bins), sampled_bins, -1).reshape(-1)
    new = np.ones(key.shape, dtype=bool)
    new[1:] = key[1:] != key[:-1]
    new[::nx] = True  # a run never crosses a row end
    first = np.flatnonzero(new)
    last = np.append(first[1:], key.size)
    use = key[first] >= 0
    first, last = first[use], last[use]
    starts = (first // nx) * (row_step * nx) + first % nx
    return RadialSegments(starts.astype(np.int64), (starts + (last - first)).astype(np.int64),
                          np.ascontiguousarray(key[first], dtype=np.int32), (int(mask.shape[0]), int(nx)), int(n_bins))


def _integer_limits(dtype: np.dtype, lower: float, upper: float) -> tuple[int, int]:
    """The integers v of `dtype` with lower < v < upper, as the closed range [lo, hi]."""
    info = np.iinfo(dtype)
    if math.isnan(lower) or math.isnan(upper):
        return 1, 0
    lo = info.min if lower == -math.inf else (info.max + 1 if lower == math.inf else math.floor(lower) + 1)
    hi = info.max if upper == math.inf else (info.min - 1 if upper == -math.inf else math.ceil(upper) - 1)
    lo, hi = max(lo, info.min), min(hi, info.max)
    return (lo, hi) if lo <= hi else (1, 0)


def integer_sums_apply(dtype: np.dtype) -> bool:
    """Whether pixels of `dtype` take the integer sums (`_sums_integer`): integers of at most 32 bits."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iu" and dtype.itemsize <= 4


def _windowed(segments: RadialSegments) -> int:
    """How many leading segments `_sums_integer` reads as whole blocks: those starting at least
    WINDOW pixels before the frame's end, so that a block never reads past it."""
    ny, nx = segments.shape
    return int(np.searchsorted(segments.starts, ny * nx - WINDOW, side="right"))


def radial_sums(image: np.ndarray, segments: RadialSegments, exclude: np.ndarray,
                trusted_range: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(mean value per bin as float32 (NaN where empty), pixel count per bin as int64).

    Pixels of `segments` with `exclude` zero (uint8 nonzero = spot pixel) and a value inside
    the open interval `trusted_range`.
    """
    if image.shape != segments.shape or exclude.shape != segments.shape:
        raise ValueError("image and exclude must have the shape the segments were built for")
    if exclude.dtype != np.uint8:
        raise ValueError("exclude must be uint8")
    if not (image.flags.c_contiguous and exclude.flags.c_contiguous and image.dtype.isnative):
        raise ValueError("image and exclude must be C-contiguous, the image in native byte order")
    flat, excl = image.reshape(-1), exclude.reshape(-1)
    counts = np.zeros(segments.n_bins, dtype=np.int64)
    lower, upper = float(trusted_range[0]), float(trusted_range[1])
    if integer_sums_apply(image.dtype):
        lo, hi = _integer_limits(image.dtype, lower, upper)
        int_sums = np.zeros(segments.n_bins, dtype=np.int64)
        _sums_integer(flat, excl, segments.starts, segments.stops, segments.bins, image.dtype.type(lo),
                      image.dtype.type(hi), WINDOW, _windowed(segments), int_sums, counts, 0, segments.starts.shape[0])
        return _means(int_sums, counts), counts
    sums = np.zeros(segments.n_bins, dtype=np.float64)
    _sums_float(flat, excl, segments.starts, segments.stops, segments.bins, lower, upper, sums, counts)
    return _means(sums, counts), counts


def _means(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean per bin as float32, NaN where a bin is empty (integer sums exact in float64 below 2**53)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums.astype(np.float64) / counts).astype(np.float32)


class BandedRadial:
    """`radial_sums` taken inside the threshold pass, band by band, while its rows are cached.

    Per frame, `radial_sums` reads the sampled rows again after the pass has pushed them out
    of the core's caches: 0.35 ms per 4M frame on its own, more after the pass in a worker.
    (Measured in the workers at 150 frames/s, CPU per 4M frame, 2 alternations: the sums add
    0.45 ms to the pass and take 0.53 ms off what follows it; 6.85-6.93 ms against
    6.92-7.03 for the whole analysis.) The extended variant's trailing pass
    (`kernels.extended_trailing`) knows a band's spot pixels (the dispersed ones: the pixels
    `radial_sums` excludes, given the pass's flag map) as soon as the band is tested, so it
    sums the band's segments there with the same kernel: the same sums bit for bit (integer
    sums, exact in any order). Integer images of at most 32 bits only, as the packed pass.
    `filled` says whether the last pass took them (else call `radial_sums`).
    """

    def __init__(self, segments: RadialSegments, dtype: np.dtype, trusted_range: tuple[float, float]):
        dtype = np.dtype(dtype).newbyteorder("=")  # the pass's images are native
        if not integer_sums_apply(dtype):
            raise ValueError(f"banded radial sums need integer pixels of at most 32 bits, not {dtype}")
        ny, nx = segments.shape
        self.segments = segments
        self.dtype = dtype
        lo, hi = _integer_limits(dtype, float(trusted_range[0]), float(trusted_range[1]))
        rows = np.minimum(np.arange(0, ny + BAND_ROWS, BAND_ROWS, dtype=np.int64), ny)
        # segments of the pass's band starting at row b * BAND_ROWS: bounds[b] <= s < bounds[b + 1]
        bounds = np.searchsorted(segments.starts, rows * nx).astype(np.int64)
        self.sums = np.zeros(segments.n_bins, dtype=np.int64)
        self.counts = np.zeros(segments.n_bins, dtype=np.int64)
        # the block width travels as a value: a constant one inlined into the pass is unrolled to scalar code
        self.args = (segments.starts, segments.stops, segments.bins, bounds, np.int64(_windowed(segments)),
                     np.int64(WINDOW), dtype.type(lo), dtype.type(hi), self.sums, self.counts)
        self.filled = False

    def start(self) -> tuple:
        """The pass's argument, its sums cleared."""
        self.sums[:] = 0
        self.counts[:] = 0
        self.filled = False
        return self.args

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean per bin, count per bin) as `radial_sums` gives them (copies)."""
        return _means(self.sums, self.counts), self.counts.copy()


@functools.lru_cache(maxsize=16)
def no_radial(dtype: np.dtype) -> tuple:
    """The trailing pass's radial argument when no sums are wanted: no band has segments (one
    tuple per dtype, made once: its arrays are empty, nothing is ever written to them)."""
    dtype = np.dtype(dtype)
    none = np.zeros(0, dtype=np.int64)
    return (none, none, np.zeros(0, dtype=np.int32), none, np.int64(0), np.int64(WINDOW), dtype.type(1), dtype.type(0),
            none, none)


def radial_profile(image: np.ndarray, mask: np.ndarray, bins: np.ndarray, n_bins: int, exclude: np.ndarray,
                   trusted_range: tuple[float, float], row_step: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One-off `radial_sums` (segments built on the spot): `mask` uint8 nonzero = usable."""
    if not (image.shape == mask.shape == bins.shape == exclude.shape):
        raise ValueError("image, mask, bins and exclude must have the same shape")
    return radial_sums(np.ascontiguousarray(image), radial_segments(mask, bins, n_bins, row_step),
                       np.ascontiguousarray(exclude), trusted_range)
