"""Miller-index assignment: h = round(A^-1 x) within a tolerance, and the fraction indexed."""

from __future__ import annotations

import numpy as np


def assign_indices(a_matrix: np.ndarray, rlps: np.ndarray, tolerance: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(hkl int32 (N, 3), indexed bool (N,)): a point is indexed when every fractional index is
    within `tolerance` of an integer (DIALS's default 0.3) and the index is not (0, 0, 0)."""
    frac = np.asarray(rlps, dtype=np.float64) @ np.linalg.inv(np.asarray(a_matrix)).T
    hkl = np.rint(frac)
    ok = np.all(np.abs(frac - hkl) < tolerance, axis=1) & np.any(hkl != 0, axis=1)
    return hkl.astype(np.int32), ok


def refine_a_matrix(hkl: np.ndarray, rlps: np.ndarray) -> np.ndarray:
    """Least-squares A (columns a*, b*, c*) with x = A h for indexed points (reciprocal-space fit)."""
    sol, *_ = np.linalg.lstsq(np.asarray(hkl, dtype=np.float64), np.asarray(rlps, dtype=np.float64), rcond=None)
    return sol.T


def index_and_fit(a_matrix: np.ndarray, rlps: np.ndarray, tolerances=(0.3, 0.25, 0.2), min_indexed: int = 6,
                  fit_shift: bool = False):
    """Alternate assignment and reciprocal-space fits of A; returns (A, hkl, indexed, shift).

    With `fit_shift`, the points may be offset by one common vector s (1/A): x = A h + s, as
    a wrong beam centre does to a short wedge. s is estimated from the phases of the indices
    and fitted with A; the positional refinement then moves the beam centre to remove it.
    """
    x = np.asarray(rlps, dtype=np.float64)
    a = np.asarray(a_matrix, dtype=np.float64)
    shift = np.zeros(3)
    if fit_shift:
        from streamer.indexing.fft1d import phase_offset

        shift = a @ phase_offset(np.linalg.inv(a), x)
    hkl, ok = assign_indices(a, x - shift, tolerances[0])
    for tol in tolerances:
        if ok.sum() < min_indexed:
            break
        h = hkl[ok].astype(np.float64)
        design = np.column_stack([h, np.ones(len(h))]) if fit_shift else h
        sol, *_ = np.linalg.lstsq(design, x[ok], rcond=None)
        a_new = sol[:3].T
        if abs(np.linalg.det(a_new)) < 1e-15:
            break
        a = a_new
        if fit_shift:
            shift = sol[3]
        hkl, ok = assign_indices(a, x - shift, tol)
    hkl, ok = assign_indices(a, x - shift, tolerances[0])
    return a, hkl, ok, shift
