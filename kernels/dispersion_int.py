"""The integer fast path of the dispersion thresholds: exact 32-bit window sums, a float32
screen, float64 only where the screen cannot decide.

For integer images whose summed values are nonnegative (DIALS's trusted range starts at -1)
the window sums are exact integers. Per row of windows the column sums (over the 2*ky+1
window rows) are updated by the row entering and the row leaving: count and "big" count
packed in one int32 (count + 256 * big), value sum in int32 (exact: values < 2**24), sum of
squares in uint32 *modular* arithmetic. A window with no "big" pixel (value above
`big_value(window)`) has a sum of squares below 2**32, so its modular sum is the exact one;
windows holding a big pixel, and the kx edge columns, are decided by the float64 test on
sums taken directly from the image (`_direct_test`), as are the pixels the float32 screen
(`classify32`) leaves undecided. So the answer is the float64 reference's, bit for bit, at
every pixel (see `kernels.dispersion` for the tests themselves).

This three-sum path serves frames the packed quiet path (`kernels.dispersion_packed`) does
not: high backgrounds, large windows. Rows are processed in bands of `BAND_ROWS`: the rows a
band needs are read once ahead (a plain read pass streams them into cache at full memory
speed; the rolling update then finds the row leaving the window still cached).
"""

from __future__ import annotations

import math

import numpy as np

from kernels.dispersion_tests import classify32, selected64
from kernels.jit import njit

BAND_ROWS = 32
EPS = 2.0**-16  # the screen's relative error margin (`classify32`)


def big_value(window_pixels: int) -> int:
    """Largest value v with window_pixels * v**2 < 2**32 (then a modular uint32 sum of squares is exact)."""
    v = math.isqrt((2**32 - 1) // window_pixels)
    while window_pixels * v * v >= 2**32:
        v -= 1
    return v


@njit(boundscheck=False)
def _touch(image, j0, j1):
    """A read pass over rows [j0, j1): streams them into cache ahead of the rolling update."""
    s = image.dtype.type(0)
    for j in range(j0, j1):
        row = image[j]
        for i in range(row.shape[0]):
            s |= row[i]
    return s


@njit(boundscheck=False)
def _touch_both(image, mask, j0, j1):
    """`_touch` of the image and mask rows [j0, j1)."""
    return _touch(image, j0, j1) != 0, _touch(mask, j0, j1) != 0


@njit(boundscheck=False, inline="always")
def _summed(v, usable, lo1, hs1, vbig):
    """(count + 256 * big, value, value**2 mod 2**32) a pixel adds to the column sums."""
    w = usable & (v >= lo1) & (v <= hs1)
    xv = np.int32(np.int32(v) * np.int32(w))
    mb = np.int32(np.int32(w) + np.int32(np.int32(w & (v > vbig)) << 8))
    return mb, xv, np.uint32(np.uint32(xv) * np.uint32(xv))


@njit(boundscheck=False, inline="always")
def _tally(v, usable, lo1, hi1, flagged, zero):
    """Packed pixel counts of one pixel: valid + 1024 * valid nonzero + 2**20 * overloaded
    (above hi1, not `flagged`)."""
    inrange = usable & (v >= lo1) & (v <= hi1)
    return np.int32(np.int32(inrange) + np.int32(np.int32(inrange & (v != zero)) << 10)
                    + np.int32(np.int32(usable & (v > hi1) & (v != flagged)) << 20))


@njit(boundscheck=False)
def _update_columns(image, mask, enter, leave, lo1, hs1, hi1, flagged, vbig, colmb, colx, coly, tally):
    """Column sums for the next row of windows: add row `enter`, remove row `leave` (either
    may be -1). Summed pixels: mask set and lo1 <= v <= hs1 (inclusive bounds in the image's
    type); colmb += count + 256 * (count of summed values > vbig), colx += value (int32),
    coly += value**2 (uint32, modular). The entering row's pixel counts go to tally (int32
    per column, `_tally` packing: flush it with `_flush_tally` within 1023 rows). Every
    operation is 32-bit so that the loops vectorise 16 lanes wide."""
    nx = image.shape[1]
    zero = image.dtype.type(0)
    if enter >= 0 and leave >= 0:
        rin = image[enter]
        min_ = mask[enter]
        rout = image[leave]
        mout = mask[leave]
        for i in range(nx):
            v = rin[i]
            usable = min_[i] != 0
            tally[i] = np.int32(tally[i] + _tally(v, usable, lo1, hi1, flagged, zero))
            mv, xv, yv = _summed(v, usable, lo1, hs1, vbig)
            mu, xu, yu = _summed(rout[i], mout[i] != 0, lo1, hs1, vbig)
            colmb[i] = np.int32(colmb[i] + np.int32(mv - mu))
            colx[i] = np.int32(colx[i] + np.int32(xv - xu))
            coly[i] = np.uint32(coly[i] + np.uint32(yv - yu))
    elif enter >= 0:
        rin = image[enter]
        min_ = mask[enter]
        for i in range(nx):
            v = rin[i]
            usable = min_[i] != 0
            tally[i] = np.int32(tally[i] + _tally(v, usable, lo1, hi1, flagged, zero))
            mv, xv, yv = _summed(v, usable, lo1, hs1, vbig)
            colmb[i] = np.int32(colmb[i] + mv)
            colx[i] = np.int32(colx[i] + xv)
            coly[i] = np.uint32(coly[i] + yv)
    elif leave >= 0:
        rout = image[leave]
        mout = mask[leave]
        for i in range(nx):
            mu, xu, yu = _summed(rout[i], mout[i] != 0, lo1, hs1, vbig)
            colmb[i] = np.int32(colmb[i] - mu)
            colx[i] = np.int32(colx[i] - xu)
            coly[i] = np.uint32(coly[i] - yu)


@njit(boundscheck=False)
def _flush_tally(tally, stats):
    """Add the packed per-column counts to stats [overloads, valid, valid nonzero]; zero tally."""
    valid = 0
    nonzero = 0
    over = 0
    for i in range(tally.shape[0]):
        t = tally[i]
        valid += t & 1023
        nonzero += (t >> 10) & 1023
        over += t >> 20
        tally[i] = 0
    stats[0] += over
    stats[1] += valid
    stats[2] += nonzero


@njit(boundscheck=False)
def _window_sums(col, out, k):
    """out[c] = col[c] + ... + col[c + 2k] for 0 <= c < nx - 2k (the window of pixel c + k)."""
    n = col.shape[0] - 2 * k
    if k == 3:
        for c in range(n):
            out[c] = ((col[c] + col[c + 1]) + (col[c + 2] + col[c + 3])) + ((col[c + 4] + col[c + 5]) + col[c + 6])
        return
    for c in range(n):
        out[c] = col[c]
    for d in range(1, 2 * k + 1):
        src = col[d:]
        for c in range(n):
            out[c] += src[c]


@njit(boundscheck=False)
def _screen_row(row, mrow, lo1, hi1, thr1, wmb, wx, wy, k, nb2, ns2, gain, min_count, eps, dispersion_only, sel,
                amb):
    """sel/amb for the interior pixels k <= i < nx - k of one row from the window sums
    (wmb[c], wx[c], wy[c] belong to pixel c + k): sel = screen sure, amb = undecided or a
    window with a big pixel. ok: mask set, lo1 <= v <= hi1 and (strong test) v >= thr1."""
    n = row.shape[0] - 2 * k
    rv = row[k:]
    rm = mrow[k:]
    out = sel[k:]
    unsure = amb[k:]
    if dispersion_only:  # one loop per case: LLVM does not unswitch the flag (a branch in the loop)
        for c in range(n):
            _screen_pixel(rv[c], rm[c], lo1, hi1, thr1, wmb[c], wx[c], wy[c], nb2, ns2, gain, min_count, eps, True,
                          out, unsure, c)
    else:
        for c in range(n):
            _screen_pixel(rv[c], rm[c], lo1, hi1, thr1, wmb[c], wx[c], wy[c], nb2, ns2, gain, min_count, eps, False,
                          out, unsure, c)


@njit(boundscheck=False, inline="always")
def _sum7(col, c):
    """col[c] + ... + col[c + 6], in `_window_sums`'s order (the caller casts back to col's type)."""
    return ((col[c] + col[c + 1]) + (col[c + 2] + col[c + 3])) + ((col[c + 4] + col[c + 5]) + col[c + 6])


@njit(boundscheck=False)
def _screen_row7(row, mrow, lo1, hi1, thr1, colmb, colx, coly, nb2, ns2, gain, min_count, eps, dispersion_only, sel,
                 amb):
    """`_window_sums` (k = 3, DIALS's 7-pixel-wide window) and `_screen_row` in one loop: the
    window sums stay in registers instead of going through memory."""
    n = row.shape[0] - 6
    rv = row[3:]
    rm = mrow[3:]
    out = sel[3:]
    unsure = amb[3:]
    if dispersion_only:
        for c in range(n):
            _screen_pixel(rv[c], rm[c], lo1, hi1, thr1, np.int32(_sum7(colmb, c)), np.int32(_sum7(colx, c)),
                          np.uint32(_sum7(coly, c)), nb2, ns2, gain, min_count, eps, True, out, unsure, c)
    else:
        for c in range(n):
            _screen_pixel(rv[c], rm[c], lo1, hi1, thr1, np.int32(_sum7(colmb, c)), np.int32(_sum7(colx, c)),
                          np.uint32(_sum7(coly, c)), nb2, ns2, gain, min_count, eps, False, out, unsure, c)


@njit(boundscheck=False, inline="always")
def _screen_pixel(v, mv, lo1, hi1, thr1, mb, wx, wy, nb2, ns2, gain, min_count, eps, dispersion_only, out, unsure, c):
    """`_screen_row` at one pixel. int32 constants: `mb & 255` with a Python int is int64 in
    numba, which put part of the loop in 64-bit lanes (vpmovzxdq, vcvtqq2ps)."""
    ok = (mv != 0) & (v >= lo1) & (v <= hi1) & (v >= thr1)
    m = np.float32(mb & np.int32(255))
    x = np.float32(wx)
    y = np.float32(wy)
    sure, maybe = classify32(m, x, y, np.float32(v), ok, nb2, ns2, gain, min_count, eps, dispersion_only)
    big = mb > np.int32(255)
    out[c] = sure & ~big
    unsure[c] = (maybe & ~sure) | (big & ok)


@njit(boundscheck=False)
def _direct_test(image, mask, j, i, kx, ky, lo1, hs1, lower, upper, nb2, ns2, gain, threshold, min_count,
                 dispersion_only):
    """The float64 test of pixel (j, i) on exact sums taken straight from the image."""
    ny, nx = image.shape
    m = 0
    x = 0
    y = 0
    for jj in range(max(0, j - ky), min(ny, j + ky + 1)):
        for ii in range(max(0, i - kx), min(nx, i + kx + 1)):
            v = image[jj, ii]
            if (mask[jj, ii] != 0) & (v >= lo1) & (v <= hs1):
                vi = np.int64(v)
                m += 1
                x += vi
                y += vi * vi
    v = np.float64(image[j, i])
    ok = (mask[j, i] != 0) & (v > lower) & (v < upper)
    return selected64(v, ok, np.float64(m), np.float64(x), np.float64(y), nb2, ns2, gain, threshold, min_count,
                      dispersion_only)


@njit(boundscheck=False)
def banded_pass(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count, dispersion_only,
                out_index, stats, lo1, hs1, hi1, thr1, flagged, vbig):
    """The selected pixels (dispersion_only: dispersed; else strong) of an integer image with
    nonnegative summed values, as ascending flat indices in out_index; returns how many.
    lower/upper: the trusted range (open); lo1/hs1/hi1/thr1: inclusive valid, summed, valid
    and global-threshold bounds in the image's type; flagged: as `packed_pass`'s; vbig:
    `big_value` of the window size (clipped to the type). stats (int64 [overloads, valid,
    valid nonzero]) is added to."""
    ny, nx = image.shape
    n_words = (nx + 7) // 8
    sel = np.zeros(n_words * 8, np.uint8)
    sel_words = sel.view(np.uint64)
    amb = np.zeros(n_words * 8, np.uint8)
    amb_words = amb.view(np.uint64)
    colmb = np.zeros(nx, np.int32)
    colx = np.zeros(nx, np.int32)
    coly = np.zeros(nx, np.uint32)
    wmb = np.zeros(nx, np.int32)
    wx = np.zeros(nx, np.int32)
    wy = np.zeros(nx, np.uint32)
    tally = np.zeros(nx, np.int32)
    nb2 = 2.0 * nsig_b * nsig_b
    ns2 = nsig_s * nsig_s * gain
    nb2_32 = np.float32(nb2)
    ns2_32 = np.float32(ns2)
    gain_32 = np.float32(gain)
    min_32 = np.float32(min_count)
    eps = np.float32(EPS)
    thr_screen = lo1 if dispersion_only else thr1
    interior = nx > 2 * kx
    edge = kx if interior else nx
    n = 0
    for r in range(-ky, 0):
        if r + ky < ny:
            _update_columns(image, mask, r + ky, -1, lo1, hs1, hi1, flagged, vbig, colmb, colx, coly, tally)
    for r0 in range(0, ny, BAND_ROWS):
        r1 = min(r0 + BAND_ROWS, ny)
        _touch(image, min(r0 + ky, ny), min(r1 + ky, ny))
        for r in range(r0, r1):
            enter = r + ky if r + ky < ny else -1
            leave = r - ky - 1 if r - ky - 1 >= 0 else -1
            _update_columns(image, mask, enter, leave, lo1, hs1, hi1, flagged, vbig, colmb, colx, coly, tally)
            if interior and kx == 3:
                _screen_row7(image[r], mask[r], lo1, hi1, thr_screen, colmb, colx, coly, nb2_32, ns2_32, gain_32,
                             min_32, eps, dispersion_only, sel, amb)
            elif interior:
                _window_sums(colmb, wmb, kx)
                _window_sums(colx, wx, kx)
                _window_sums(coly, wy, kx)
                _screen_row(image[r], mask[r], lo1, hi1, thr_screen, wmb, wx, wy, kx, nb2_32, ns2_32, gain_32,
                            min_32, eps, dispersion_only, sel, amb)
            for i in range(edge):
                amb[i] = 1
            for i in range(max(nx - kx, edge), nx):
                amb[i] = 1
            base = r * nx
            for w in range(n_words):
                if (sel_words[w] | amb_words[w]) == 0:
                    continue
                for i in range(w * 8, min(w * 8 + 8, nx)):
                    if amb[i]:
                        amb[i] = 0
                        sel[i] = _direct_test(image, mask, r, i, kx, ky, lo1, hs1, lower, upper, nb2, ns2, gain,
                                              threshold, min_count, dispersion_only)
                    if sel[i]:
                        sel[i] = 0
                        out_index[n] = base + i
                        n += 1
        _flush_tally(tally, stats)
    return n
