"""DIALS dispersion spot-finding thresholds ("dispersion" and "dispersion_extended").

Follows DIALS 3.12 `DispersionThreshold` / `DispersionExtendedThreshold`
(dials/src/dials/algorithms/image/threshold/local.h; Parkhurst et al. 2014, and the XDS
COLSPOT test of Kabsch 2010). For every pixel the local window (2*kx+1) x (2*ky+1), clipped
at the image edges, gives over its *valid* pixels (mask set, lower < value < upper, value <
2**24) the count m, sum x and sum of squares y. With gain g a valid pixel of value v is

- "dispersed" if m >= min_local, x >= 0 and the index of dispersion var/mean exceeds
  g * (1 + sigma_b * sqrt(2 / (m - 1))), written without division or square roots as
  a = m y - x^2 - g x (m - 1) > 0 and a^2 > 2 (m - 1) (g x sigma_b)^2;
- "strong" (classic) if also v > global_threshold and b = m v - x > 0 with
  b^2 > sigma_s^2 g x m (v > mean + sigma_s sqrt(g mean)).

The extended variant (DIALS's default) takes the dispersed map, erodes it (a pixel is
"core" if no non-dispersed pixel lies within a Chebyshev distance < min(kx, ky), pixels
outside the image not counting), and calls a core pixel strong if v > global_threshold and
v >= mean + sigma_s sqrt(g mean), where mean is the mean of the valid non-core pixels in the
(2*kx+5) x (2*ky+5) window (0 if fewer than 2).

Three streaming passes give the selected pixels as a sparse row-major list, all equal to the
float64 test bit for bit (`kernels.dispersion_tests`):
- packed (`kernels.dispersion_packed`): integer frames with mostly low counts, the common
  detector frame: one packed 32-bit column sum of the quiet pixels, the loud ones added
  sparsely, a vectorised necessary condition, then the float64 test on exact sums of the
  ~1% of pixels it leaves;
- banded (`kernels.dispersion_int`): other integer frames with nonnegative summed values
  (high backgrounds, noisy frames): three exact 32-bit column sums and a float32 screen with
  a proven margin, float64 where it cannot decide;
- general (`kernels.dispersion_general`): floats, negative values: float64 everywhere.
The flag map is written sparsely (only where pixels are selected, cleared the same way on
the next frame); erosion and the extended test work on the sparse lists
(`kernels.dispersion_extended`), trailing the packed pass down the frame band by band
(`kernels.extended_trailing`: their pixels still cached) or after the other passes. A bslz4
frame handed over still compressed (a band source, `kernels.bslz4_native`) is decoded band
by band inside the packed pass, while the rows are in L2, when the previous frame took that
pass; else in full before the pass.
"""

from __future__ import annotations

import functools

import numpy as np

from kernels.bslz4_native import DecodeError, decode_all, no_source, problem
from kernels.dispersion_extended import (BIG, _packing, erode_runs, extended_final, extended_final_tiles, final_screen,
                                         set_flags)
from kernels.dispersion_general import any_negative, count_valid, general_pass
from kernels.dispersion_int import banded_pass, big_value
from kernels.dispersion_packed import loud_fraction, packed_pass
from kernels.extended_trailing import trailing_pass, trailing_scratch
from kernels.final_rows import FINAL_TESTS, extended_final_rows, final_path
from kernels.packed_sums import candidate_bounds, quiet_value
from kernels.radial import BandedRadial, no_radial

INT32_WINDOW_PIXELS = 127  # (2kx+1)(2ky+1) * 2**24 < 2**31: int32 window sums of values in (-2**24, 2**24)
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64)
PATHS = ("auto", "packed", "banded", "general")
# The packed pass keeps the sums of its few loud pixels (above the quiet bound) apart, so it
# slows with loud pixels (a high background), and with dispersed pixels, which it tests one by
# one; the banded pass's cost hardly changes. Measured (4M, Zen 5; backgrounds 0.3-30 photons,
# 400-6000 spots; packed against banded, ms per frame):
# - extended: background 15 (loud 0.0077) 5.6 against 6.6; background 16 (0.0147) 5.9-6.9
#   against 5.6-8.4; background 17 (0.027) 7.0 against 5.7; 3000 spots (dispersed 0.064-0.072,
#   loud 0.008) 11.8 against 11.5-11.8; 4000 spots (0.094) 13.9 against 13.4.
# - classic: background 16 (0.0147) 5.8 against 7.6; background 17 (0.027) 7.1 against 6.8;
#   6000 spots (0.015) 6.6 against 7.7. It tests fewer windows one by one (the strong test
#   screens them too) and its banded pass is slower, so the packed pass wins to more loud pixels.
# Before rows with many loud windows screened the whole sums (`_candidates_7_loud`), background
# 14 (0.004) took 6.6 ms in the packed pass, background 16 took 13.9.
LOUD_EXTENDED = 0.012
LOUD_CLASSIC = 0.02
LOUD_SAMPLE_ROWS = 8  # sample every 8th row for that fraction
DENSE_LIMIT = 0.1  # above this fraction of dispersed pixels the banded pass is faster (measured)


def packed_is_faster(loud: float, dispersed: float, extended: bool = True) -> bool:
    """Whether the packed pass beats the banded one on a frame with these loud and dispersed
    fractions (the measured crossovers above; `dispersed` counts for the extended algorithm only)."""
    if not extended:
        return loud < LOUD_CLASSIC
    return dispersed <= DENSE_LIMIT and loud < LOUD_EXTENDED


def _check(image: np.ndarray, mask: np.ndarray, kernel_size: tuple[int, int], min_local: int) -> None:
    if image.ndim != 2 or image.size == 0:
        raise ValueError(f"image must be a non-empty 2D array, not shape {image.shape}")
    if image.dtype.type not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported image dtype {image.dtype}")
    if not image.dtype.isnative:
        raise ValueError("image must be in native byte order")
    if mask.shape != image.shape or mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 of shape {image.shape}, not {mask.dtype} {mask.shape}")
    if not (image.flags.c_contiguous and mask.flags.c_contiguous):
        raise ValueError("image and mask must be C-contiguous")
    kx, ky = kernel_size
    if kx < 1 or ky < 1:
        raise ValueError(f"kernel half-sizes must be >= 1, not {kernel_size}")
    if not 1 < min_local <= (2 * kx + 1) * (2 * ky + 1):
        raise ValueError(f"min_local must be in (1, window size], not {min_local}")


class DispersionWorkspace:
    """Buffers reused across frames of one shape (no allocation per frame).

    `flag` (uint8, image shape) holds after a call 1 for selected pixels of the last pass (the
    extended variant: 1 dispersed, 2 eroded core) and 0 elsewhere; `stats` [overloads, valid,
    valid nonzero, loud] pixel counts of the last frame (valid counts -1 until asked for through
    `n_valid` / `n_valid_nonzero`: the packed pass leaves them to be counted on demand; loud:
    summed pixels above the packed pass's quiet bound, counted by that pass only).
    """

    def __init__(self, shape: tuple[int, int]):
        self.shape = tuple(shape)
        self.flag = np.zeros(self.shape, dtype=np.uint8)
        size = self.shape[0] * self.shape[1]
        index_dtype = np.int32 if size < 2**31 else np.int64
        self.index = np.empty(size, dtype=index_dtype)
        self.dispersed = np.empty(size, dtype=index_dtype)  # the pass's selected (extended: dispersed) pixels
        self.values = np.empty(size)  # the strong pixels' values, where the pass took them (`strong_values`)
        self._values_taken = -1  # values[:_values_taken] are the last call's, or -1
        self.stats = np.zeros(4, dtype=np.int64)
        self._marked = 0  # flag is zero except at dispersed[:_marked]
        self.last_path = ""  # the pass the last call took (`choose_path`)
        self.last_fused = False  # whether it decoded the frame band by band (`strong_pixels`'s source)
        self.last_final = ""  # the extended variant's last final test: trailing (`kernels.extended_trailing`),
        # or after the pass tiles, rows (`final_path`) or general
        self._trailing: dict[tuple[int, int], tuple] = {}  # `trailing_scratch` by final window half-sizes
        self.dispersed_fraction = 0.0  # of the last extended call: guides `choose_path`
        self.loud_fraction = 1.0  # of the last packed pass's usable pixels: whether the next may fuse decoding
        self._usable: tuple = (None, 0)  # (mask, its usable pixel count)
        self._no_source = no_source()
        self._last: tuple = ()  # (image, mask, lower, upper) of the last call, for counts on demand
        self._columns: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def columns(self, kind: str, narrow: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Zeroed column accumulators (count, sum, sum of squares) for an image of dtype kind
        `kind` ("i"/"u" integers, "f" floats); `narrow`: int32 value sums suffice."""
        key = (kind, narrow)
        if key not in self._columns:
            nx = self.shape[1]
            if kind == "f":
                types = (np.int32, np.float64, np.float64)
            else:
                types = (np.int32, np.int32 if narrow else np.int64, np.int64)
            self._columns[key] = tuple(np.zeros(nx, dtype=t) for t in types)
        out = self._columns[key]
        for col in out:
            col[:] = 0
        return out

    def trailing_scratch(self, kx: int, ky: int) -> tuple:
        """`kernels.extended_trailing.trailing_scratch` for final windows of half-sizes kx, ky, made once."""
        if (kx, ky) not in self._trailing:
            self._trailing[(kx, ky)] = trailing_scratch(self.shape, kx, ky)
        return self._trailing[(kx, ky)]

    def strong_values(self) -> np.ndarray | None:
        """The values (float64, a view) of the last call's strong pixels, in its order, where its
        pass read them while cached (the trailing pass), else None: gather them from the image."""
        return self.values[:self._values_taken] if self._values_taken >= 0 else None

    def clear_flag(self) -> None:
        """Zero the flag map (only where the last sparse pass marked it)."""
        set_flags(self.flag, self.dispersed, self._marked, 0)
        self._marked = 0

    def mark(self, n: int) -> None:
        """flag = 1 at dispersed[:n] (a sparse pass's selected pixels, on a cleared map)."""
        set_flags(self.flag, self.dispersed, n, 1)
        self._marked = n

    @property
    def n_overloads(self) -> int:
        return int(self.stats[0])

    @property
    def n_valid(self) -> int:
        self._count()
        return int(self.stats[1])

    @property
    def n_valid_nonzero(self) -> int:
        self._count()
        return int(self.stats[2])

    def usable(self, mask: np.ndarray) -> int:
        """Usable (nonzero) pixels of `mask`, counted once per mask object."""
        if self._usable[0] is not mask:
            self._usable = (mask, int(np.count_nonzero(mask)))
        return self._usable[1]

    def fuses(self, extended: bool) -> bool:
        """Whether the next frame may be decoded inside the packed pass, band by band: the last
        frame took that pass and was quiet (`choose_path` would pick it again)."""
        return self.last_path == "packed" and packed_is_faster(self.loud_fraction, self.dispersed_fraction, extended)

    def _count(self) -> None:
        """Fill in the valid / valid nonzero counts a fast pass left out (-1)."""
        if self.stats[1] < 0 and self._last:
            self.stats[1], self.stats[2] = count_valid(*self._last)


@functools.lru_cache(maxsize=64)  # per series: frames skip the numpy scalar work
def _bounds(dtype: np.dtype, lower: float, upper: float) -> tuple[object, object, object]:
    """(lo, hi, hi_sum) in the image's arithmetic: for integers v > lower <=> v > floor(lower)
    and v < upper <=> v < ceil(upper), clamped to the int64 range; hi_sum = min(hi, 2**24)."""
    if dtype.kind in "iu":
        lo = np.int64(max(np.floor(lower), -4e18))
        hi = np.int64(min(np.ceil(upper), 4e18))
        return lo, hi, np.int64(min(hi, int(BIG)))
    return np.float64(lower), np.float64(upper), np.float64(min(upper, BIG))


@functools.lru_cache(maxsize=64)
def _native_bounds(dtype: np.dtype, lo: int, hi: int, hi_sum: int, threshold: float) -> tuple | None:
    """Inclusive bounds (lo + 1, hi_sum - 1, hi - 1, floor(threshold) + 1) in the image's
    integer type for the screened pass, or None when it does not apply: it needs
    nonnegative summed values (lo >= -1) and 0 <= lo + 1 <= hi_sum - 1 <= hi - 1 after
    clipping to the type's range (the global threshold bound is clipped to [0, type max],
    which keeps v > threshold exact for every value of the type)."""
    top = int(np.iinfo(dtype).max)
    lo1, hs1, hi1 = int(lo) + 1, min(int(hi_sum) - 1, top), min(int(hi) - 1, top)
    if not 0 <= lo1 <= hs1 <= hi1 or not np.isfinite(threshold):
        return None
    thr1 = int(np.floor(threshold)) + 1
    if thr1 > top:
        return None
    return dtype.type(lo1), dtype.type(hs1), dtype.type(hi1), dtype.type(max(thr1, 0))


def choose_path(image: np.ndarray, mask: np.ndarray, window: int, native: tuple | None, gain: float,
                dispersed_before: float = 0.0, sample: bool = True, extended: bool = True) -> str:
    """The pass `strong_pixels` takes for this frame ("packed", "banded" or "general").
    dispersed_before: the fraction of pixels the previous frame of the series had dispersed
    (extended variant): the packed pass tests its candidates one by one, so above
    `DENSE_LIMIT`, or with too many loud pixels for it (sampled rows; `packed_is_faster`,
    whose crossover depends on the algorithm), the banded pass's vectorised screen is
    faster. sample False: whether the packed pass applies at all, without reading the image."""
    narrow = image.dtype.kind in "iu" and window <= INT32_WINDOW_PIXELS
    # the float32 screen's terms stay finite for windows <= 127 pixels and gains <= 1e6
    if native is None or not narrow or not gain <= 1e6:
        return "general"
    vq = min(quiet_value(window), int(native[1]))
    if vq == 0 or dispersed_before > DENSE_LIMIT:  # decided without sampling the rows
        return "banded"
    if not sample:
        return "packed"
    loud = loud_fraction(image, mask, native[0], native[0].dtype.type(vq), native[1], LOUD_SAMPLE_ROWS)
    return "packed" if packed_is_faster(loud, dispersed_before, extended) else "banded"


def strong_pixels(
    image: np.ndarray,
    mask: np.ndarray,
    algorithm: str = "dispersion_extended",
    kernel_size: tuple[int, int] = (3, 3),
    sigma_background: float = 6.0,
    sigma_strong: float = 3.0,
    global_threshold: float = 0.0,
    min_local: int = 2,
    gain: float = 1.0,
    trusted_range: tuple[float, float] = (-1.0, np.inf),
    workspace: DispersionWorkspace | None = None,
    path: str = "auto",
    source: tuple | None = None,
    flagged: int | None = None,
    final: str = "auto",
    radial: BandedRadial | None = None,
) -> np.ndarray:
    """Flat row-major indices (ascending; int32, int64 past 2**31 pixels) of the strong pixels.

    `mask` is uint8 (nonzero = usable pixel). Pixels count as valid only strictly inside
    `trusted_range` (DIALS: (-1, saturation) open interval). `kernel_size` is the window
    half-size (fast x, slow y): (3, 3) gives DIALS's 7 x 7. The returned array is a view
    into the workspace's buffer (copy it to keep it past the next call). `path` forces one
    pass where it applies (tests); every pass gives the same result. `source`: a band source
    (`kernels.bslz4_native.band_source`) whose buffer `image` is: the frame is decoded here,
    band by band inside the packed pass when the last frame took it (`DispersionWorkspace.fuses`),
    else in full before the pass; raises `DecodeError` if a block is corrupt. `flagged`: a
    value above the trusted range that marks inactive pixels rather than overloads (a DECTRIS
    detector's all-ones value): invalid, as every value outside the range, but not counted in
    the workspace's `n_overloads`. The extended variant's erosion and final test trail the
    packed pass down the frame where the frame takes that pass and the tiles' final test
    applies (`kernels.extended_trailing`), else follow the pass, the final test chosen by
    `kernels.final_rows.final_path`; `final` "tiles" or "rows" forces one where the frame
    allows it (tests, warm-up; "rows" never trails). `radial`: the trailing pass also takes
    these radial sums, over the pixels not dispersed (`radial.filled` says whether it did).
    """
    _check(image, mask, kernel_size, min_local)
    if algorithm not in ("dispersion", "dispersion_extended"):
        raise ValueError(f"unknown threshold algorithm {algorithm!r}")
    if not gain > 0:
        raise ValueError(f"gain must be positive, not {gain}")
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}")
    if final not in FINAL_TESTS:
        raise ValueError(f"unknown final test {final!r}")
    ws = workspace if workspace is not None and workspace.shape == image.shape else DispersionWorkspace(image.shape)
    if radial is not None:
        radial.filled = False
        if radial.segments.shape != image.shape or radial.dtype != image.dtype:
            raise ValueError("the radial sums were set up for another shape or pixel type")
    kx, ky = int(kernel_size[0]), int(kernel_size[1])
    window = (2 * kx + 1) * (2 * ky + 1)
    lower, upper = float(trusted_range[0]), float(trusted_range[1])
    if lower < -1.0 and image.dtype.kind == "u":
        lower = -1.0  # negative counts trusted, but an unsigned image holds none: the usual bound tests the same
    elif lower < -1.0 and image.dtype.kind == "i":  # negative counts trusted (pedestal-subtracted, NeXus)
        if source is not None and not decode_all(source):
            raise DecodeError(problem(source[-1]))
        source = None
        if not any_negative(image, mask):
            lower = -1.0  # none here: the usual bound tests the same, and the integer passes apply
    ws.stats[:] = 0
    ws._values_taken = -1
    extended = algorithm == "dispersion_extended"
    lo, hi, hi_sum = _bounds(image.dtype, lower, upper)
    native = _native_bounds(image.dtype, lo, hi, hi_sum, float(global_threshold)) if image.dtype.kind in "iu" else None
    fused = source is not None and (path == "packed" or (path == "auto" and ws.fuses(extended))) \
        and native is not None and choose_path(image, mask, window, native, gain, sample=False) == "packed"
    if source is not None and not fused and not decode_all(source):
        raise DecodeError(problem(source[-1]))
    chosen = "packed" if fused else choose_path(image, mask, window, native, gain,
                                                 ws.dispersed_fraction if extended else 0.0, extended=extended)
    if path != "auto":
        fits = chosen != "general" and (path == "banded" or min(quiet_value(window), int(native[1])) > 0)
        if path != "general" and not fits:
            raise ValueError(f"the {path} pass does not apply to this frame")
        chosen = path
    ws.last_path = chosen
    ws.last_fused = fused
    ws.last_final = ""
    if native is not None:  # in the image's type; 0 (never above hi1 >= 0) for none
        top = int(np.iinfo(image.dtype).max)
        flag = native[0].dtype.type(flagged if flagged is not None and 0 <= flagged <= top else 0)
    ws._last = (image, mask, lower, upper)
    args = (image, mask, lower, upper, kx, ky, float(sigma_background), float(sigma_strong), float(gain),
            float(global_threshold), float(min_local), extended, ws.dispersed, ws.stats)
    ws.clear_flag()
    if chosen == "packed":  # the packed pass's bounds, screen and band source, as both its callers take them
        packed = (*native, flag, native[0].dtype.type(min(quiet_value(window), int(native[1]))),
                  *candidate_bounds(window, float(sigma_background), float(gain)), source if fused else ws._no_source)
    packing = _packing(image.dtype.kind, image.shape, lower, upper, kx + 2, ky + 2) \
        if extended and chosen == "packed" else None
    if packing is not None and final != "rows":  # measured faster than either final test after the pass
        return _trailing(ws, packing, args, packed, radial)
    if chosen == "packed":
        n = packed_pass(*args, *packed)
        if n < 0:
            ws.last_path = ""
            raise DecodeError(problem(source[-1]))
        ws.loud_fraction = int(ws.stats[3]) / max(ws.usable(mask), 1)
    elif chosen == "banded":
        n = banded_pass(*args, *native, flag, native[0].dtype.type(min(big_value(window), top)))
    else:
        narrow = image.dtype.kind in "iu" and lo >= -int(BIG) and window <= INT32_WINDOW_PIXELS
        n = general_pass(*args, *ws.columns(image.dtype.kind, narrow), lo, hi, hi_sum,
                         np.float64(flagged) if flagged is not None else np.float64(np.nan))
    ws.mark(n)
    ws.dispersed_fraction = n / image.size if extended else ws.dispersed_fraction
    if not extended:
        ws.index[:n] = ws.dispersed[:n]
        return ws.index[:n]
    nc = erode_runs(ws.flag, ws.dispersed, n, min(kx, ky) - 1, ws.index)
    # the strong list is written in place over the core list (a subset, in order); integer
    # sums are exact in any order, float sums keep the sliding order of the general pass
    taken = "general" if chosen == "general" else final_path(image, lower, upper, kx + 2, ky + 2, ws.index, nc, final)
    args = (image, mask, lower, upper, kx + 2, ky + 2, float(sigma_strong), float(gain), float(global_threshold),
            ws.flag, ws.index, nc, ws.index)
    ns = {"general": extended_final, "tiles": extended_final_tiles, "rows": extended_final_rows}[taken](*args)
    ws.last_final = taken
    return ws.index[:ns]


def _trailing(ws, packing, args, packed, radial) -> np.ndarray:
    """`strong_pixels`'s extended variant by `trailing_pass` (args, packed: what `packed_pass`
    takes; packing: the final test's `_packing`; radial: a `BandedRadial` or None): the strong
    pixels, and the workspace as the pass, erosion and final test run apart leave it."""
    image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_local, _, _, stats = args
    shift, lo, hi = packing
    ok, n, ns = trailing_pass(
        image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_local, ws.dispersed, stats, *packed,
        ws.flag, ws.index, min(kx, ky) - 1, np.int64(lo), np.int64(hi), shift, final_screen(nsig_s, gain),
        ws.trailing_scratch(kx + 2, ky + 2), radial.start() if radial is not None else no_radial(image.dtype),
        ws.values)
    ws._marked = n  # the flags are set at dispersed[:n] (as `mark` sets them): the next call clears them
    if not ok:
        ws.last_path = ""
        raise DecodeError(problem(packed[-1][-1]))  # the state of the pass's band source, its last argument
    ws.loud_fraction = int(stats[3]) / max(ws.usable(mask), 1)
    ws.dispersed_fraction = n / image.size
    ws.last_final = "trailing"
    ws._values_taken = ns
    if radial is not None:
        radial.filled = True
    return ws.index[:ns]
