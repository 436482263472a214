"""A second lattice among the spots the first model leaves unindexed (split crystals, twins by
non-merohedry): index the leftovers on their own, as DIALS's max_lattices > 1 does."""

from __future__ import annotations

import numpy as np

from streamer.geometry import Experiment
from streamer.indexing.autoindex import IndexingOptions, IndexingResult, index_rotation
from streamer.indexing.rlp import Spots


def misorientation_deg(a_first: np.ndarray, a_second: np.ndarray) -> float:
    """Smallest rotation (degrees) taking lattice 2 onto lattice 1 allowing any basis choice:
    the angle of R = A1 M A2^-1 with M = round(A1^-1 A2) (identical lattices give ~0)."""
    m = np.rint(np.linalg.inv(a_first) @ a_second)
    if abs(np.linalg.det(m)) < 0.5:
        return 180.0
    r = a_second @ np.linalg.inv(a_first @ m)
    u, _, vt = np.linalg.svd(r)
    rot = u @ vt
    return float(np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0))))


def find_second_lattice(experiment: Experiment, spots: Spots, indexed: np.ndarray,
                        options: IndexingOptions | None = None) -> IndexingResult | None:
    """Index the unindexed spots; None when they are too few or give no distinct lattice.

    The fraction indexed of the returned result is relative to the leftover spots.
    """
    opt = options or IndexingOptions()
    rest = spots.select(~np.asarray(indexed, dtype=bool))
    if len(rest) < max(opt.min_spots, 50):
        return None
    second = index_rotation(experiment.replace(crystal=None), rest, opt)
    if not second.indexed or experiment.crystal is None:
        return None if not second.indexed else second
    if misorientation_deg(experiment.crystal.A_matrix, second.experiment.crystal.A_matrix) < 1.0:
        return None  # the same lattice again: leftovers were its outliers
    return second
