"""Unit tests of the indexing building blocks: candidate vectors, basis choice, Niggli reduction,
Bravais lattices and their distortion, Miller-index assignment."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from streamer.crystal import b_matrix
from streamer.indexing.assign import assign_indices, index_and_fit
from streamer.indexing.basis import choose_basis
from streamer.indexing.fft1d import estimate_max_cell, find_candidate_vectors, hemisphere_directions
from streamer.indexing.lattice_symmetry import bravais_solutions, symmetrised_cell
from streamer.indexing.reduction import cell_of_basis, niggli_reduce_basis

# primitive cells (rows, in conventional coordinates) of the centred lattices
PRIMITIVE = {
    "P": np.eye(3),
    "C": np.array([[0.5, 0.5, 0], [-0.5, 0.5, 0], [0, 0, 1]]),
    "I": np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]),
    "F": np.array([[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]),
    "R": np.array([[2 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, 1 / 3], [-1 / 3, -2 / 3, 1 / 3]]),
}
LATTICES = [
    ((78.9, 78.9, 36.9, 90, 90, 90), "P", "tP"),
    ((99.06, 31.01, 54.3, 90, 107.7, 90), "C", "mC"),
    ((45.0, 62.0, 50.0, 90, 104, 90), "P", "mP"),
    ((60, 70, 80, 90, 90, 90), "P", "oP"),
    ((66, 80, 52, 90, 90, 90), "C", "oC"),
    ((50, 60, 70, 90, 90, 90), "I", "oI"),
    ((50, 60, 70, 90, 90, 90), "F", "oF"),
    ((70, 70, 100, 90, 90, 90), "I", "tI"),
    ((50, 50, 80, 90, 90, 120), "P", "hP"),
    ((40, 40, 100, 90, 90, 120), "R", "hR"),
    ((60, 60, 60, 90, 90, 90), "P", "cP"),
    ((80, 80, 80, 90, 90, 90), "I", "cI"),
    ((120, 120, 120, 90, 90, 90), "F", "cF"),
]


def _real_basis(cell) -> np.ndarray:
    return np.linalg.inv(b_matrix(cell))  # rows a, b, c (A)


@pytest.mark.parametrize("cell, centring, lattice", LATTICES, ids=[x[2] for x in LATTICES])
def test_bravais_search_finds_the_lattice_and_its_cell(cell, centring, lattice):
    primitive = PRIMITIVE[centring] @ _real_basis(cell)
    rng = np.random.default_rng(3)
    scramble = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])  # any unimodular change of basis
    reduced, _ = niggli_reduce_basis(scramble @ primitive @ _random_rotation(rng).T)
    solutions = {s.lattice: s for s in bravais_solutions(reduced)}
    assert lattice in solutions
    best = solutions[lattice]
    assert best.distortion_deg < 1e-3
    found = symmetrised_cell(lattice, best.cell)
    # the same lattice: conventional cells agree up to an allowed permutation of equal/unique axes
    np.testing.assert_allclose(sorted(found[:3]), sorted(cell[:3]), rtol=1e-5)
    assert sorted(np.round(found[3:], 3)) == sorted(np.round(cell[3:], 3)) or lattice in ("mC", "mP")
    # gemmi's lattice-symmetry search (proper rotations of the metric) agrees on the holohedry
    ops = gemmi.find_lattice_symmetry(gemmi.UnitCell(*cell_of_basis(reduced)), "P", 0.01)
    rotations = {"aP": 1, "mP": 2, "mC": 2, "oP": 4, "oC": 4, "oI": 4, "oF": 4, "tP": 8, "tI": 8, "hR": 6,
                 "hP": 12, "cP": 24, "cI": 24, "cF": 24}[lattice]
    assert len(ops.sym_ops) == rotations


ORTHORHOMBIC_ORDER = [  # (cell as given, its centring, lattice, the conventional cell DIALS reports)
    ((62.9, 70.1, 51.2, 90, 90, 90), "P", "oP", (51.2, 62.9, 70.1)),
    ((70, 50, 60, 90, 90, 90), "I", "oI", (50, 60, 70)),
    ((60, 70, 50, 90, 90, 90), "F", "oF", (50, 60, 70)),
    ((80, 66, 52, 90, 90, 90), "C", "oC", (66, 80, 52)),  # c stays across the centred face
]


@pytest.mark.parametrize("cell, centring, lattice, expected", ORTHORHOMBIC_ORDER,
                         ids=[x[2] for x in ORTHORHOMBIC_ORDER])
def test_orthorhombic_cells_come_in_the_conventional_axis_order(cell, centring, lattice, expected):
    primitive = PRIMITIVE[centring] @ _real_basis(cell)
    rng = np.random.default_rng(11)
    for scramble in (np.eye(3, dtype=int), np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]]),
                     np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1]])):
        reduced, _ = niggli_reduce_basis(scramble @ primitive @ _random_rotation(rng).T)
        best = {s.lattice: s for s in bravais_solutions(reduced)}[lattice]
        np.testing.assert_allclose(best.cell[:3], expected, rtol=1e-6)
        assert np.linalg.det(best.basis) > 0
        np.testing.assert_allclose(best.transform @ reduced, best.basis, atol=1e-9)


def test_distortion_grows_with_the_departure_from_symmetry():
    deltas = []
    for gamma in (90.0, 90.5, 91.0, 2.0 + 90.0):
        sols = {s.lattice: s for s in bravais_solutions(_real_basis((60, 70, 80, 90, 90, gamma)))}
        deltas.append(sols["oP"].distortion_deg if "oP" in sols else np.inf)
    assert deltas[0] < 1e-6
    np.testing.assert_allclose(deltas[1:], [0.5, 1.0, 2.0], atol=0.02)


def test_niggli_reduction_of_a_skewed_basis():
    basis = np.array([[1, 2, 0], [0, 1, 0], [0, 1, 1]]) @ _real_basis((40, 50, 60, 80, 85, 95))
    reduced, m = niggli_reduce_basis(basis)
    np.testing.assert_allclose(m @ basis, reduced)
    assert abs(abs(np.linalg.det(m)) - 1) < 1e-9 and np.linalg.det(reduced) > 0
    gv = gemmi.GruberVector(gemmi.UnitCell(*cell_of_basis(basis)), None)
    gv.niggli_reduce()
    np.testing.assert_allclose(cell_of_basis(reduced), gv.cell_parameters(), atol=1e-6)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _lattice_points(cell, rng, n=1500, d_min=2.5, noise=2e-4):
    a = _random_rotation(rng) @ b_matrix(cell)
    hkl = rng.integers(-30, 31, size=(20 * n, 3))
    q = hkl @ a.T
    keep = (np.linalg.norm(q, axis=1) < 1 / d_min) & np.any(hkl != 0, axis=1)
    q = q[keep][:n]
    return a, q + rng.normal(0, noise, q.shape)


def test_candidate_vectors_contain_the_cell_edges():
    rng = np.random.default_rng(0)
    cell = (37.0, 61.0, 64.0, 73, 89, 73)
    a, x = _lattice_points(cell, rng)
    cands = find_candidate_vectors(x, 100.0)
    real = np.linalg.inv(a)  # rows a, b, c
    for edge in real:
        cos = np.abs(cands.vectors @ edge) / (np.linalg.norm(cands.vectors, axis=1) * np.linalg.norm(edge))
        lengths = np.linalg.norm(cands.vectors, axis=1)
        assert np.any((cos > np.cos(np.radians(0.2))) & (np.abs(lengths / np.linalg.norm(edge) - 1) < 2e-3))
    basis = choose_basis(cands, x)
    reduced, _ = niggli_reduce_basis(basis)
    a_fit, hkl, ok, _ = index_and_fit(np.linalg.inv(reduced), x)
    assert ok.mean() > 0.99
    truth_reduced, _ = niggli_reduce_basis(real)
    np.testing.assert_allclose(cell_of_basis(np.linalg.inv(a_fit)), cell_of_basis(truth_reduced), rtol=1e-3, atol=0.05)


def test_max_cell_estimate_from_a_rotation_wedge():
    rng = np.random.default_rng(2)
    cell = (78.9, 78.9, 36.9, 90, 90, 90)
    a = _random_rotation(rng) @ b_matrix(cell)
    grid = np.stack(np.meshgrid(*(np.arange(-40, 41),) * 3, indexing="ij"), -1).reshape(-1, 3)
    q = grid @ a.T
    keep = (np.linalg.norm(q, axis=1) < 0.4) & (np.abs(q[:, 2] - 0.05) < 0.02)  # a dense slab
    assert 78.9 <= estimate_max_cell(q[keep]) <= 1.6 * 78.9


def test_hemisphere_directions_are_unit_and_even():
    d = hemisphere_directions(4000)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert np.all(d[:, 2] >= 0)
    assert abs(d[:, 0].mean()) < 0.01 and abs(d[:, 1].mean()) < 0.01 and abs(d[:, 2].mean() - 0.5) < 0.01


def test_assignment_tolerance_and_origin():
    a = b_matrix((50, 60, 70, 90, 90, 90))
    hkl = np.array([[1, 2, 3], [0, 0, 0], [2, -1, 0]])
    x = hkl @ a.T
    x[2] += a @ np.array([0.4, 0, 0])  # 0.4 off in h: beyond the 0.3 tolerance
    got, ok = assign_indices(a, x, 0.3)
    assert ok.tolist() == [True, False, False]
    np.testing.assert_array_equal(got[0], [1, 2, 3])


def test_index_and_fit_removes_a_common_shift():
    rng = np.random.default_rng(1)
    a, x = _lattice_points((50, 60, 70, 90, 90, 90), rng, noise=1e-5)
    shift = a @ np.array([0.2, -0.3, 0.1])
    a_fit, hkl, ok, s = index_and_fit(a, x + shift, fit_shift=True)
    assert ok.mean() > 0.99
    # the shift is found modulo a reciprocal-lattice vector
    frac = np.linalg.solve(a, s - shift)
    np.testing.assert_allclose(frac, np.rint(frac), atol=1e-3)
