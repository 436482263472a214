"""The quiet-frame fast path of the dispersion thresholds: one packed 32-bit column sum.

Most pixels of an X-ray diffraction frame count a few photons. For a window of W <= 63
pixels, a "quiet" pixel (value <= `quiet_value(W)`, 25 for DIALS's 7 x 7) adds to one uint32
column sum its value (bits 0-10), one (bits 11-16) and its square (bits 17-31): no field of a
window sum can overflow, so one rolling column sum and one window sum give the exact count,
sum and sum of squares of the window's quiet pixels. Invalid pixels add nothing (they are
not counted, as in DIALS). The few "loud" pixels (summed, value above the quiet bound) are
listed per row as they enter and added to the windows around them (count, sum, float32
square) before the screen, so every window's sums are exact (the square to float32 rounding,
which the screen's margin covers). The screen (`screen32`) is the float32 test with a proven
margin; undecided pixels and the kx edge columns get the float64 reference test on sums taken
from the image (`kernels.dispersion_int._direct_test`): results are the float64 reference's
bit for bit. Frames with many loud pixels (a high background) take the three-sum path
(`kernels.dispersion_int.banded_pass`), chosen by `loud_fraction`.
"""

from __future__ import annotations

import math

import numpy as np

from kernels.dispersion_int import BAND_ROWS, EPS, _direct_test, _touch
from kernels.jit import njit

X_BITS = 11
M_BITS = 6
Y_SHIFT = X_BITS + M_BITS  # 17: the square takes the top 15 bits


def quiet_value(window_pixels: int) -> int:
    """Largest value whose window sums fit the packed fields (0: the window is too large)."""
    if window_pixels >= 2**M_BITS:
        return 0
    return min((2**X_BITS - 1) // window_pixels, math.isqrt((2**(32 - Y_SHIFT) - 1) // window_pixels))


@njit(boundscheck=False, inline="always")
def _packed(v, usable, lo1, vq):
    """A pixel's packed contribution: value | 1 << 11 | value**2 << 17 if quiet and valid, else 0."""
    w = usable & (v >= lo1) & (v <= vq)
    vi = np.uint32(np.uint32(v) * np.uint32(w))
    return np.uint32(vi | np.uint32(np.uint32(w) << X_BITS) | np.uint32(np.uint32(vi * vi) << Y_SHIFT))


@njit(boundscheck=False, inline="always")
def screen32(m, x, y, v, ok, nb2, ns2, gain, min_count, eps, dispersion_only):
    """Float32 screen of one pixel: (sure, maybe); sure => the float64 reference selects it,
    not maybe => it does not. The dispersion test a = m y - x^2 - g x (m - 1) > 0 with
    a^2 > 2 sigma_b^2 (m - 1) (g x)^2 is a - g x sqrt(nb2 (m - 1)) > 0; the strong test
    b = m v - x > 0 with b^2 > sigma_s^2 g x m is b - sqrt(ns2 x m) > 0. In float32 each
    difference is within a few dozen ulps (2**-24) of the sum of its terms' magnitudes (the
    inputs exact or rounded once; the loud squares summed in float32), so deciding only
    outside eps = 2**-16 of that sum proves the exact answer, which the float64 reference
    also gives (its own rounding is ~2**-52 relative)."""
    one = np.float32(1.0)
    mm1 = m - one
    gx = gain * x
    my = m * y
    xx = x * x
    gxm = gx * mm1
    q = gx * np.sqrt(nb2 * mm1)
    d = ((my - xx) - gxm) - q
    e = eps * ((my + xx) + (gxm + q))
    base = ok & (m >= min_count)
    sure = base & (d > e)
    maybe = base & (d > -e)
    if not dispersion_only:
        mv = m * v
        s = np.sqrt(ns2 * x * m)
        d2 = (mv - x) - s
        e2 = eps * ((mv + x) + s)
        sure = sure & (d2 > e2)
        maybe = maybe & (d2 > -e2)
    return sure, maybe


@njit(boundscheck=False)
def loud_fraction(image, mask, lo1, vq, hs1, row_step):
    """Fraction of the sampled rows' usable pixels that are loud (summed, above vq)."""
    ny, nx = image.shape
    loud = 0
    total = 0
    for j in range(0, ny, row_step):
        row = image[j]
        mrow = mask[j]
        for i in range(nx):
            v = row[i]
            usable = mrow[i] != 0
            loud += np.int32(usable & (v > vq) & (v >= lo1) & (v <= hs1))
            total += np.int32(usable)
    return loud / max(total, 1)


@njit(boundscheck=False)
def _update_packed(image, mask, enter, leave, lo1, vq, col, loud):
    """col += packed(row enter) - packed(row leave) (either may be -1; uint32, exact); the
    entering row's usable pixels above vq are flagged in loud (uint8)."""
    nx = image.shape[1]
    if enter >= 0:
        rin = image[enter]
        min_ = mask[enter]
        if leave >= 0:
            rout = image[leave]
            mout = mask[leave]
            for i in range(nx):
                v = rin[i]
                usable = min_[i] != 0
                loud[i] = usable & (v > vq)
                col[i] = np.uint32(col[i] + np.uint32(_packed(v, usable, lo1, vq) - _packed(rout[i], mout[i] != 0,
                                                                                               lo1, vq)))
        else:
            for i in range(nx):
                v = rin[i]
                usable = min_[i] != 0
                loud[i] = usable & (v > vq)
                col[i] = np.uint32(col[i] + _packed(v, usable, lo1, vq))
    elif leave >= 0:
        rout = image[leave]
        mout = mask[leave]
        for i in range(nx):
            col[i] = np.uint32(col[i] - _packed(rout[i], mout[i] != 0, lo1, vq))


@njit(boundscheck=False)
def _list_loud(row, loud, loud_words, lo1, hs1, hi1, cols, vals, stats):
    """The loud pixels of one row (flagged usable and above the quiet bound): the summed ones
    (lo1 <= v <= hs1) listed by column and value, the overloaded ones (v > hi1) counted into
    stats[0]; returns how many are listed."""
    nx = row.shape[0]
    n = 0
    n_words = loud_words.shape[0]
    for w0 in range(0, n_words, 8):
        w1 = min(w0 + 8, n_words)
        any_ = np.uint64(0)
        for w in range(w0, w1):
            any_ |= loud_words[w]
        if any_ == 0:
            continue
        for i in range(w0 * 8, min(w1 * 8, nx)):
            if loud[i]:
                v = row[i]
                if (v >= lo1) & (v <= hs1):
                    cols[n] = i
                    vals[n] = np.int32(v)
                    n += 1
                elif v > hi1:
                    stats[0] += 1
    return n


@njit(boundscheck=False)
def _loud_columns(cols, vals, n, sign, lm, lx, ly):
    """Add (sign 1) or remove (sign -1) one row's listed loud pixels to the per-column loud
    sums of the window rows (count lm, sum lx, square ly, all exact)."""
    for t in range(n):
        i = cols[t]
        v = np.int64(vals[t])
        lm[i] += sign
        lx[i] += sign * v
        ly[i] += sign * v * v


@njit(boundscheck=False)
def _spread_loud(r, ky, kx, ny, nx, ring_cols, ring_n, lm, lx, ly, seen, active, dm, dx, dy, add):
    """Per-window loud corrections of output row r: every column holding loud pixels in the
    window rows adds its loud sums to the windows within kx of it (add), or clears them."""
    period = ring_n.shape[0]
    n_active = 0
    for jj in range(max(0, r - ky), min(ny, r + ky + 1)):
        s = jj % period
        for t in range(ring_n[s]):
            i = ring_cols[s, t]
            if not seen[i]:
                seen[i] = 1
                active[n_active] = i
                n_active += 1
    for a in range(n_active):
        i = active[a]
        seen[i] = 0
        c0 = max(0, i - kx)
        c1 = min(nx, i + kx + 1)
        if add:
            m = np.int32(lm[i])
            x = np.int32(lx[i])
            y = np.float32(ly[i])
            for c in range(c0, c1):
                dm[c] += m
                dx[c] += x
                dy[c] += y
        else:
            for c in range(c0, c1):
                dm[c] = 0
                dx[c] = 0
                dy[c] = 0


@njit(boundscheck=False)
def _screen_row_packed(row, mrow, lo1, hi1, thr1, col, k, dm, dx, dy, wsum, nb2, ns2, gain, min_count, eps,
                       dispersion_only, sel, amb):
    """sel = sure, amb = undecided for the interior pixels k <= i < nx - k of one row, from the
    packed column sums plus the loud corrections (dm, dx, dy indexed by pixel column). One
    straight loop: LLVM vectorises it 16 lanes wide (blocked early-outs measured slower)."""
    nx = row.shape[0]
    n = nx - 2 * k
    if k != 3:
        for c in range(n):
            wsum[c] = col[c]
        for d in range(1, 2 * k + 1):
            src = col[d:]
            for c in range(n):
                wsum[c] = np.uint32(wsum[c] + src[c])
    rv = row[k:]
    rm = mrow[k:]
    cm = dm[k:]
    cx = dx[k:]
    cy = dy[k:]
    out = sel[k:]
    unsure = amb[k:]
    for c in range(n):
        if k == 3:
            p = np.uint32(((col[c] + col[c + 1]) + (col[c + 2] + col[c + 3])) + ((col[c + 4] + col[c + 5]) + col[c + 6]))
        else:
            p = wsum[c]
        m = np.float32(np.int32(np.int32((p >> X_BITS) & 63) + cm[c]))
        x = np.float32(np.int32(np.int32(p & 2047) + cx[c]))
        y = np.float32(p >> Y_SHIFT) + cy[c]
        v = rv[c]
        ok = (rm[c] != 0) & (v >= lo1) & (v <= hi1) & (v >= thr1)
        sure, maybe = screen32(m, x, y, np.float32(v), ok, nb2, ns2, gain, min_count, eps, dispersion_only)
        out[c] = sure
        unsure[c] = maybe & ~sure


@njit(boundscheck=False)
def _screen_edges(row, mrow, lo1, hi1, thr1, col, k, dm, dx, dy, nb2, ns2, gain, min_count, eps, dispersion_only,
                  sel, amb):
    """`_screen_row_packed` for the k pixels at each end of the row (clipped windows)."""
    nx = row.shape[0]
    n_left = min(k, nx)
    right = max(nx - k, k)
    for e in range(n_left + max(0, nx - right)):
        i = e if e < n_left else right + e - n_left
        p = np.uint32(0)
        for c in range(max(0, i - k), min(nx, i + k + 1)):
            p = np.uint32(p + col[c])
        m = np.float32(np.int32(np.int32((p >> X_BITS) & 63) + dm[i]))
        x = np.float32(np.int32(np.int32(p & 2047) + dx[i]))
        y = np.float32(p >> Y_SHIFT) + dy[i]
        v = row[i]
        ok = (mrow[i] != 0) & (v >= lo1) & (v <= hi1) & (v >= thr1)
        sure, maybe = screen32(m, x, y, np.float32(v), ok, nb2, ns2, gain, min_count, eps, dispersion_only)
        sel[i] = sure
        amb[i] = maybe & ~sure


@njit(boundscheck=False)
def packed_pass(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count, dispersion_only,
                out_index, stats, lo1, hs1, hi1, thr1, vq):
    """The selected pixels (dispersion_only: dispersed; else strong) as ascending flat
    indices in out_index; returns how many. lower/upper: the trusted range (open);
    lo1/hs1/hi1/thr1: inclusive valid, summed, valid and global-threshold bounds in the
    image's type; vq: `quiet_value` of the window, at most hs1. stats (int64 [overloads,
    valid, valid nonzero]) is added to."""
    ny, nx = image.shape
    n_words = (nx + 7) // 8
    sel = np.zeros(n_words * 8, np.uint8)
    sel_words = sel.view(np.uint64)
    amb = np.zeros(n_words * 8, np.uint8)
    amb_words = amb.view(np.uint64)
    loud = np.zeros(n_words * 8, np.uint8)
    loud_words = loud.view(np.uint64)
    col = np.zeros(nx, np.uint32)
    wsum = np.zeros(nx, np.uint32)
    lm = np.zeros(nx, np.int64)
    lx = np.zeros(nx, np.int64)
    ly = np.zeros(nx, np.int64)
    seen = np.zeros(nx, np.uint8)
    active = np.zeros(nx, np.int64)
    dm = np.zeros(nx, np.int32)
    dx = np.zeros(nx, np.int32)
    dy = np.zeros(nx, np.float32)
    period = 2 * ky + 1
    ring_cols = np.zeros((period, nx), np.int32)
    ring_vals = np.zeros((period, nx), np.int32)
    ring_n = np.zeros(period, np.int64)
    nb2 = 2.0 * nsig_b * nsig_b
    ns2 = nsig_s * nsig_s * gain
    nb2_32 = np.float32(nb2)
    ns2_32 = np.float32(ns2)
    gain_32 = np.float32(gain)
    min_32 = np.float32(min_count)
    eps = np.float32(EPS)
    thr_screen = lo1 if dispersion_only else thr1
    n = 0
    for j in range(0, min(ky, ny)):
        _update_packed(image, mask, j, -1, lo1, vq, col, loud)
        s = j % period
        ring_n[s] = _list_loud(image[j], loud, loud_words, lo1, hs1, hi1, ring_cols[s], ring_vals[s], stats)
        _loud_columns(ring_cols[s], ring_vals[s], ring_n[s], 1, lm, lx, ly)
    for r0 in range(0, ny, BAND_ROWS):
        r1 = min(r0 + BAND_ROWS, ny)
        _touch(image, min(r0 + ky, ny), min(r1 + ky, ny))
        for r in range(r0, r1):
            enter = r + ky if r + ky < ny else -1
            leave = r - ky - 1 if r - ky - 1 >= 0 else -1
            _update_packed(image, mask, enter, leave, lo1, vq, col, loud)
            if leave >= 0:
                s = leave % period
                _loud_columns(ring_cols[s], ring_vals[s], ring_n[s], -1, lm, lx, ly)
                ring_n[s] = 0
            if enter >= 0:
                s = enter % period
                ring_n[s] = _list_loud(image[enter], loud, loud_words, lo1, hs1, hi1, ring_cols[s], ring_vals[s],
                                       stats)
                _loud_columns(ring_cols[s], ring_vals[s], ring_n[s], 1, lm, lx, ly)
            _spread_loud(r, ky, kx, ny, nx, ring_cols, ring_n, lm, lx, ly, seen, active, dm, dx, dy, True)
            row = image[r]
            mrow = mask[r]
            if nx > 2 * kx:
                _screen_row_packed(row, mrow, lo1, hi1, thr_screen, col, kx, dm, dx, dy, wsum, nb2_32, ns2_32,
                                   gain_32, min_32, eps, dispersion_only, sel, amb)
            _screen_edges(row, mrow, lo1, hi1, thr_screen, col, kx, dm, dx, dy, nb2_32, ns2_32, gain_32, min_32,
                          eps, dispersion_only, sel, amb)
            _spread_loud(r, ky, kx, ny, nx, ring_cols, ring_n, lm, lx, ly, seen, active, dm, dx, dy, False)
            base = r * nx
            for w0 in range(0, n_words, 8):
                w1 = min(w0 + 8, n_words)
                any_ = np.uint64(0)
                for w in range(w0, w1):
                    any_ |= sel_words[w] | amb_words[w]
                if any_ == 0:
                    continue
                for i in range(w0 * 8, min(w1 * 8, nx)):
                    if amb[i]:
                        amb[i] = 0
                        sel[i] = _direct_test(image, mask, r, i, kx, ky, lo1, hs1, lower, upper, nb2, ns2, gain,
                                              threshold, min_count, dispersion_only)
                    if sel[i]:
                        out_index[n] = base + i
                        n += 1
                        sel[i] = 0
    stats[1] = -1  # valid and valid nonzero counts: on demand (`count_valid`)
    stats[2] = -1
    return n
