"""Sparse Poisson background: draw photons, not pixels.

Independent Poisson counts N_p ~ Poisson(lambda_p) on every pixel p have exactly the same joint
distribution as: draw the total T ~ Poisson(sum lambda), then throw T photons independently
onto pixels with probabilities lambda_p / sum lambda (the Poisson splitting / multinomial
theorem). For a sparse background (mean << 1 photon per pixel, as on fast EIGER frames) this
costs O(photons) instead of O(pixels). Each photon's pixel is drawn in O(1) with Walker's alias
method (Walker 1977; Vose 1991's stable construction), one table per detector row (rows are
independent Poisson totals), packed as one 8-byte word per pixel. The touched pixels are
recorded so the frame buffer can be cleared in O(photons) too.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit


@njit
def _seed(seed):
    np.random.seed(seed)


def seed_numba(seed: int) -> None:
    """Seed numba's own generator (used inside the kernels) for this thread."""
    _seed(np.int64(seed % (2**32)))


@njit
def _build_alias(weights, prob, alias):
    n = weights.size
    total = 0.0
    for i in range(n):
        total += weights[i]
    scaled = np.empty(n, dtype=np.float64)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    ns = 0
    nl = 0
    for i in range(n):
        scaled[i] = weights[i] * n / total
        if scaled[i] < 1.0:
            small[ns] = i
            ns += 1
        else:
            large[nl] = i
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        s = small[ns]
        nl -= 1
        g = large[nl]
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] = (scaled[g] + scaled[s]) - 1.0
        if scaled[g] < 1.0:
            small[ns] = g
            ns += 1
        else:
            large[nl] = g
            nl += 1
    while nl > 0:
        nl -= 1
        prob[large[nl]] = 1.0
        alias[large[nl]] = large[nl]
    while ns > 0:  # only from rounding: these are ~1
        ns -= 1
        prob[small[ns]] = 1.0
        alias[small[ns]] = small[ns]


@njit
def _build_row_tables(weights2d, prob, alias, row_total):
    ny, nx = weights2d.shape
    for j in range(ny):
        total = 0.0
        for i in range(nx):
            total += weights2d[j, i]
        row_total[j] = total
        if total > 0:
            _build_alias(weights2d[j], prob[j], alias[j])
            for i in range(nx):  # rounding leftovers must never pick a zero-weight pixel
                if weights2d[j, i] == 0.0 and alias[j, i] == i:
                    prob[j, i] = 0.0
                    alias[j, i] = np.argmax(weights2d[j])


@njit
def _pack_tables(prob, alias, table):
    """table = alias << 32 | round(prob * 2^32): one 8-byte word per pixel, one cache miss per photon."""
    ny, nx = prob.shape
    for j in range(ny):
        for i in range(nx):
            thr = prob[j, i] * 4294967296.0
            if thr > 4294967295.0:
                thr = 4294967295.0
            table[j, i] = (np.uint64(alias[j, i]) << np.uint64(32)) | np.uint64(thr)


@njit
def _throw_photons(counts, table, frame, touched, t0, adu, overload):
    ny, nx = frame.shape
    t = t0
    for j in range(ny):
        for _ in range(counts[j]):
            u = np.random.random() * nx
            k = np.int64(u)
            if k >= nx:
                k = np.int64(nx - 1)
            word = table[j, k]
            if (u - k) * 4294967296.0 >= np.float64(word & np.uint64(0xFFFFFFFF)):
                k = np.int64(word >> np.uint64(32))
            v = frame[j, k] + adu
            frame[j, k] = v if v < overload else overload
            touched[t] = j * nx + k
            t += 1
    return t


class SparseBackground:
    """Row-wise alias tables of one expected-background map (photons per pixel per image).

    Rows are independent Poisson totals (splitting theorem again), so each row's photons are
    placed with that row's own small alias table: memory access stays local. Pixels with zero
    expectation (gaps) never get photons.
    """

    def __init__(self, expected: np.ndarray):
        weights = np.ascontiguousarray(expected, dtype=np.float64)
        if weights.ndim != 2 or np.any(weights < 0):
            raise ValueError("expected background must be a 2-D array of non-negative values")
        ny, nx = weights.shape
        self.prob = np.ones((ny, nx), dtype=np.float64)
        self.alias = np.tile(np.arange(nx, dtype=np.int64), (ny, 1))
        self.row_total = np.zeros(ny, dtype=np.float64)
        _build_row_tables(weights, self.prob, self.alias, self.row_total)
        self.total = float(self.row_total.sum())
        self.table = np.empty((ny, nx), dtype=np.uint64)
        _pack_tables(self.prob, self.alias, self.table)
        del self.prob, self.alias  # only the packed table is used per image

    def throw(self, rng: np.random.Generator, frame: np.ndarray, touched: np.ndarray, t0: int, adu: int,
              overload: int) -> int:
        """Add one image's background photons to `frame` (adu each, capped at `overload`); returns the new t."""
        if self.total <= 0:
            return t0
        counts = rng.poisson(self.row_total)
        if t0 + int(counts.sum()) > len(touched):
            raise ValueError("touched buffer too small")
        return int(_throw_photons(counts, self.table, frame, touched, t0, adu, overload))
