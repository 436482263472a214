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

Implementation (one streaming pass, rows top to bottom): column sums of the window rows are
updated by the row entering and the row leaving the window; the horizontal window sums are
formed straight from the column sums inside the per-row test loop. Integer images with
nonnegative summed values (DIALS's trusted range starts at -1) take the screened pass: exact
integer column sums (int32 count and sum, int64 sum of squares), then a float32 screen of
both tests with a proven error margin on every pixel in one SIMD loop, which decides all but
the pixels within 2**-16 of a threshold; those (and the kx edge columns) get the float64
test on the exact sums, so the answer is the float64 one bit for bit (see `_classify`).
Other images (floats, negative values) take the general pass: the float64 test on every
pixel, float images summing in float64 in the same order as the plain sliding sum. Loops
index with nonnegative offsets only: numba's wrap-around for negative indices stops LLVM
from vectorising. Selected pixels come out as a sparse, row-major list of flat indices.
The extended variant erodes the dispersed map on the fly (a ring of horizontally eroded
rows) and its second pass only visits core pixels.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit

BIG = float(1 << 24)  # DIALS leaves values at or above this out of the window sums
INT32_WINDOW_PIXELS = 127  # (2kx+1)(2ky+1) * 2**24 < 2**31: int32 window sums of values in (-2**24, 2**24)
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64)


@njit(boundscheck=False)
def _enter_row(image, mask, j, lo, hi, hi_sum, colm, colx, coly, stats):
    """Add row j to the column sums (count colm int32, sum colx, sum of squares coly; their
    dtypes decide the arithmetic) and count its overloaded, valid and valid nonzero pixels
    into stats. Valid: mask set and lo < v < hi; summed: valid and v < hi_sum."""
    nx = image.shape[1]
    n_over = 0
    n_valid = 0
    n_nonzero = 0
    for i in range(nx):
        v = image[j, i]
        usable = mask[j, i] != 0
        above = v > lo
        w = usable & above & (v < hi_sum)
        inrange = usable & above & (v < hi)
        vx = colx.dtype.type(v) * colx.dtype.type(w)
        vy = coly.dtype.type(v) * coly.dtype.type(w)
        colm[i] += np.int32(w)
        colx[i] += vx
        coly[i] += vy * coly.dtype.type(v)
        n_over += usable & (v >= hi)
        n_valid += inrange
        n_nonzero += inrange & (v != 0)
    stats[0] += n_over
    stats[1] += n_valid
    stats[2] += n_nonzero


@njit(boundscheck=False)
def _leave_row(image, mask, j, lo, hi_sum, colm, colx, coly):
    """Remove row j from the column sums (the inverse of `_enter_row`)."""
    nx = image.shape[1]
    for i in range(nx):
        v = image[j, i]
        w = (mask[j, i] != 0) & (v > lo) & (v < hi_sum)
        vx = colx.dtype.type(v) * colx.dtype.type(w)
        vy = coly.dtype.type(v) * coly.dtype.type(w)
        colm[i] -= np.int32(w)
        colx[i] -= vx
        coly[i] -= vy * coly.dtype.type(v)


@njit(boundscheck=False, inline="always")
def _selected(v, ok, m, x, y, nb2, ns2, gain, threshold, min_count, dispersion_only):
    """The branch-free dispersion (and, unless dispersion_only, strong) test of one pixel of
    value v (float64) whose window holds m valid pixels of sum x and sum of squares y."""
    gx = gain * x
    a = m * y - x * x - gx * (m - 1.0)
    sel = ok & (m >= min_count) & (x >= 0.0) & (a > 0.0) & (a * a > nb2 * (m - 1.0) * gx * gx)
    if not dispersion_only:
        b = m * v - x
        sel = sel & (v > threshold) & (b > 0.0) & (b * b > ns2 * x * m)
    return sel


@njit(boundscheck=False)
def _clipped(col, i, k):
    """Sum of col[i-k .. i+k] inside the row, in order, as float64."""
    s = col[i] - col[i]
    for d in range(max(0, i - k), min(col.shape[0], i + k + 1)):
        s += col[d]
    return np.float64(s)


@njit(boundscheck=False)
def _window_generic(col, out, k):
    """out[i] = col[i-k] + ... + col[i+k] (summed in that order) for k <= i < nx - k."""
    n = col.shape[0] - 2 * k
    dst = out[k:]  # indices stay provably nonnegative: numba's negative-index wrap-around blocks SIMD
    for i in range(n):
        dst[i] = col[i]
    for d in range(1, 2 * k + 1):
        src = col[d:]
        for i in range(n):
            dst[i] += src[i]


@njit(boundscheck=False)
def _test_row(image, mask, j, lower, upper, colm, colx, coly, kx, nb2, ns2, gain, threshold, min_count,
              dispersion_only, sel, hm, hx, hy):
    """sel[i] = test result of pixel (j, i) for the window whose column sums are given;
    returns how many pass. hm/hx/hy: scratch rows for kernel half-widths other than 3."""
    nx = image.shape[1]
    count = 0
    if nx > 2 * kx + 1:
        if kx == 3:  # DIALS's default: the seven-term sum inline, paired as the float reference sums
            row = image[j]
            mrow = mask[j]
            for c in range(nx - 6):  # pixel i = c + 3; nonnegative offsets only (they vectorise)
                m = np.float64(((colm[c] + colm[c + 1]) + (colm[c + 2] + colm[c + 3])) + (colm[c + 4] + colm[c + 5])
                               + colm[c + 6])
                x = np.float64(((colx[c] + colx[c + 1]) + (colx[c + 2] + colx[c + 3])) + (colx[c + 4] + colx[c + 5])
                               + colx[c + 6])
                y = np.float64(((coly[c] + coly[c + 1]) + (coly[c + 2] + coly[c + 3])) + (coly[c + 4] + coly[c + 5])
                               + coly[c + 6])
                v = np.float64(row[c + 3])
                ok = (mrow[c + 3] != 0) & (v > lower) & (v < upper)
                s = _selected(v, ok, m, x, y, nb2, ns2, gain, threshold, min_count, dispersion_only)
                sel[c + 3] = s
                count += s
        else:
            _window_generic(colm, hm, kx)
            _window_generic(colx, hx, kx)
            _window_generic(coly, hy, kx)
            row = image[j, kx:]
            mrow = mask[j, kx:]
            wm = hm[kx:]
            wx = hx[kx:]
            wy = hy[kx:]
            out = sel[kx:]
            for c in range(nx - 2 * kx):  # pixel kx + c
                v = np.float64(row[c])
                ok = (mrow[c] != 0) & (v > lower) & (v < upper)
                s = _selected(v, ok, np.float64(wm[c]), np.float64(wx[c]), np.float64(wy[c]), nb2, ns2, gain,
                              threshold, min_count, dispersion_only)
                out[c] = s
                count += s
        edges = (0, kx, nx - kx, nx)
    else:
        edges = (0, nx, nx, nx)
    for e in range(2):
        for i in range(edges[2 * e], edges[2 * e + 1]):
            v = np.float64(image[j, i])
            ok = (mask[j, i] != 0) & (v > lower) & (v < upper)
            s = _selected(v, ok, _clipped(colm, i, kx), _clipped(colx, i, kx), _clipped(coly, i, kx), nb2, ns2,
                          gain, threshold, min_count, dispersion_only)
            sel[i] = s
            count += s
    return count


@njit(boundscheck=False)
def _gather_row(sel, sel_words, nx, base, out_index, n):
    """Append base + i for every sel[i] != 0 (i < nx) to out_index, skipping all-zero 8-byte
    words; returns the new count."""
    for w in range(sel_words.shape[0]):
        if sel_words[w] == 0:
            continue
        for i in range(w * 8, min(w * 8 + 8, nx)):
            if sel[i]:
                out_index[n] = base + i
                n += 1
    return n


@njit(boundscheck=False)
def _dispersion_pass(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count,
                     dispersion_only, flag, out_index, stats, colm, colx, coly, lo, hi, hi_sum):
    """One streaming pass: every row of flag is written (1 = selected) and the selected flat
    indices (row-major) go to out_index; returns how many. dispersion_only: skip the strong-value and global tests (first
    pass of the extended variant). colm (int32) / colx / coly: zeroed column accumulators of
    the image width; lo, hi, hi_sum: the valid-value bounds (and the summed-value bound) in
    the image's arithmetic (integers for integer images)."""
    ny, nx = image.shape
    n_words = (nx + 7) // 8
    sel = np.zeros(n_words * 8, np.uint8)
    sel_words = sel.view(np.uint64)
    hm = np.empty(nx, colm.dtype)
    hx = np.empty(nx, colx.dtype)
    hy = np.empty(nx, coly.dtype)
    nb2 = 2.0 * nsig_b * nsig_b
    ns2 = nsig_s * nsig_s * gain
    n = 0
    for r in range(-ky, ny):
        # the window of row r spans rows r - ky .. r + ky: row r + ky enters, row r - ky - 1 leaves
        if r + ky < ny:
            _enter_row(image, mask, r + ky, lo, hi, hi_sum, colm, colx, coly, stats)
        if r - ky - 1 >= 0:
            _leave_row(image, mask, r - ky - 1, lo, hi_sum, colm, colx, coly)
        if r < 0:
            continue
        hits = _test_row(image, mask, r, lower, upper, colm, colx, coly, kx, nb2, ns2, gain, threshold, min_count,
                         dispersion_only, sel, hm, hx, hy)
        frow = flag[r]
        for i in range(nx):
            frow[i] = sel[i]
        if hits:
            n = _gather_row(sel, sel_words, nx, r * nx, out_index, n)
    return n


@njit(boundscheck=False, inline="always")
def _summed(v, usable, lo1, hs1):
    """(count, value, square) a pixel adds to the column sums: lo1 <= v <= hs1 (inclusive
    bounds in the image's own type, so the compares stay in its narrow SIMD lanes)."""
    w = usable & (v >= lo1) & (v <= hs1)
    return np.int32(w), np.int32(v) * np.int32(w), np.int64(v) * np.int64(v) * np.int64(w)


@njit(boundscheck=False)
def _update_row(image, mask, enter, leave, lo1, hs1, hi1, colm, colx, coly, cm, cx, cy, counts):
    """Column sums for the next row of windows, for integer images with nonnegative summed
    values: add row `enter`, remove row `leave` (either may be -1; int32 count and sum, int64
    sum of squares, all exact), count the entering row's overloaded (v > hi1), valid
    (lo1 <= v <= hi1) and valid nonzero pixels per column into counts (3, nx) int32, and
    leave float32 copies of the three column sums in cm, cx, cy. Bounds are inclusive and in
    the image's type; everything happens in one vectorised loop over the row."""
    nx = image.shape[1]
    zero = image.dtype.type(0)
    over = counts[0]
    valid = counts[1]
    nonzero = counts[2]
    if enter >= 0:
        rin = image[enter]
        min_ = mask[enter]
    if enter >= 0 and leave >= 0:
        rout = image[leave]
        mout = mask[leave]
        for i in range(nx):
            v = rin[i]
            usable = min_[i] != 0
            inrange = usable & (v >= lo1) & (v <= hi1)
            over[i] += np.int32(usable & (v > hi1))
            valid[i] += np.int32(inrange)
            nonzero[i] += np.int32(inrange & (v != zero))
            wv, xv, yv = _summed(v, usable, lo1, hs1)
            wu, xu, yu = _summed(rout[i], mout[i] != 0, lo1, hs1)
            m = colm[i] + (wv - wu)
            x = colx[i] + (xv - xu)
            y = coly[i] + (yv - yu)
            colm[i] = m
            colx[i] = x
            coly[i] = y
            cm[i] = np.float32(m)
            cx[i] = np.float32(x)
            cy[i] = np.float32(y)
        return
    if enter >= 0:
        for i in range(nx):
            v = rin[i]
            usable = min_[i] != 0
            inrange = usable & (v >= lo1) & (v <= hi1)
            over[i] += np.int32(usable & (v > hi1))
            valid[i] += np.int32(inrange)
            nonzero[i] += np.int32(inrange & (v != zero))
    sign = 1 if enter >= 0 else -1
    if enter >= 0 or leave >= 0:
        row = image[enter] if enter >= 0 else image[leave]
        mrow = mask[enter] if enter >= 0 else mask[leave]
        for i in range(nx):
            w, xv, yv = _summed(row[i], mrow[i] != 0, lo1, hs1)
            colm[i] += sign * w
            colx[i] += sign * xv
            coly[i] += sign * yv
    for i in range(nx):
        cm[i] = np.float32(colm[i])
        cx[i] = np.float32(colx[i])
        cy[i] = np.float32(coly[i])


@njit(boundscheck=False, inline="always")
def _classify(m, x, y, v, ok, nb2, ns2, gain, min_count, eps, dispersion_only):
    """Float32 screen of one pixel: (sure, maybe) with sure => the float64 test selects it and
    not maybe => it does not; only pixels with maybe and not sure need the float64 test.

    Needs nonnegative summed values and pixel value (then m, x, y, v >= 0), `ok` (valid,
    above the global threshold) exact, and a window of at most 127 pixels with summed values
    below 2**24 (every square below stays under float32's range). The dispersion test is
    a > 0 and a^2 > t2 with a = m y - x^2 - g x (m - 1), t2 = 2 sigma_b^2 (m - 1) (g x)^2; the
    strong test b > 0 and b^2 > s2 with b = m v - x, s2 = sigma_s^2 g x m. In float32, a is
    off by at most a few dozen ulps (2**-24) of S = m y + x^2 + g x (m - 1), and t2, s2 and
    the squares by a few dozen ulps of themselves (the float64 reference by a few ulps of
    2**-53), so with eps = 2**-16: a - eps S > 0 and (a - eps S)^2 (1 - eps) > t2 (1 + eps)
    proves the float64 test true, and failing a + eps S > 0 and (a + eps S)^2 (1 + eps) >
    t2 (1 - eps) proves it false; the same for b with eps (m v + x). No square roots."""
    one = np.float32(1.0)
    up = one + eps
    down = one - eps
    gx = gain * x
    mm1 = m - one
    my = m * y
    xx = x * x
    gxm = gx * mm1
    a = (my - xx) - gxm
    da = eps * ((my + xx) + gxm)
    t2 = (nb2 * mm1) * (gx * gx)
    lo_a = a - da
    hi_a = a + da
    base = ok & (m >= min_count)
    sure = base & (lo_a > 0) & (lo_a * lo_a * down > t2 * up)
    maybe = base & (hi_a > 0) & (hi_a * hi_a * up > t2 * down)
    if not dispersion_only:
        mv = m * v
        b = mv - x
        db = eps * (mv + x)
        s2 = ns2 * x * m
        lo_b = b - db
        hi_b = b + db
        sure = sure & (lo_b > 0) & (lo_b * lo_b * down > s2 * up)
        maybe = maybe & (hi_b > 0) & (hi_b * hi_b * up > s2 * down)
    return sure, maybe


@njit(boundscheck=False, inline="always")
def _screen_row_k3(row, mrow, lo1, hi1, thr1, cm, cx, cy, nb2, ns2, gain, min_count, eps, dispersion_only, sel,
                   amb):
    """`_screen_row` for kx = 3 with the seven-term sums inline (inlined with a constant
    dispersion_only, so each variant is one straight SIMD loop)."""
    nx = cm.shape[0]
    out = sel[3:]
    unsure = amb[3:]
    rv = row[3:]
    rm = mrow[3:]
    for c in range(nx - 6):  # pixel c + 3; nonnegative offsets: numba's negative-index wrap-around blocks SIMD
        m = ((cm[c] + cm[c + 1]) + (cm[c + 2] + cm[c + 3])) + ((cm[c + 4] + cm[c + 5]) + cm[c + 6])
        x = ((cx[c] + cx[c + 1]) + (cx[c + 2] + cx[c + 3])) + ((cx[c + 4] + cx[c + 5]) + cx[c + 6])
        y = ((cy[c] + cy[c + 1]) + (cy[c + 2] + cy[c + 3])) + ((cy[c + 4] + cy[c + 5]) + cy[c + 6])
        v = rv[c]
        ok = (rm[c] != 0) & (v >= lo1) & (v <= hi1) & (v >= thr1)
        sure, maybe = _classify(m, x, y, np.float32(v), ok, nb2, ns2, gain, min_count, eps, dispersion_only)
        out[c] = sure
        unsure[c] = maybe & ~sure


@njit(boundscheck=False)
def _screen_row(row, mrow, lo1, hi1, thr1, cm, cx, cy, kx, hm, hx, hy, nb2, ns2, gain, min_count, eps,
                dispersion_only, sel, amb):
    """sel[i] = sure, amb[i] = maybe and not sure (`_classify`) for the interior pixels
    kx <= i < nx - kx of one row, from the float32 column sums cm, cx, cy (hm, hx, hy:
    scratch for kx != 3). A pixel is ok if its mask is set and lo1 <= v <= hi1, and (strong
    test) v >= thr1, all inclusive bounds in the image's type."""
    nx = cm.shape[0]
    if dispersion_only:
        thr1 = lo1
    if kx == 3:
        if dispersion_only:
            _screen_row_k3(row, mrow, lo1, hi1, thr1, cm, cx, cy, nb2, ns2, gain, min_count, eps, True, sel, amb)
        else:
            _screen_row_k3(row, mrow, lo1, hi1, thr1, cm, cx, cy, nb2, ns2, gain, min_count, eps, False, sel, amb)
        return
    _window_generic(cm, hm, kx)
    _window_generic(cx, hx, kx)
    _window_generic(cy, hy, kx)
    wm = hm[kx:]
    wx = hx[kx:]
    wy = hy[kx:]
    out = sel[kx:]
    unsure = amb[kx:]
    rv = row[kx:]
    rm = mrow[kx:]
    for c in range(nx - 2 * kx):
        v = rv[c]
        ok = (rm[c] != 0) & (v >= lo1) & (v <= hi1) & (v >= thr1)
        sure, maybe = _classify(wm[c], wx[c], wy[c], np.float32(v), ok, nb2, ns2, gain, min_count, eps,
                                dispersion_only)
        out[c] = sure
        unsure[c] = maybe & ~sure


@njit(boundscheck=False)
def _exact_at(image, mask, j, i, lower, upper, colm, colx, coly, kx, nb2, ns2, gain, threshold, min_count,
              dispersion_only):
    """The float64 test of pixel (j, i) from the exact integer column sums."""
    v = np.float64(image[j, i])
    ok = (mask[j, i] != 0) & (v > lower) & (v < upper)
    return _selected(v, ok, _clipped(colm, i, kx), _clipped(colx, i, kx), _clipped(coly, i, kx), nb2, ns2, gain,
                     threshold, min_count, dispersion_only)


@njit(boundscheck=False)
def _and_window(src, dst, radius):
    """dst[i] = AND of src[i-radius .. i+radius] (nonzero = set) clipped to the row."""
    nx = src.shape[0]
    if nx > 2 * radius:
        out = dst[radius:]
        n = nx - 2 * radius
        for c in range(n):
            out[c] = src[c] != 0
        for d in range(1, 2 * radius + 1):
            s = src[d:]
            for c in range(n):
                out[c] &= s[c] != 0
        edges = (0, radius, nx - radius, nx)
    else:
        edges = (0, nx, nx, nx)
    for e in range(2):
        for i in range(edges[2 * e], edges[2 * e + 1]):
            keep = True
            for ii in range(max(0, i - radius), min(nx, i + radius + 1)):
                keep &= src[ii] != 0
            dst[i] = keep


@njit(boundscheck=False)
def _core_row(hring, q, ny, radius, flag, core_row, core_words, core_out, nc):
    """Row q of the eroded (core) map: AND of the horizontal erosions of rows q-radius ..
    q+radius (inside the image, kept in the ring hring[row % (2 radius + 1)]); marks core
    pixels flag = 2 and appends their flat indices to core_out; returns the new count."""
    nx = flag.shape[1]
    period = hring.shape[0]
    j0 = max(0, q - radius)
    j1 = min(ny, q + radius + 1)
    first = hring[j0 % period]
    for i in range(nx):
        core_row[i] = first[i]
    for jj in range(j0 + 1, j1):
        h = hring[jj % period]
        for i in range(nx):
            core_row[i] &= h[i]
    frow = flag[q]
    base = q * nx
    for w in range(core_words.shape[0]):
        if core_words[w] == 0:
            continue
        for i in range(w * 8, min(w * 8 + 8, nx)):
            if core_row[i]:
                frow[i] = 2
                core_out[nc] = base + i
                nc += 1
    return nc


@njit(boundscheck=False)
def _screened_pass(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count,
                   dispersion_only, flag, out_index, stats, colm, colx, coly, lo1, hs1, hi1, thr1):
    """The streaming pass for integer images whose summed values are all >= 0: column sums
    in exact integers (`_update_row`), the float32 screen (`_screen_row`) on every pixel,
    the float64 test of `_dispersion_pass` (same expression, same exact sums) only where the
    screen is unsure and at the kx edge columns. Writes every row of flag (1 = selected).
    Classic (not dispersion_only): the strong pixels go to out_index. Extended
    (dispersion_only): the dispersed map is eroded on the fly (radius min(kx, ky) - 1, see
    `_erode_core`), core pixels get flag 2 and go to out_index. Returns how many.
    lo1/hs1/hi1/thr1: inclusive valid, summed, valid and global-threshold bounds in the
    image's type."""
    ny, nx = image.shape
    n_words = (nx + 7) // 8
    sel = np.zeros(n_words * 8, np.uint8)
    sel_words = sel.view(np.uint64)
    amb = np.zeros(n_words * 8, np.uint8)
    amb_words = amb.view(np.uint64)
    cm = np.zeros(nx, np.float32)
    cx = np.zeros(nx, np.float32)
    cy = np.zeros(nx, np.float32)
    hm = np.zeros(nx, np.float32)
    hx = np.zeros(nx, np.float32)
    hy = np.zeros(nx, np.float32)
    radius = min(kx, ky) - 1
    hring = np.zeros((2 * radius + 1, nx), np.uint8)
    core_row = np.zeros(n_words * 8, np.uint8)
    core_words = core_row.view(np.uint64)
    nb2 = 2.0 * nsig_b * nsig_b
    ns2 = nsig_s * nsig_s * gain
    nb2_32 = np.float32(nb2)
    ns2_32 = np.float32(ns2)
    gain_32 = np.float32(gain)
    min_32 = np.float32(min_count)
    eps = np.float32(2.0 ** -16)
    counts = np.zeros((3, nx), np.int32)
    interior = nx > 2 * kx + 1
    edge = kx if interior else nx
    n = 0
    for r in range(-ky, ny):
        _update_row(image, mask, r + ky if r + ky < ny else -1, r - ky - 1 if r - ky - 1 >= 0 else -1, lo1, hs1,
                    hi1, colm, colx, coly, cm, cx, cy, counts)
        if r < 0:
            continue
        if interior:
            _screen_row(image[r], mask[r], lo1, hi1, thr1, cm, cx, cy, kx, hm, hx, hy, nb2_32, ns2_32, gain_32,
                        min_32, eps, dispersion_only, sel, amb)
            for w in range(amb_words.shape[0]):
                if amb_words[w] == 0:
                    continue
                for i in range(w * 8, min(w * 8 + 8, nx)):
                    if amb[i]:
                        sel[i] = _exact_at(image, mask, r, i, lower, upper, colm, colx, coly, kx, nb2, ns2, gain,
                                           threshold, min_count, dispersion_only)
                        amb[i] = 0
        for i in range(edge):
            sel[i] = _exact_at(image, mask, r, i, lower, upper, colm, colx, coly, kx, nb2, ns2, gain, threshold,
                               min_count, dispersion_only)
        for i in range(max(nx - kx, edge), nx):
            sel[i] = _exact_at(image, mask, r, i, lower, upper, colm, colx, coly, kx, nb2, ns2, gain, threshold,
                               min_count, dispersion_only)
        frow = flag[r]
        for i in range(nx):
            frow[i] = sel[i]
        if dispersion_only:
            _and_window(frow, hring[r % (2 * radius + 1)], radius)
            if r - radius >= 0:
                n = _core_row(hring, r - radius, ny, radius, flag, core_row, core_words, out_index, n)
        else:
            n = _gather_row(sel, sel_words, nx, r * nx, out_index, n)
    if dispersion_only:
        for q in range(max(ny - radius, 0), ny):
            n = _core_row(hring, q, ny, radius, flag, core_row, core_words, out_index, n)
    for c in range(3):
        stats[c] += counts[c].astype(np.int64).sum()
    return n


@njit(boundscheck=False)
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


@njit(boundscheck=False)
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


@njit(boundscheck=False)
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
    extended variant: 1 dispersed, 2 eroded core) and 0 elsewhere; `stats` [overloads, valid,
    valid nonzero] pixel counts of the last frame.
    """

    def __init__(self, shape: tuple[int, int]):
        self.shape = tuple(shape)
        self.flag = np.zeros(self.shape, dtype=np.uint8)
        size = self.shape[0] * self.shape[1]
        index_dtype = np.int32 if size < 2**31 else np.int64
        self.index = np.empty(size, dtype=index_dtype)
        self.dispersed = np.empty(size, dtype=index_dtype)  # the extended variant's first list (general path)
        self.stats = np.zeros(3, dtype=np.int64)
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

    @property
    def n_overloads(self) -> int:
        return int(self.stats[0])

    @property
    def n_valid(self) -> int:
        return int(self.stats[1])

    @property
    def n_valid_nonzero(self) -> int:
        return int(self.stats[2])


def _bounds(dtype: np.dtype, lower: float, upper: float) -> tuple[object, object, object]:
    """(lo, hi, hi_sum) in the image's arithmetic: for integers v > lower <=> v > floor(lower)
    and v < upper <=> v < ceil(upper), clamped to the int64 range; hi_sum = min(hi, 2**24)."""
    if dtype.kind in "iu":
        lo = np.int64(max(np.floor(lower), -4e18))
        hi = np.int64(min(np.ceil(upper), 4e18))
        return lo, hi, np.int64(min(hi, int(BIG)))
    return np.float64(lower), np.float64(upper), np.float64(min(upper, BIG))


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
    lo, hi, hi_sum = _bounds(image.dtype, lower, upper)
    # int32 value sums are exact when every summed value lies in (-2**24, 2**24) and the window is small
    narrow = image.dtype.kind in "iu" and lo >= -int(BIG) and (2 * kx + 1) * (2 * ky + 1) <= INT32_WINDOW_PIXELS
    colm, colx, coly = ws.columns(image.dtype.kind, narrow)
    args = (image, mask, lower, upper, kx, ky, float(sigma_background), float(sigma_strong), float(gain),
            float(global_threshold), float(min_local), extended, ws.flag)
    # the float32 screen's squares stay finite for windows <= 127 pixels and gains <= 1e6 (`_classify`)
    screenable = narrow and gain <= 1e6
    native = _native_bounds(image.dtype, lo, hi, hi_sum, float(global_threshold)) if screenable else None
    if native is not None:
        # integer fast path; for the extended variant the pass returns the eroded core list
        nc = _screened_pass(*args, ws.index, ws.stats, colm, colx, coly, *native)
        if not extended:
            return ws.index[:nc]
    else:
        n = _dispersion_pass(*args, ws.dispersed, ws.stats, colm, colx, coly, lo, hi, hi_sum)
        if not extended:
            ws.index[:n] = ws.dispersed[:n]
            return ws.index[:n]
        nc = _erode_core(ws.flag, ws.dispersed, n, min(kx, ky) - 1, ws.index)
    # the strong list is written in place over the core list (a subset, in order)
    ns = _extended_final(image, mask, lower, upper, kx + 2, ky + 2, float(sigma_strong), float(gain),
                         float(global_threshold), ws.flag, ws.index, nc, ws.index)
    return ws.index[:ns]
