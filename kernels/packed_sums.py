"""Packed quiet window sums, and the float32 screens that read them.

Most pixels of an X-ray diffraction frame count a few photons. For a window of W <= 63
pixels, a "quiet" pixel (value <= `quiet_value(W)`, 25 for DIALS's 7 x 7) adds to one uint32
column sum its value (bits 0-10), one (bits 11-16) and its square (bits 17-31) (`_packed`):
no field of a window sum can overflow, so one rolling column sum and one window sum give the
exact count, sum and sum of squares of the window's quiet pixels (`_quiet_sums`). From them,
vectorised necessary conditions of the dispersion and strong tests (`_candidates_row`; with
the exact sums of the window's loud pixels added, `_candidates_7_loud`) leave about one pixel
in a hundred for the float64 test. The pass over a frame is `kernels.dispersion_packed`.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from kernels.dispersion_int import _sum7, _window_sums
from kernels.jit import njit

X_BITS = 11
M_BITS = 6
Y_SHIFT = X_BITS + M_BITS  # 17: the square takes the top 15 bits
CHORD_MARGIN = np.float32(0.9999 / 1.0001)  # `_chord`'s relative margin (float32 rounds to ~6e-8)


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
def _quiet_sums(p):
    """(count m, sum x, sum of squares y) of packed quiet sums p, as float32 (exact: < 2**23)."""
    m = np.float32(np.int32((p >> np.uint32(X_BITS)) & np.uint32(63)))  # uint32 constants: 32-bit lanes
    x = np.float32(np.int32(p & np.uint32(2047)))
    y = np.float32(np.int32(p >> np.uint32(Y_SHIFT)))
    return m, x, y


@njit(boundscheck=False, inline="always")
def _chord(m, x, y, alpha, beta):
    """Whether a window of m pixels with sum x and sum of squares y (float32) may hold a
    dispersed pixel (necessary).

    The exact test needs m y - x^2 - g x (m - 1) > g x sqrt(nb2 (m - 1)), i.e. m y > x^2 +
    x k(m) with k(m) = g ((m - 1) + sqrt(nb2 (m - 1))); sqrt is concave, so k(m) >= a + b m
    (its chord from m = 2 to the window size). The float32 sums and products are within a
    few ulps, so m y > CHORD_MARGIN x (x + a + b m) with CHORD_MARGIN = 0.9999 / 1.0001
    keeps the test necessary; alpha, beta (`candidate_bounds`) are a and b times
    CHORD_MARGIN, folded in once per frame (two multiplications fewer per pixel). The test
    is strict, as the exact one is: a window of zeros (m y = 0, x = 0), common where the
    background is low or in a masked gap, is no candidate."""
    return m * y > x * (x * CHORD_MARGIN + (alpha + beta * m))


@njit(boundscheck=False, inline="always")
def _above_mean(v, m, x):
    """The strong test's necessary part m v >= x (with margin), float32 m and x."""
    return np.float32(v) * m * np.float32(1.0001) >= x


@njit(boundscheck=False, inline="always")
def _possible(p, alpha, beta):
    """`_chord` of a quiet window (packed sums p: integers below 2**23)."""
    m, x, y = _quiet_sums(p)
    return _chord(m, x, y, alpha, beta)


@njit(boundscheck=False, inline="always")
def _above_quiet_mean(p, v):
    """`_above_mean` for a pixel of value v whose window holds the packed quiet sums p."""
    m, x, _ = _quiet_sums(p)
    return _above_mean(v, m, x)


@njit(boundscheck=False, inline="always")
def _candidates_7(col, rv, cm, alpha, beta, dispersion_only, wsum, out, n):
    """`_candidates_row` for DIALS's 7-pixel-wide window: the sum unrolled, one loop per test,
    so that each vectorises without a branch inside."""
    if dispersion_only:
        for c in range(n):
            p = np.uint32(_sum7(col, c))
            wsum[c] = p
            out[c] = _possible(p, alpha, beta) | (cm[c] != 0)
    else:
        for c in range(n):
            p = np.uint32(_sum7(col, c))
            wsum[c] = p
            out[c] = (_possible(p, alpha, beta) & _above_quiet_mean(p, rv[c])) | (cm[c] != 0)


@njit(boundscheck=False, inline="always")
def _possible_loud(p, m_loud, x_loud, y_loud, alpha, beta):
    """`_chord` of a window holding loud pixels too: the packed quiet sums p plus the loud ones
    (exact integers; up to 2**30 and 2**54, so rounded once in float32, far inside the 1e-4
    margins). Returns (the test, m, x)."""
    m, x, y = _quiet_sums(p)
    m = m + np.float32(m_loud)
    x = x + np.float32(x_loud)
    y = y + np.float32(y_loud)
    return (_chord(m, x, y, alpha, beta), m, x)


@njit(boundscheck=False, inline="always")
def _candidates_7_loud(col, rv, cm, cx, cy, alpha, beta, dispersion_only, wsum, out, n):
    """`_candidates_7` for rows whose windows hold many loud pixels: the screen runs on the
    whole sums (quiet plus loud) instead of passing every window with a loud pixel (49 tests
    one by one per loud pixel, on a high background most of a row)."""
    if dispersion_only:
        for c in range(n):
            p = np.uint32(_sum7(col, c))
            wsum[c] = p
            out[c] = _possible_loud(p, cm[c], cx[c], cy[c], alpha, beta)[0]
    else:
        for c in range(n):
            p = np.uint32(_sum7(col, c))
            wsum[c] = p
            possible, m, x = _possible_loud(p, cm[c], cx[c], cy[c], alpha, beta)
            out[c] = possible & _above_mean(rv[c], m, x)


@njit(boundscheck=False, inline="always")
def _candidates_row(row, col, k, dm, alpha, beta, dispersion_only, wsum, cand):
    """Window sums wsum[c] (packed, of pixel c + k) of the interior pixels k <= i < nx - k of
    one row, and cand[i] = 1 where the pixel may be selected: a window with loud pixels, or
    a quiet window that `_possible` lets pass and (strong test, m v > x) m v >= x. Straight
    loops in 32-bit lanes (uint32 constants keep numba from widening to 64 bits: twice the
    speed), vectorised 16 lanes wide."""
    nx = row.shape[0]
    n = nx - 2 * k
    rv = row[k:]
    cm = dm[k:]
    out = cand[k:]
    if k == 3:
        _candidates_7(col, rv, cm, alpha, beta, dispersion_only, wsum, out, n)
        return
    _window_sums(col, wsum, k)  # packed sums add as uint32, as the three sums do
    for c in range(n):
        p = wsum[c]
        possible = _possible(p, alpha, beta)
        if not dispersion_only:
            possible = possible & _above_quiet_mean(p, rv[c])
        out[c] = possible | (cm[c] != 0)

@functools.lru_cache(maxsize=64)  # per series, asked per frame
def candidate_bounds(window: int, nsig_b: float, gain: float) -> tuple[np.float32, np.float32]:
    """(alpha, beta): the chord a + b m of k(m) = g ((m - 1) + sqrt(nb2 (m - 1))) from m = 2
    to the window size, a lower bound of k over that range, times `CHORD_MARGIN`, as
    `_chord` takes them."""
    nb2 = 2.0 * nsig_b * nsig_b
    q2 = math.sqrt(nb2)
    qw = math.sqrt(nb2 * (window - 1))
    slope = (qw - q2) / (window - 2)
    margin = float(CHORD_MARGIN)
    return (np.float32(margin * gain * (-1.0 + q2 - 2.0 * slope)), np.float32(margin * gain * (1.0 + slope)))
