"""The simulator's presets end to end: rendered images (tools.simulator) -> spot finder
(streamer.perimage) -> IndexingStage (3D spot joining + incremental indexing), first 5 degrees:
lattice, cell (0.1 %, 0.1 deg), orientation (0.05 deg) and RMSD (< 0.5 px) against the truth."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from indexing_helpers import misorientation_deg

from streamer.config import Config
from streamer.crystal import cell_from_a_matrix
from streamer.indexing.stage import IndexingStage
from streamer.perimage import ImageAnalyser

LATTICE = {"lysozyme": "tP", "cubic": "cI", "monoclinic": "mC", "orthorhombic": "oP", "hexagonal": "hP",
           "triclinic": "aP"}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(LATTICE))
def test_simulator_preset_indexes_from_five_degrees(preset):
    from tools.simulator.presets import PRESETS
    from tools.simulator.sweep import Simulation, SimulationSpec

    p = PRESETS[preset]
    spec = SimulationSpec(cell=p.cell, space_group=p.space_group, n_images=10, osc_width_deg=0.5, d_min=p.d_min,
                          b_factor=p.b_factor, mosaicity_deg=p.mosaicity_deg, seed=4)
    sim = Simulation(spec)
    info = sim.series_info()
    config = Config()
    analyser = ImageAnalyser(info, config)
    stage = IndexingStage(info, config)
    for i in range(spec.n_images):
        found = analyser.analyse(sim.frame(i).copy(), i).spots
        stage.add(info, SimpleNamespace(image_number=i, spots={"pixel_index": found.pixel_index,
                                                              "pixel_value": found.pixel_value}))
    s = stage.finish()["indexing"]
    assert s["indexed"], s["status"]
    assert s["lattice"] == LATTICE[preset]
    truth = sim.experiment
    a = np.array(s["UB"])
    m = np.rint(np.linalg.inv(truth.crystal.A_matrix) @ a)
    cell = cell_from_a_matrix(a @ np.linalg.inv(m))  # our cell in the truth's setting
    np.testing.assert_allclose(cell[:3], p.cell[:3], rtol=1e-3)
    np.testing.assert_allclose(cell[3:], p.cell[3:], atol=0.1)
    assert misorientation_deg(truth.crystal.A_matrix, a) < 0.05
    assert s["rmsd_px"] < 0.5
