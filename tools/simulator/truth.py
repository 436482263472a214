"""The simulator's truth file (HDF5) and its loader `load_truth(path)`.

Layout (schema "xtalstream-sim-truth 1", attribute `schema` of the root):
- attrs: `schema`, `spec` (JSON of the SimulationSpec), `experiment` (JSON of
  `Experiment.to_dict()` of the main lattice: beam, detector, goniometer, scan, crystal),
  `crystals` (JSON list of each lattice's A matrix rows, 1/A, at phi = 0), `n_images`.
- `ub_per_image` (n_lattices, n_images, 3, 3): S R(phi) F A at each image's middle angle.
- `reflections/`: one row per Ewald crossing that puts photons on some image:
  `hkl` (N, 3) int32, `lattice` int8, `intensity` (true I, photons of a full reflection before
  Lorentz, polarisation and damage), `d` (A), `phi_deg`, `z` (continuous 0-based frame),
  `x_px`, `y_px` (predicted centroid, dxtbx pixel convention), `zeta`, `polarization` (factor
  applied), `lorentz` (1/|zeta| applied), `sigma_phi_deg`, `sigma_px` (spot widths),
  `expected_counts` (photons on the detector summed over the sweep, before masking).
- `partials/`: one row per (reflection, image) with a share: `reflection` (row in
  reflections/), `image` (0-based), `partiality` (fraction of the rotation profile in the
  image), `expected_counts` (photons of the reflection on that image).
- `images/`: `background_photons` (expected background photons per image, all pixels).
- `background` (ny, nx) float32: expected background photons per pixel per image (optional).
- `pixel_mask` (ny, nx) uint32: the gap mask (bit 0).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from streamer.geometry import Experiment

SCHEMA = "xtalstream-sim-truth 1"


@dataclass(frozen=True)
class Truth:
    spec: dict[str, Any]
    experiment: Experiment
    crystals_A: np.ndarray  # (n_lattices, 3, 3)
    ub_per_image: np.ndarray
    reflections: dict[str, np.ndarray]
    partials: dict[str, np.ndarray]
    background_photons: np.ndarray
    background: np.ndarray | None
    pixel_mask: np.ndarray | None

    @property
    def n_images(self) -> int:
        return self.experiment.scan.n_images


def write_truth(path: str | Path, sim: Any, store_background: bool = True) -> Path:
    """Write the truth of a `tools.simulator.sweep.Simulation` to `path` (HDF5)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    r = sim.reflections
    p = r.pred
    spec = asdict(sim.spec)
    with h5py.File(path, "w") as f:
        f.attrs["schema"] = SCHEMA
        f.attrs["spec"] = json.dumps(spec)
        f.attrs["experiment"] = json.dumps(sim.experiment.to_dict())
        f.attrs["crystals"] = json.dumps([[list(row) for row in c.A] for c in sim.crystals])
        f.attrs["n_images"] = sim.spec.n_images
        f.create_dataset("ub_per_image", data=sim.ub_matrices())
        g = f.create_group("reflections")
        columns = {
            "hkl": p.hkl.astype(np.int32), "lattice": r.lattice, "intensity": r.intensity, "d": p.d,
            "phi_deg": p.phi_deg, "z": p.z, "x_px": p.x_px, "y_px": p.y_px, "zeta": p.zeta,
            "polarization": r.polarization, "lorentz": r.lorentz, "sigma_phi_deg": r.sigma_phi_deg,
            "sigma_px": r.sigma_px, "expected_counts": r.expected_counts,
        }
        for name, value in columns.items():
            g.create_dataset(name, data=value, compression="gzip", compression_opts=1, shuffle=True)
        g = f.create_group("partials")
        for name, value in {"reflection": r.part_refl.astype(np.int32), "image": r.part_image.astype(np.int32),
                            "partiality": r.partiality, "expected_counts": r.part_counts}.items():
            g.create_dataset(name, data=value, compression="gzip", compression_opts=1, shuffle=True)
        f.create_dataset("images/background_photons",
                         data=np.full(sim.spec.n_images, sim.background.total, dtype=np.float64))
        if store_background:
            f.create_dataset("background", data=sim.background_map.astype(np.float32), chunks=True,
                             compression="gzip", compression_opts=1, shuffle=True)
        f.create_dataset("pixel_mask", data=sim.mask, chunks=True, compression="gzip", compression_opts=1)
    return path


def load_truth(path: str | Path) -> Truth:
    """Read a truth file written by `write_truth`; ValueError if it is not one."""
    with h5py.File(path, "r") as f:
        if f.attrs.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not a simulator truth file ({SCHEMA})")
        return Truth(
            spec=json.loads(f.attrs["spec"]),
            experiment=Experiment.from_dict(json.loads(f.attrs["experiment"])),
            crystals_A=np.asarray(json.loads(f.attrs["crystals"]), dtype=np.float64),
            ub_per_image=f["ub_per_image"][()],
            reflections={k: v[()] for k, v in f["reflections"].items()},
            partials={k: v[()] for k, v in f["partials"].items()},
            background_photons=f["images/background_photons"][()],
            background=f["background"][()] if "background" in f else None,
            pixel_mask=f["pixel_mask"][()] if "pixel_mask" in f else None,
        )
