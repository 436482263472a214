"""Niggli reduction of a real-space basis with gemmi's GruberVector (Krivy & Gruber 1976;
Grosse-Kunstleve, Sauter & Adams 2004)."""

from __future__ import annotations

import gemmi
import numpy as np

from streamer.crystal import cell_from_a_matrix


def cell_of_basis(basis: np.ndarray) -> tuple[float, ...]:
    """Unit cell (A, degrees) of real-space basis rows a, b, c."""
    return cell_from_a_matrix(np.linalg.inv(np.asarray(basis, dtype=np.float64)))


def niggli_reduce_basis(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Niggli-reduced basis (rows, A, right-handed) and the integer matrix M with reduced = M @ basis."""
    basis = np.asarray(basis, dtype=np.float64)
    gv = gemmi.GruberVector(gemmi.UnitCell(*cell_of_basis(basis)), None, True)
    gv.niggli_reduce(epsilon=1e-5 * float(np.mean(np.linalg.norm(basis, axis=1)) ** 2))
    op = gv.change_of_basis
    m = np.rint(np.array(op.rot, dtype=np.float64).T / op.DEN)
    reduced = m @ basis
    if np.linalg.det(reduced) < 0:
        m, reduced = -m, -reduced
    return reduced, m
