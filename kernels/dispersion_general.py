"""The general pass of the dispersion thresholds: the float64 test on every pixel.

Taken by images the integer fast paths do not cover (float frames, negative summed values,
very large windows). Column sums of the window rows are updated by the row entering and the
row leaving; float images sum in float64 in the same order as a plain sliding sum, integer
images in exact integers. Loops index with nonnegative offsets only: numba's wrap-around
for negative indices stops LLVM from vectorising.
"""

from __future__ import annotations

import numpy as np

from kernels.dispersion_extended import gather_row
from kernels.dispersion_int import _window_sums
from kernels.dispersion_tests import selected64
from kernels.jit import njit


@njit(boundscheck=False)
def any_negative(image, mask):
    """True if a usable pixel (mask nonzero) of the integer `image` is below 0. Without one, a
    trusted range reaching below -1 (negative counts trusted) tests the same as the usual
    (-1, ...): the integer passes, which need nonnegative sums, then apply."""
    ny, nx = image.shape
    for j in range(ny):
        negative = 0
        for i in range(nx):
            negative |= np.int32((image[j, i] < 0) & (mask[j, i] != 0))
        if negative:
            return True
    return False


@njit(boundscheck=False)
def _enter_row(image, mask, j, lo, hi, hi_sum, flagged, colm, colx, coly, stats):
    """Add row j to the column sums (count colm int32, sum colx, sum of squares coly; their
    dtypes decide the arithmetic) and count its overloaded, valid and valid nonzero pixels
    into stats. Valid: mask set and lo < v < hi; summed: valid and v < hi_sum; overloaded:
    mask set, v >= hi and v not `flagged` (NaN: none)."""
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
        n_over += usable & (v >= hi) & (v != flagged)
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


@njit(boundscheck=False)
def _clipped(col, i, k):
    """Sum of col[i-k .. i+k] inside the row, in order, as float64."""
    s = col[i] - col[i]
    for d in range(max(0, i - k), min(col.shape[0], i + k + 1)):
        s += col[d]
    return np.float64(s)


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
                s = selected64(v, ok, m, x, y, nb2, ns2, gain, threshold, min_count, dispersion_only)
                sel[c + 3] = s
                count += s
        else:
            wm = hm[kx:]
            wx = hx[kx:]
            wy = hy[kx:]
            _window_sums(colm, wm, kx)  # k != 3: summed in order, as a plain sliding sum
            _window_sums(colx, wx, kx)
            _window_sums(coly, wy, kx)
            row = image[j, kx:]
            mrow = mask[j, kx:]
            out = sel[kx:]
            for c in range(nx - 2 * kx):  # pixel kx + c
                v = np.float64(row[c])
                ok = (mrow[c] != 0) & (v > lower) & (v < upper)
                s = selected64(v, ok, np.float64(wm[c]), np.float64(wx[c]), np.float64(wy[c]), nb2, ns2, gain,
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
            s = selected64(v, ok, _clipped(colm, i, kx), _clipped(colx, i, kx), _clipped(coly, i, kx), nb2, ns2,
                          gain, threshold, min_count, dispersion_only)
            sel[i] = s
            count += s
    return count


@njit(boundscheck=False)
def general_pass(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count,
                 dispersion_only, out_index, stats, colm, colx, coly, lo, hi, hi_sum, flagged):
    """One streaming pass: the selected flat indices (row-major) go to out_index; returns how
    many. dispersion_only: skip the strong-value and global tests (first pass of the extended
    variant). colm (int32) / colx / coly: zeroed column accumulators of
    the image width; lo, hi, hi_sum: the valid-value bounds (and the summed-value bound) in
    the image's arithmetic (integers for integer images); flagged (float64): a value at or
    above hi that is not an overload (the detector's flag of inactive pixels), NaN for none."""
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
            _enter_row(image, mask, r + ky, lo, hi, hi_sum, flagged, colm, colx, coly, stats)
        if r - ky - 1 >= 0:
            _leave_row(image, mask, r - ky - 1, lo, hi_sum, colm, colx, coly)
        if r < 0:
            continue
        hits = _test_row(image, mask, r, lower, upper, colm, colx, coly, kx, nb2, ns2, gain, threshold, min_count,
                         dispersion_only, sel, hm, hx, hy)
        if hits:
            n = gather_row(sel, sel_words, nx, r * nx, out_index, n)
    return n


@njit(boundscheck=False)
def count_valid(image, mask, lower, upper):
    """(valid, valid nonzero) pixel counts: mask set and lower < v < upper (the fast passes
    leave these to be counted on demand: only an empty result needs them)."""
    ny, nx = image.shape
    valid = 0
    nonzero = 0
    for j in range(ny):
        for i in range(nx):
            v = np.float64(image[j, i])
            ok = (mask[j, i] != 0) & (v > lower) & (v < upper)
            valid += ok
            nonzero += ok & (v != 0.0)
    return valid, nonzero
