"""The per-pixel decisions of the dispersion thresholds, shared by every pass.

`selected64` is the reference: DIALS's float64 test written without divisions or square
roots (for integer counts every term is an exact integer in float64). `classify32` is the
float32 screen with a proven error margin that the integer fast path runs on every pixel;
where it cannot decide, the float64 test is run on the exact sums.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit


@njit(boundscheck=False, inline="always")
def selected64(v, ok, m, x, y, nb2, ns2, gain, threshold, min_count, dispersion_only):
    """The branch-free dispersion (and, unless dispersion_only, strong) test of one pixel of
    value v (float64) whose window holds m valid pixels of sum x and sum of squares y."""
    gx = gain * x
    a = m * y - x * x - gx * (m - 1.0)
    sel = ok & (m >= min_count) & (x >= 0.0) & (a > 0.0) & (a * a > nb2 * (m - 1.0) * gx * gx)
    if not dispersion_only:
        b = m * v - x
        sel = sel & (v > threshold) & (b > 0.0) & (b * b > ns2 * x * m)
    return sel


@njit(boundscheck=False, inline="always")
def classify32(m, x, y, v, ok, nb2, ns2, gain, min_count, eps, dispersion_only):
    """Float32 screen of one pixel: (sure, maybe); sure => the float64 test selects it, not
    maybe => it does not. Dispersion: a = m y - x^2 - g x (m - 1) > 0 and a^2 > t2 =
    2 sigma_b^2 (m - 1) (g x)^2; strong: b = m v - x > 0 and b^2 > s2 = sigma_s^2 g x m. In
    float32 a is within a few dozen ulps (2**-24) of S = m y + x^2 + g x (m - 1), t2, s2 and
    the squares within a few dozen ulps of themselves (inputs are exact or rounded once), so
    with eps = 2**-16 the margins below prove the float64 answer either way."""
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
