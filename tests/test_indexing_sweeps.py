"""Indexing simulated rotation sweeps of every lattice type from the first 5 degrees, with the
geometry slightly wrong (beam centre 1 px, distance 0.5 %), centroid noise, missing spots and
outliers: the Bravais lattice, cell (0.1 %, 0.1 deg), orientation (0.05 deg) and RMSD (< 0.5 px)
must match the truth."""

from __future__ import annotations

import numpy as np
import pytest
from indexing_helpers import cell_errors, misorientation_deg, simulated_spots, sweep_experiment

from streamer.geometry import Detector
from streamer.indexing import index_rotation
from streamer.indexing.autoindex import IndexingOptions

CASES = [
    # cell, space group, expected Bravais lattice
    ((78.9, 78.9, 36.9, 90, 90, 90), "P 43 21 2", "tP"),  # lysozyme
    ((99.06, 31.01, 54.30, 90, 107.7, 90), "C 1 2 1", "mC"),
    ((60.0, 70.0, 80.0, 90, 90, 90), "P 21 21 21", "oP"),
    ((50.0, 50.0, 80.0, 90, 90, 120), "P 61 2 2", "hP"),
    ((40.0, 50.0, 60.0, 70, 80, 95), "P 1", "aP"),
    ((120.0, 120.0, 120.0, 90, 90, 90), "F 2 3", "cF"),
    ((70.0, 70.0, 170.0, 90, 90, 120), "R 3:H", "hR"),
    ((80.0, 80.0, 80.0, 90, 90, 90), "I 21 3", "cI"),
    ((45.0, 62.0, 50.0, 90, 104, 90), "P 1 21 1", "mP"),
    ((66.0, 80.0, 52.0, 90, 90, 90), "C 2 2 21", "oC"),
    ((70.0, 70.0, 100.0, 90, 90, 90), "I 4", "tI"),
]


@pytest.mark.parametrize("cell, space_group, lattice", CASES, ids=[c[2] for c in CASES])
def test_simulated_sweep_matches_truth(cell, space_group, lattice):
    truth = sweep_experiment(cell, space_group, n_images=10, width=0.5)  # 5 degrees
    spots = simulated_spots(truth, missing=0.1, outliers=0.03)
    start = truth.replace(crystal=None,
                          detector=Detector.from_beam_centre((514.0, 512.5), 150.75, (0.172, 0.172), (1024, 1024)))
    result = index_rotation(start, spots, IndexingOptions())
    assert result.indexed, result.reason
    assert result.lattice == lattice
    found = result.experiment.crystal
    assert result.space_group is not None
    # the conventional cell of the truth may be described in another setting: compare metrics
    rel, ang = cell_errors(_same_setting(found, truth.crystal), cell)
    assert rel < 1e-3 and ang < 0.1, (found.unit_cell, cell)
    assert misorientation_deg(truth.crystal.A_matrix, found.A_matrix) < 0.05
    assert result.rmsd_px < 0.5
    assert result.fraction_indexed > 0.85  # 3 % outliers, the rest indexed
    bx, by = result.experiment.detector.beam_centre_px(result.experiment.beam)
    assert abs(bx - 513.0) < 0.1 and abs(by - 513.0) < 0.1
    assert abs(result.experiment.detector.distance_mm - 150.0) < 0.1


def _same_setting(found, truth_crystal):
    """The found cell expressed in the truth's basis (the index change is unimodular)."""
    from streamer.crystal import cell_from_a_matrix

    m = np.rint(np.linalg.inv(truth_crystal.A_matrix) @ found.A_matrix)
    return cell_from_a_matrix(found.A_matrix @ np.linalg.inv(m))


def test_summary_follows_the_contract():
    truth = sweep_experiment((60.0, 70.0, 80.0, 90, 90, 90), "P 21 21 21")
    result = index_rotation(truth.replace(crystal=None), simulated_spots(truth))
    s = result.summary()
    for key in ("indexed", "lattice", "space_group", "unit_cell", "UB", "rmsd_px", "rmsd_deg", "fraction_indexed"):
        assert key in s
    assert s["indexed"] is True and s["space_group"] == "P 2 2 2"
    ub = np.array(s["UB"])
    assert ub.shape == (3, 3)
    # UB is A (row-major) with q = A h at phi = 0: predicting with it reproduces the truth's rlps
    h = np.array([[1, 2, 3], [4, -1, 2]])
    m = np.rint(np.linalg.inv(truth.crystal.A_matrix) @ ub)
    np.testing.assert_allclose(ub @ np.linalg.solve(m, h.T), truth.crystal.A_matrix @ h.T, atol=2e-5)
    assert s["bravais"][-1]["recommended"] and s["bravais"][-1]["lattice"] == "oP"


def test_known_cell_and_space_group_select_the_setting():
    truth = sweep_experiment((60.0, 70.0, 80.0, 90, 90, 90), "P 21 21 21")
    spots = simulated_spots(truth)
    known = IndexingOptions(known_cell=(60.0, 70.0, 80.0, 90.0, 90.0, 90.0), known_space_group="P 21 21 21")
    result = index_rotation(truth.replace(crystal=None), spots, known)
    assert result.indexed and result.lattice == "oP"
    np.testing.assert_allclose(result.unit_cell[:3], (60.0, 70.0, 80.0), rtol=1e-3)  # in the given order
    # a known cell the data do not have is not forced onto them
    wrong = IndexingOptions(known_cell=(61.0, 75.0, 90.0, 90.0, 90.0, 90.0), known_space_group="P 21 21 21")
    result = index_rotation(truth.replace(crystal=None), spots, wrong)
    assert not result.indexed and result.reason == "known cell or space group not found"
