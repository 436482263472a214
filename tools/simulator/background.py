"""Expected background (photons per pixel per image) of a simulated detector.

Three parts, each a function of the pixel's scattering angle / d-spacing, times the pixel's
solid angle relative to a pixel at the beam centre (cos^3 of the angle of incidence) and the
polarisation factor:
- air scatter: `air` photons at 2theta = 0 falling as exp(-2theta / air_falloff_deg);
- a diffuse solvent (water) ring: `solvent` photons at d = 3.5 A, Gaussian in 1/d with
  standard deviation 0.06 A^-1 (Hura et al. 2000: liquid water's peak near 3.1-3.7 A);
- optional hexagonal-ice rings (`streamer.ice_rings.STRONG_ICE_RINGS_A`), `ice` photons at the
  ring centre, Gaussian in 1/d with sigma 0.003 A^-1, strength falling as exp(-2B s^2), B = 20.
Masked (gap) pixels get 0. Units: photons, A, degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.geometry import Experiment, polarization_factor
from streamer.ice_rings import STRONG_ICE_RINGS_A
from streamer.pixel_maps import pixel_centre_rays

SOLVENT_D_A = 3.5
SOLVENT_WIDTH_INV_A = 0.06
ICE_WIDTH_INV_A = 0.003


@dataclass(frozen=True)
class BackgroundModel:
    air: float = 0.02  # photons/pixel at 2theta = 0
    air_falloff_deg: float = 30.0
    solvent: float = 0.03  # photons/pixel at the ring's peak
    ice: float = 0.0  # photons/pixel at the ice rings' peak (0: no ice)


def expected_background(experiment: Experiment, model: BackgroundModel, mask: np.ndarray | None = None,
                        rows_per_block: int = 256) -> np.ndarray:
    """Expected photons per pixel (float64, (ny, nx)) for one image."""
    det, beam = experiment.detector, experiment.beam
    nx, ny = det.image_size
    out = np.empty((ny, nx), dtype=np.float64)
    normal = det.normal
    for start in range(0, ny, rows_per_block):
        rows = slice(start, min(ny, start + rows_per_block))
        rays = pixel_centre_rays(det, rows).reshape(-1, 3)
        length = np.linalg.norm(rays, axis=1)
        unit = rays / length[:, None]
        cos2t = np.clip(unit @ np.asarray(beam.direction), -1.0, 1.0)
        two_theta = np.degrees(np.arccos(cos2t))
        inv_d = 2.0 * np.sin(np.radians(two_theta) / 2.0) / beam.wavelength_A
        obliquity = (unit @ normal) ** 3  # solid angle relative to normal incidence at the distance
        value = model.air * np.exp(-two_theta / model.air_falloff_deg)
        value += model.solvent * np.exp(-0.5 * ((inv_d - 1.0 / SOLVENT_D_A) / SOLVENT_WIDTH_INV_A) ** 2)
        if model.ice > 0:
            for d_ring in STRONG_ICE_RINGS_A:
                s = 0.5 / d_ring
                value += model.ice * np.exp(-40.0 * s * s) * np.exp(
                    -0.5 * ((inv_d - 1.0 / d_ring) / ICE_WIDTH_INV_A) ** 2)
        value *= obliquity * polarization_factor(beam, rays)
        out[rows] = value.reshape(rows.stop - rows.start, nx)
    if mask is not None:
        out[np.asarray(mask) != 0] = 0.0
    return out
