"""A supercell from the basis search, and the true cell inside it.

A cell p times too large has a reciprocal lattice p times too dense: every true spot still
gets integer indices, and random points (split spots with poor rotation centroids, zingers,
ice) fall within the indexing tolerance p times as often, so a supercell can index more spots
than the true cell does. Its giveaway: the well-fitting spots' indices all obey one congruence
n . h = 0 (mod p), and those that do not fit no better than chance. Then the true reciprocal
basis is A M, M an integer basis of that index-p sublattice of Z^3 (the test labelit's
sublattice analysis makes, by the indices of the spots rather than by the metric).

A true cell gives such a congruence to about 1/p of its spots. Pseudo-translational symmetry
(weak reflections of one parity) can give it to more, but those weak spots still fit tightly,
which is why the spots outside the congruence must also fit no better than chance.
"""

from __future__ import annotations

import itertools

import numpy as np

PRIMES = (2, 3)  # cells doubled or tripled along some direction; larger factors are rare
MIN_SHARE = {2: 0.6, 3: 0.45}  # share of indexed spots in the congruence (chance: 1/p)
MIN_RESIDUAL_RATIO = 3.0  # spots outside it fit this many times worse (median) than those in it


def congruences(p: int) -> list[np.ndarray]:
    """The distinct congruences n . h = 0 (mod p): n in (Z/p)^3 without 0, up to a factor."""
    out = []
    for n in itertools.product(range(p), repeat=3):
        if any(n) and next(v for v in n if v) == 1:  # first nonzero entry 1: one n per line
            out.append(np.array(n, dtype=np.int64))
    return out


def sublattice_basis(n: np.ndarray, p: int) -> np.ndarray:
    """An integer matrix M (det p) whose columns span {h in Z^3 : n . h = 0 (mod p)}."""
    i = int(next(k for k in range(3) if n[k] % p))  # a coordinate whose coefficient is invertible mod p
    inv = pow(int(n[i]), -1, p)
    m = np.zeros((3, 3), dtype=np.int64)
    m[i, i] = p
    for j in range(3):
        if j != i:  # e_j - (n_j / n_i) e_i (mod p) lies in the sublattice
            m[j, j] = 1
            m[i, j] = (-int(n[j]) * inv) % p
    return m


def supercell_reduction(a_matrix: np.ndarray, rlps: np.ndarray, hkl: np.ndarray, indexed: np.ndarray,
                        shift: np.ndarray | None = None) -> np.ndarray | None:
    """The reciprocal basis (columns, 1/A) of the true cell when `a_matrix` (x = A h + shift)
    describes a supercell of it, by the test in the module docstring; else None."""
    h = np.asarray(hkl)[indexed].astype(np.int64)
    if len(h) < 20:
        return None
    x = np.asarray(rlps, dtype=np.float64)[indexed] - (0.0 if shift is None else shift)
    residual = np.linalg.norm(x @ np.linalg.inv(a_matrix).T - h, axis=1)
    best = None
    for p in PRIMES:
        for n in congruences(p):
            inside = (h @ n) % p == 0
            share = inside.mean()
            if share < MIN_SHARE[p]:
                continue
            fit_in = float(np.median(residual[inside]))
            fit_out = float(np.median(residual[~inside])) if (~inside).any() else np.inf
            if fit_out >= MIN_RESIDUAL_RATIO * max(fit_in, 1e-6) and (best is None or share > best[0]):
                best = (share, n, p)
    if best is None:
        return None
    _, n, p = best
    return np.asarray(a_matrix, dtype=np.float64) @ sublattice_basis(n, p)
