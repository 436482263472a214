"""What an indexing attempt takes (IndexingOptions) and gives (IndexingResult, with the Bravais
table), and the CONTRACT.md `indexing` summary built from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np

from streamer.crystal import Crystal
from streamer.geometry import Experiment
from streamer.indexing.lattice_symmetry import SPACE_GROUP


@dataclass(frozen=True)
class IndexingOptions:
    """The knobs of one attempt (a plain copy of the config section's indexing fields)."""

    min_spots: int = 20
    max_cell_A: float | None = None
    min_cell_A: float = 10.0
    min_fraction_indexed: float = 0.5
    max_rmsd_px: float = 2.0
    max_distortion_deg: float = 3.0
    max_rmsd_images: float = 1.5
    bravais_rmsd_ratio: float | None = None  # None: 1.5 for X-rays, 3.0 for electrons
    refine_distance: bool | None = None  # None: fixed for electrons (wavelength < 0.1 A)
    refine_axis: bool = False
    refine_tilt: bool | None = None  # None: only once the spots span `tilt_min_degrees`
    tilt_min_degrees: float = 20.0
    known_cell: tuple[float, ...] | None = None
    known_space_group: str | None = None
    max_refine_obs: int = 3000

    @classmethod
    def from_config(cls, config) -> IndexingOptions:
        if config is None:
            return cls()
        kw = {f: getattr(config, f) for f in cls.__dataclass_fields__ if hasattr(config, f)}
        return cls(**kw)


@dataclass(frozen=True)
class BravaisRow:
    lattice: str
    distortion_deg: float
    unit_cell: tuple[float, ...]
    rmsd_px: float | None
    recommended: bool

    def to_dict(self) -> dict:
        return {"lattice": self.lattice, "metric_fit_deg": round(self.distortion_deg, 4),
                "unit_cell": [round(v, 4) for v in self.unit_cell],
                "rmsd_px": None if self.rmsd_px is None else round(self.rmsd_px, 4), "recommended": self.recommended}


@dataclass(frozen=True)
class IndexingResult:
    """Outcome of an attempt. `indexed` is True only when the acceptance criteria hold."""

    indexed: bool
    reason: str  # why not indexed ("" when indexed)
    experiment: Experiment | None = None  # refined; crystal in the conventional setting
    lattice: str | None = None
    n_spots: int = 0
    n_indexed: int = 0
    rmsd_x_px: float | None = None
    rmsd_y_px: float | None = None
    rmsd_deg: float | None = None
    bravais: tuple[BravaisRow, ...] = ()
    hkl: np.ndarray | None = field(default=None, repr=False)  # per spot, conventional setting
    indexed_mask: np.ndarray | None = field(default=None, repr=False)
    seconds: float = 0.0
    max_cell_A: float | None = None
    still_crystal: Crystal | None = None  # stills indexed from reciprocal vectors alone (no geometry)

    @property
    def crystal(self) -> Crystal | None:
        if self.experiment is not None:
            return self.experiment.crystal
        return self.still_crystal

    @property
    def fraction_indexed(self) -> float:
        return self.n_indexed / self.n_spots if self.n_spots else 0.0

    @property
    def rmsd_px(self) -> float | None:
        if self.rmsd_x_px is None:
            return None
        return float(np.hypot(self.rmsd_x_px, self.rmsd_y_px))

    @property
    def unit_cell(self) -> tuple[float, ...] | None:
        return None if self.crystal is None else self.crystal.unit_cell

    @property
    def space_group(self) -> str | None:
        return None if self.lattice is None else gemmi.SpaceGroup(SPACE_GROUP[self.lattice]).hm

    def summary(self) -> dict:
        """The CONTRACT.md `indexing` object, plus figures of merit and the Bravais table.

        space_group is the highest-symmetry chiral group of the lattice with no absences beyond
        its centring (e.g. "P 4 2 2" for tP), as DIALS reports before symmetry analysis.
        """
        crystal = self.crystal

        def r(v, n=4):
            return None if v is None else round(float(v), n)
        return {
            "indexed": bool(self.indexed),
            "lattice": self.lattice,
            "space_group": self.space_group,
            "unit_cell": None if crystal is None else [round(v, 4) for v in crystal.unit_cell],
            "UB": None if crystal is None else crystal.A_matrix.tolist(),
            "rmsd_px": r(self.rmsd_px),
            "rmsd_deg": r(self.rmsd_deg),
            "fraction_indexed": round(self.fraction_indexed, 4),
            "status": "indexed" if self.indexed else f"not indexed yet: {self.reason}",
            "n_spots": self.n_spots,
            "n_indexed": self.n_indexed,
            "rmsd_x_px": r(self.rmsd_x_px),
            "rmsd_y_px": r(self.rmsd_y_px),
            "max_cell_A": r(self.max_cell_A, 2),
            "seconds": r(self.seconds, 3),
            "bravais": [b.to_dict() for b in self.bravais],
        }
