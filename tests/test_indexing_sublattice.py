"""A supercell from the basis search gives way to the cell inside it (`streamer.indexing.sublattice`),
and a true cell, or one with pseudo-translational symmetry, is left alone."""

from __future__ import annotations

import numpy as np
import pytest
from test_indexing_lattice import _lattice_points

from streamer.indexing.assign import index_and_fit
from streamer.indexing.sublattice import congruences, sublattice_basis, supercell_reduction

CELL = (51.2, 62.9, 70.1, 90, 90, 90)


def test_each_congruence_once_and_a_basis_of_its_sublattice():
    assert len(congruences(2)) == 7 and len(congruences(3)) == 13
    grid = np.array(np.meshgrid(*[np.arange(-4, 5)] * 3, indexing="ij")).reshape(3, -1).T
    for p in (2, 3):
        for n in congruences(p):
            m = sublattice_basis(n, p)
            assert round(abs(np.linalg.det(m))) == p
            assert np.all((n @ m) % p == 0)  # its columns obey the congruence
            inside = grid[(grid @ n) % p == 0]  # and every point that does is an integer combination of them
            coefficients = np.linalg.solve(m, inside.T)
            np.testing.assert_allclose(coefficients, np.round(coefficients), atol=1e-9)


def _with_junk(q, rng, fraction):
    """The lattice points plus random points (split spots, zingers) up to the same resolution."""
    n = int(fraction * len(q))
    r = np.max(np.linalg.norm(q, axis=1))
    junk = rng.normal(size=(n, 3))
    junk *= (r * rng.random(n) ** (1 / 3) / np.linalg.norm(junk, axis=1))[:, None]
    return np.vstack([q, junk])


def _same_lattice(a, b):
    """Reciprocal bases (columns) of one lattice: related by an integer matrix of det +-1."""
    m = np.linalg.solve(a, b)
    return np.allclose(m, np.round(m), atol=1e-3) and round(abs(np.linalg.det(m))) == 1


@pytest.mark.parametrize("supercell", [
    [[1, 0, 0], [0, 1, 0], [0, 0, 2]],  # c doubled
    [[1, 1, 0], [-1, 1, 0], [0, 0, 1]],  # a + b, a - b: a cell twice the area in the ab plane
    [[1, 0, 1], [0, 1, 0], [0, 0, 3]],  # tripled, skewed
])
def test_a_supercell_with_split_spots_gives_way_to_the_true_cell(supercell):
    rng = np.random.default_rng(3)
    a_true, q = _lattice_points(CELL, rng, n=1500)
    x = _with_junk(q, rng, 0.5)
    # the supercell's real basis rows are integer combinations of the true ones: A_super = A_true N^-1 (N^T)
    n = np.asarray(supercell, dtype=float)
    a_super = a_true @ np.linalg.inv(n).T
    a_fit, hkl, ok, shift = index_and_fit(a_super, x)
    assert ok.mean() > 0.6  # the supercell indexes junk the true cell would not
    smaller = supercell_reduction(a_fit, x, hkl, ok, shift)
    assert smaller is not None
    assert _same_lattice(a_true, smaller)


def test_the_true_cell_is_left_alone_with_junk_or_pseudo_translation():
    rng = np.random.default_rng(5)
    a_true, q = _lattice_points(CELL, rng, n=2000)
    x = _with_junk(q, rng, 0.5)
    a_fit, hkl, ok, shift = index_and_fit(a_true, x)
    assert supercell_reduction(a_fit, x, hkl, ok, shift) is None
    # pseudo-translation (1/2 along c): most odd-l reflections too weak to be found, those found fit
    l_odd = np.round(q @ np.linalg.inv(a_true).T)[:, 2] % 2 == 1
    weak = rng.random(len(q)) < 0.8
    kept = q[~(l_odd & weak)]
    a_fit, hkl, ok, shift = index_and_fit(a_true, kept)
    assert np.mean(hkl[ok][:, 2] % 2 == 0) > 0.75  # the congruence holds for most spots
    assert supercell_reduction(a_fit, kept, hkl, ok, shift) is None
