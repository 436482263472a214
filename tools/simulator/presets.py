"""Crystal presets for the simulator: cell (A, degrees), space group, typical mosaicity and B.

One per lattice family the issue asks for; any cell / space group can be given instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CrystalPreset:
    name: str
    cell: tuple[float, float, float, float, float, float]
    space_group: str
    d_min: float = 1.8  # A, highest resolution with intensity
    b_factor: float = 20.0  # A^2, Wilson B
    mosaicity_deg: float = 0.05  # standard deviation of the mosaic spread


PRESETS: dict[str, CrystalPreset] = {
    p.name: p
    for p in (
        CrystalPreset("lysozyme", (79.1, 79.1, 38.0, 90, 90, 90), "P 43 21 2", 1.6, 15.0),
        CrystalPreset("cubic", (78.0, 78.0, 78.0, 90, 90, 90), "I 21 3", 1.8, 20.0),  # insulin
        CrystalPreset("monoclinic", (118.0, 42.0, 70.0, 90, 112.5, 90), "C 1 2 1", 2.0, 25.0),
        CrystalPreset("orthorhombic", (51.2, 62.9, 70.1, 90, 90, 90), "P 21 21 21", 1.8, 20.0),
        CrystalPreset("hexagonal", (64.0, 64.0, 98.0, 90, 90, 120), "P 61 2 2", 2.0, 25.0),
        CrystalPreset("triclinic", (27.2, 31.6, 34.3, 88.6, 108.7, 111.9), "P 1", 1.5, 12.0),
    )
}
