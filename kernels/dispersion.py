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

For integer counts all these are exact integers in float64, so comparing squares gives
the same answer as DIALS's square roots. The extended variant (DIALS's default) takes the
dispersed map, erodes it (a pixel is "core" if no non-dispersed pixel lies within a
Chebyshev distance < min(kx, ky), pixels outside the image not counting), and calls a core
pixel strong if v > global_threshold and v >= mean + sigma_s sqrt(g mean), where mean is the
mean of the valid non-core pixels in the (2*kx+5) x (2*ky+5) window (0 if fewer than 2).

Implementation: a streaming pass keeps column sums of the rows in the window (add the row
entering, subtract the row leaving) and takes the horizontal window from a per-row prefix
sum, so each pixel costs a handful of operations; strong pixels come out as a sparse,
row-major list of flat indices. The extended second pass only visits core pixels.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit

BIG = float(1 << 24)  # DIALS leaves values at or above this out of the window sums
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64)


@njit
def _update_columns(image, mask, enter, leave, lower, upper, sum_upper, colm, colx, coly, counts):
    """Column sums of the window rows: add row `enter`, remove row `leave` (either may be -1).

    The accumulators' dtype decides the arithmetic: int64 for integer images (exact, and
    cheaper), float64 for float images. `lower`/`upper` bound valid values (open interval),
    `sum_upper` = min(upper, 2**24) bounds the values that enter the sums. counts (3, nx)
    int32 gains per column the entering row's overloads, valid and valid nonzero pixels
    (per-column counters keep the loop vectorised).
    """
    nx = image.shape[1]
    one = colm.dtype.type(1)
    if enter >= 0:
        for i in range(nx):
            v = colx.dtype.type(image[enter, i])
            usable = mask[enter, i] != 0
            inrange = (v > lower) & (v < upper)
            w = one * (usable & (v > lower) & (v < sum_upper))
            vw = v * w
            colm[i] += w
            colx[i] += vw
            coly[i] += vw * v
            counts[0, i] += np.int32(usable & (v >= upper))
            counts[1, i] += np.int32(usable & inrange)
            counts[2, i] += np.int32(usable & inrange & (v != 0))
    if leave >= 0:
        for i in range(nx):
            u = colx.dtype.type(image[leave, i])
            w = one * ((mask[leave, i] != 0) & (u > lower) & (u < sum_upper))
            uw = u * w
            colm[i] -= w
            colx[i] -= uw
            coly[i] -= uw * u


@njit
def _window_1d(col, out, tmp, k):
    """out[i] = sum of col[i-k .. i+k] clipped to the row. Interior loops have fixed offsets so
    they vectorise; k = 3 (DIALS's default) sums pairs first (4 adds per pixel, not 6)."""
    nx = col.shape[0]
    if nx > 2 * k + 1 and k == 3:
        for i in range(nx - 1):
            tmp[i] = col[i] + col[i + 1]
        for i in range(nx - 6):
            out[i + 3] = np.float64(tmp[i] + tmp[i + 2] + tmp[i + 4] + col[i + 6])
    elif nx > 2 * k + 1:
        for i in range(k, nx - k):
            s = col[i] - col[i]
            for d in range(-k, k + 1):
                s += col[i + d]
            out[i] = np.float64(s)
    else:
        for i in range(nx):
            _clipped_sum(col, out, i, k)
        return
    for i in range(k):
        _clipped_sum(col, out, i, k)
    for i in range(nx - k, nx):
        _clipped_sum(col, out, i, k)


@njit
def _clipped_sum(col, out, i, k):
    s = col[i] - col[i]
    for d in range(max(0, i - k), min(col.shape[0], i + k + 1)):
        s += col[d]
    out[i] = np.float64(s)


@njit
def _test_row(image, mask, j, lower, upper, hm, hx, hy, nb2, ns2, gain, threshold, min_count, dispersion_only,
              flag):
    """Branch-free dispersion (and strong) test of row j; returns how many pixels pass."""
    nx = image.shape[1]
    count = 0
    if dispersion_only:
        for i in range(nx):
            m = hm[i]
            x = hx[i]
            v = np.float64(image[j, i])
            gx = gain * x
            a = m * hy[i] - x * x - gx * (m - 1.0)
            sel = ((mask[j, i] != 0) & (v > lower) & (v < upper) & (m >= min_count) & (x >= 0.0) & (a > 0.0)
                   & (a * a > nb2 * (m - 1.0) * gx * gx))
            flag[j, i] = sel
            count += sel
    else:
        for i in range(nx):
            m = hm[i]
            x = hx[i]
            v = np.float64(image[j, i])
            gx = gain * x
            a = m * hy[i] - x * x - gx * (m - 1.0)
            b = m * v - x
            sel = ((mask[j, i] != 0) & (v > lower) & (v < upper) & (m >= min_count) & (x >= 0.0) & (a > 0.0)
                   & (a * a > nb2 * (m - 1.0) * gx * gx) & (v > threshold) & (b > 0.0) & (b * b > ns2 * x * m))
            flag[j, i] = sel
            count += sel
    return count


@njit
def _gather_row(flag_flat, flag_words, base, nx, out_index, n):
    """Append the flat indices of flagged pixels in [base, base + nx) to out_index, skipping
    all-zero 8-byte words (most of a row); returns the new count."""
    end = base + nx
    w = base // 8
    while w * 8 < end:
        if w < flag_words.shape[0] and flag_words[w] == 0:
            w += 1
            continue
        for p in range(max(w * 8, base), min(w * 8 + 8, end)):
            if flag_flat[p]:
                out_index[n] = p
                n += 1
        w += 1
    return n


@njit
def _dispersion_pass(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count,
                     dispersion_only, flag, flag_flat, flag_words, out_index, stats, colm, colx, coly, tmp, lo, hi,
                     hi_sum):
    """One streaming pass; writes flag (1 = selected) for every pixel and the selected flat
    indices (row-major) into out_index; returns how many. dispersion_only: skip the
    strong-value and global tests (first pass of the extended variant). colm/colx/coly/tmp:
    zeroed accumulators of the image width (int64 for integer images, else float64); lo, hi,
    hi_sum: the valid-value bounds (and the summed-value bound) in the accumulators' type.
    flag_flat / flag_words: the flag buffer seen as flat bytes and as uint64 words."""
    ny, nx = image.shape
    hm = np.empty(nx, np.float64)
    hx = np.empty(nx, np.float64)
    hy = np.empty(nx, np.float64)
    counts = np.zeros((3, nx), np.int32)
    nb2 = 2.0 * nsig_b * nsig_b
    ns2 = nsig_s * nsig_s * gain
    n = 0
    for r in range(-ky, ny):
        # the window of row r spans rows r - ky .. r + ky: row r + ky enters, row r - ky - 1 leaves
        enter = r + ky if r + ky < ny else -1
        leave = r - ky - 1 if r - ky - 1 >= 0 else -1
        _update_columns(image, mask, enter, leave, lo, hi, hi_sum, colm, colx, coly, counts)
        if r < 0:
            continue
        _window_1d(colm, hm, tmp, kx)
        _window_1d(colx, hx, tmp, kx)
        _window_1d(coly, hy, tmp, kx)
        if _test_row(image, mask, r, lower, upper, hm, hx, hy, nb2, ns2, gain, threshold, min_count,
                     dispersion_only, flag):
            n = _gather_row(flag_flat, flag_words, r * nx, nx, out_index, n)
    for c in range(3):
        stats[c] += counts[c].sum()
    return n


@njit
def _erode_core(flag, index, n, radius, core_out):
    """Dispersed pixels (flag != 0) with only dispersed pixels within Chebyshev distance
    `radius` (inside the image); marks them flag = 2 and lists them; returns how many."""
    ny, nx = flag.shape
    nc = 0
    for t in range(n):
        p = index[t]
        j = p // nx
        i = p - j * nx
        j0 = max(j - radius, 0)
        j1 = min(j + radius + 1, ny)
        i0 = max(i - radius, 0)
        i1 = min(i + radius + 1, nx)
        core = True
        for jj in range(j0, j1):
            for ii in range(i0, i1):
                if flag[jj, ii] == 0:
                    core = False
                    break
            if not core:
                break
        if core:
            core_out[nc] = p
            nc += 1
    for t in range(nc):
        p = core_out[t]
        flag[p // nx, p % nx] = 2
    return nc


@njit
def _background_column(image, mask, lower, upper, flag, i, j0, j1):
    """(count, sum) of the valid, non-core pixels of column i in rows [j0, j1)."""
    m = 0.0
    x = 0.0
    if i < 0 or i >= image.shape[1]:
        return m, x
    for jj in range(j0, j1):
        w = np.float64(image[jj, i])
        ok = (flag[jj, i] != 2) & (mask[jj, i] != 0) & (w > lower) & (w < upper) & (w < BIG)
        m += ok
        x += w * ok
    return m, x


@njit
def _extended_final(image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index):
    """Strong test of the extended variant at core pixels against the mean of the valid
    non-core pixels in the widened window; returns the number of strong pixels. Along a run
    of consecutive core pixels the window slides by one column (two column sums per step)."""
    ny, nx = image.shape
    n = 0
    m = 0.0
    x = 0.0
    previous = -2
    for t in range(nc):
        p = core[t]
        j = p // nx
        i = p - j * nx
        j0 = max(j - ky, 0)
        j1 = min(j + ky + 1, ny)
        if p == previous + 1 and i > 0:
            m_out, x_out = _background_column(image, mask, lower, upper, flag, i - kx - 1, j0, j1)
            m_in, x_in = _background_column(image, mask, lower, upper, flag, i + kx, j0, j1)
            m += m_in - m_out
            x += x_in - x_out
        else:
            m = 0.0
            x = 0.0
            for ii in range(max(i - kx, 0), min(i + kx + 1, nx)):
                mc, xc = _background_column(image, mask, lower, upper, flag, ii, j0, j1)
                m += mc
                x += xc
        previous = p
        v = np.float64(image[j, i])
        mean = x / m if m >= 2.0 else 0.0
        if (x >= 0.0) & (v > threshold) & (v >= mean + nsig_s * np.sqrt(gain * mean)):
            out_index[n] = p
            n += 1
    return n


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
    extended variant: 1 dispersed, 2 eroded core); `stats` [overloads, valid, valid nonzero]
    pixel counts of the last frame.
    """

    def __init__(self, shape: tuple[int, int]):
        self.shape = tuple(shape)
        self.flag = np.zeros(self.shape, dtype=np.uint8)
        self.flag_flat = self.flag.reshape(-1)
        self.flag_words = self.flag_flat[: self.flag_flat.size // 8 * 8].view(np.uint64)
        size = self.shape[0] * self.shape[1]
        self.index = np.empty(size, dtype=np.int32 if size < 2**31 else np.int64)
        self.stats = np.zeros(3, dtype=np.int64)

    @property
    def n_overloads(self) -> int:
        return int(self.stats[0])

    @property
    def n_valid(self) -> int:
        return int(self.stats[1])

    @property
    def n_valid_nonzero(self) -> int:
        return int(self.stats[2])


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
) -> np.ndarray:
    """Flat row-major indices (ascending; int32, int64 past 2**31 pixels) of the strong pixels.

    `mask` is uint8 (nonzero = usable pixel). Pixels count as valid only strictly inside
    `trusted_range` (DIALS: (-1, saturation) open interval). `kernel_size` is the window
    half-size (fast x, slow y): (3, 3) gives DIALS's 7 x 7. The returned array is a view
    into the workspace's buffer (copy it to keep it past the next call).
    """
    _check(image, mask, kernel_size, min_local)
    if algorithm not in ("dispersion", "dispersion_extended"):
        raise ValueError(f"unknown threshold algorithm {algorithm!r}")
    if not gain > 0:
        raise ValueError(f"gain must be positive, not {gain}")
    ws = workspace if workspace is not None and workspace.shape == image.shape else DispersionWorkspace(image.shape)
    kx, ky = int(kernel_size[0]), int(kernel_size[1])
    lower, upper = float(trusted_range[0]), float(trusted_range[1])
    ws.stats[:] = 0
    extended = algorithm == "dispersion_extended"
    if image.dtype.kind in "iu":  # exact int64 sums; v > lower <=> v > floor(lower), v < upper <=> v < ceil(upper)
        acc = np.int64
        bounds = (np.int64(max(np.floor(lower), -4e18)), np.int64(min(np.ceil(upper), 4e18)),
                  np.int64(min(np.ceil(upper), BIG)))
    else:
        acc = np.float64
        bounds = (np.float64(lower), np.float64(upper), np.float64(min(upper, BIG)))
    columns = [np.zeros(image.shape[1], dtype=acc) for _ in range(4)]
    n = _dispersion_pass(image, mask, lower, upper, kx, ky, float(sigma_background), float(sigma_strong),
                         float(gain), float(global_threshold), float(min_local), extended, ws.flag, ws.flag_flat,
                         ws.flag_words, ws.index, ws.stats, *columns, *bounds)
    if not extended:
        return ws.index[:n]
    # core and strong lists are written in place over the dispersed list (each is a subset in order)
    nc = _erode_core(ws.flag, ws.index, n, min(kx, ky) - 1, ws.index)
    ns = _extended_final(image, mask, lower, upper, kx + 2, ky + 2, float(sigma_strong), float(gain),
                         float(global_threshold), ws.flag, ws.index, nc, ws.index)
    return ws.index[:ns]
