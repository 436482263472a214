"""Spot rendering: a 2-D Gaussian per (reflection, image), integrated exactly over each pixel.

A spot centred at continuous pixel coordinates (x, y) (pixel centre at +0.5) with standard
deviation sigma (px) puts the fraction
    [Phi((i + 1 - x)/sigma) - Phi((i - x)/sigma)] * [Phi((j + 1 - y)/sigma) - Phi((j - y)/sigma)]
of its expected counts on pixel (i, j) (separable erf differences, so counts are conserved up
to the +-`n_sigma` window), and the pixel gets Poisson(that mean) photons. For weak spots
(fewer expected photons than half the window's pixels) the same distribution is drawn
photon by photon: a Poisson total, each photon placed with the pixel probabilities. Masked pixels lose
their photons (they fall into a gap). Values saturate at `overload` (a counting detector's
cut-off value).
"""

from __future__ import annotations

import math

import numpy as np

from kernels.jit import njit

_SQRT_HALF = 0.7071067811865476


@njit
def _fractions(centre, sigma, lo, n, out):
    inv = _SQRT_HALF / sigma
    prev = math.erf((lo - centre) * inv)
    for k in range(n):
        cur = math.erf((lo + k + 1 - centre) * inv)
        out[k] = 0.5 * (cur - prev)
        prev = cur


@njit
def _spots(x, y, sigma, counts, mask, frame, touched, t0, adu, overload, n_sigma, noisy, means):
    ny, nx = mask.shape
    t = t0
    gx = np.empty(256, dtype=np.float64)
    gy = np.empty(256, dtype=np.float64)
    for r in range(x.size):
        s = sigma[r]
        half = min(127, max(1, int(math.ceil(n_sigma * s))))
        i0 = int(math.floor(x[r])) - half
        j0 = int(math.floor(y[r])) - half
        w = 2 * half + 1
        _fractions(x[r], s, i0, w, gx)
        _fractions(y[r], s, j0, w, gy)
        if noisy and counts[r] < 0.5 * w * w:
            # weak spot: throw Poisson(total) photons with the pixel probabilities instead
            # (Poisson splitting: the same joint distribution as a draw per pixel, less work)
            sx = 0.0
            sy = 0.0
            for a in range(w):
                sx += gx[a]
                sy += gy[a]
            n_photons = np.random.poisson(counts[r] * sx * sy)
            for _ in range(n_photons):
                u = np.random.random() * sx
                a = 0
                while a < w - 1 and u >= gx[a]:
                    u -= gx[a]
                    a += 1
                u = np.random.random() * sy
                b = 0
                while b < w - 1 and u >= gy[b]:
                    u -= gy[b]
                    b += 1
                i = i0 + a
                j = j0 + b
                if i < 0 or i >= nx or j < 0 or j >= ny or mask[j, i] != 0:
                    continue
                v = frame[j, i] + adu
                frame[j, i] = v if v < overload else overload
                touched[t] = j * nx + i
                t += 1
            continue
        for b in range(w):
            j = j0 + b
            if j < 0 or j >= ny:
                continue
            cy = counts[r] * gy[b]
            for a in range(w):
                i = i0 + a
                if i < 0 or i >= nx or mask[j, i] != 0:
                    continue
                mu = cy * gx[a]
                if not noisy:
                    means[j, i] += mu
                    continue
                if mu <= 0.0:
                    continue
                k = np.random.poisson(mu)
                if k == 0:
                    continue
                v = frame[j, i] + k * adu
                frame[j, i] = v if v < overload else overload
                touched[t] = j * nx + i
                t += 1
    return t


def window_pixels(sigma: np.ndarray, n_sigma: float) -> int:
    """Upper bound on the pixels the windows of spots with these sigmas cover."""
    half = np.clip(np.ceil(n_sigma * np.asarray(sigma)).astype(np.int64), 1, 127)
    return int(np.sum((2 * half + 1) ** 2))


def render_spots(x, y, sigma, counts, mask, frame, touched, t0, adu, overload, n_sigma=4.0) -> int:
    """Add Poisson spot photons to `frame` (2-D, uint16/uint32); returns the new touched count."""
    dummy = np.zeros((1, 1), dtype=np.float64)
    return int(_spots(np.ascontiguousarray(x, np.float64), np.ascontiguousarray(y, np.float64),
                      np.ascontiguousarray(sigma, np.float64), np.ascontiguousarray(counts, np.float64),
                      mask, frame, touched, t0, adu, overload, float(n_sigma), True, dummy))


def spot_means(x, y, sigma, counts, mask, out: np.ndarray, n_sigma=4.0) -> None:
    """Add the noise-free expected counts of the spots to `out` (float64, (ny, nx))."""
    frame = np.zeros((1, 1), dtype=np.uint32)
    touched = np.zeros(1, dtype=np.int64)
    _spots(np.ascontiguousarray(x, np.float64), np.ascontiguousarray(y, np.float64),
           np.ascontiguousarray(sigma, np.float64), np.ascontiguousarray(counts, np.float64),
           mask, frame, touched, 0, 1, 1, float(n_sigma), False, out)
