"""A second lattice among the unindexed spots: two crystals in the beam, 60/40 in spots."""

from __future__ import annotations

from indexing_helpers import misorientation_deg, simulated_spots, sweep_experiment

from streamer.indexing import index_rotation
from streamer.indexing.rlp import Spots
from streamer.indexing.second_lattice import find_second_lattice


def test_second_lattice_is_found_in_the_leftovers():
    first = sweep_experiment((60.0, 70.0, 80.0, 90, 90, 90), "P 21 21 21", seed=1)
    second = sweep_experiment((60.0, 70.0, 80.0, 90, 90, 90), "P 21 21 21", seed=2)  # another orientation
    a, b = simulated_spots(first, seed=1), simulated_spots(second, missing=0.35, seed=2)
    both = Spots.concatenate([a, b])
    result = index_rotation(first.replace(crystal=None), both)
    assert result.indexed and result.lattice == "oP"
    assert 0.5 < result.fraction_indexed < 0.75  # the stronger lattice only
    which = misorientation_deg(first.crystal.A_matrix, result.experiment.crystal.A_matrix)
    other = second if which < 0.05 else first
    extra = find_second_lattice(result.experiment, both, result.indexed_mask)
    assert extra is not None and extra.lattice == "oP"
    assert misorientation_deg(other.crystal.A_matrix, extra.experiment.crystal.A_matrix) < 0.05


def test_no_second_lattice_in_a_single_crystal():
    truth = sweep_experiment((60.0, 70.0, 80.0, 90, 90, 90), "P 21 21 21")
    spots = simulated_spots(truth, outliers=0.05)
    result = index_rotation(truth.replace(crystal=None), spots)
    assert result.indexed
    assert find_second_lattice(result.experiment, spots, result.indexed_mask) is None
