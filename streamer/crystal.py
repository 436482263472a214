"""The crystal model: its orientation and lattice as A = U B, and the unit-cell algebra around it.

Conventions as in `streamer.geometry` (whose `Experiment` holds a `Crystal` once indexed):
A = U B with B the transpose of the fractionalisation matrix (Busing & Levy 1967; the
cctbx/DIALS B), so the columns of A are a*, b*, c* in the lab frame at rotation angle 0;
lengths in Angstrom, angles in degrees. Space groups are gemmi's, kept by their H-M name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gemmi
import numpy as np


def frozen_matrix(m) -> tuple[tuple[float, ...], ...]:
    """A 3 x 3 matrix as nested tuples of floats (for the frozen, comparable models)."""
    return tuple(tuple(float(x) for x in row) for row in np.asarray(m, dtype=np.float64).reshape(3, 3))


def b_matrix(cell) -> np.ndarray:
    """B (1/A) for cell (a, b, c, alpha, beta, gamma): the transpose of gemmi's fractionalisation matrix."""
    return np.array(gemmi.UnitCell(*cell).frac.mat, dtype=np.float64).T


def cell_from_a_matrix(a_matrix: np.ndarray) -> tuple[float, ...]:
    """Unit cell (A, degrees) of the lattice whose reciprocal basis is the columns of A."""
    real = np.linalg.inv(np.asarray(a_matrix, dtype=np.float64)).T  # columns a, b, c
    g = real.T @ real
    a, b, c = np.sqrt(np.diag(g))
    alpha = math.degrees(math.acos(np.clip(g[1, 2] / (b * c), -1, 1)))
    beta = math.degrees(math.acos(np.clip(g[0, 2] / (a * c), -1, 1)))
    gamma = math.degrees(math.acos(np.clip(g[0, 1] / (a * b), -1, 1)))
    return (float(a), float(b), float(c), alpha, beta, gamma)


@dataclass(frozen=True)
class Crystal:
    """A crystal's orientation and lattice as the matrix A = U B (columns a*, b*, c* at phi = 0)."""

    A: tuple[tuple[float, ...], ...]
    space_group: str = "P 1"
    mosaicity_deg: float = 0.0

    def __post_init__(self) -> None:
        a = np.asarray(self.A, dtype=np.float64).reshape(3, 3)
        if abs(np.linalg.det(a)) < 1e-12:
            raise ValueError("A matrix is singular")
        object.__setattr__(self, "A", frozen_matrix(a))
        object.__setattr__(self, "space_group", gemmi.SpaceGroup(self.space_group).hm)

    @classmethod
    def from_cell(cls, cell, U=None, space_group: str = "P 1", mosaicity_deg: float = 0.0) -> Crystal:
        U = np.eye(3) if U is None else np.asarray(U, dtype=np.float64)
        return cls(frozen_matrix(U @ b_matrix(cell)), space_group, mosaicity_deg)

    @property
    def A_matrix(self) -> np.ndarray:
        return np.asarray(self.A)

    @property
    def unit_cell(self) -> tuple[float, ...]:
        return cell_from_a_matrix(self.A_matrix)

    @property
    def B(self) -> np.ndarray:
        return b_matrix(self.unit_cell)

    @property
    def U(self) -> np.ndarray:
        return self.A_matrix @ np.linalg.inv(self.B)

    def real_space_vectors(self) -> np.ndarray:
        """Rows a, b, c (A) in the lab frame at phi = 0."""
        return np.linalg.inv(self.A_matrix)

    @property
    def gemmi_space_group(self) -> gemmi.SpaceGroup:
        return gemmi.SpaceGroup(self.space_group)
