"""Sensor parallax: X-rays are absorbed inside the sensor, not on its front surface.

A ray that meets the sensor obliquely travels on inside it before it is absorbed, so it is
counted further out along its way than where it crossed the front surface (the detector plane).
This module models the shift as DIALS does (dxtbx's ParallaxCorrectedPxMmStrategy):

- the attenuation length along a ray meeting the sensor at cos_t = (s1^ . n), with mu the
  linear attenuation coefficient (1/mm) and t0 the thickness (mm), is
  o = 1/mu - (t0/cos_t + 1/mu) exp(-mu t0/cos_t), the integral of path length times
  absorption probability over the path through the sensor (photons that pass through count 0);
- pixel -> plane (mm): take the plane position p = pixel x pixel size, the unit ray u towards p,
  and subtract o(u) times u's components along fast and slow (dxtbx's to_millimeter: a one-step
  approximation, as u is the ray to the pixel, not to the plane point);
- plane -> pixel: the exact inverse of that map, solved by fixed-point iteration (dxtbx's
  to_pixel instead adds the shift of the ray to the plane point; the two differ by well under
  1e-3 px, dxtbx's own round-trip error).

Positions are in mm in the detector plane, x along fast and y along slow, measured from the
pixel (0, 0) corner; vectors in the laboratory frame of `streamer.geometry`.
"""

from __future__ import annotations

import functools
import logging
import math

import numpy as np

log = logging.getLogger(__name__)

# g/cm^3; the sensor materials pixel detectors use (the header names them by formula)
SENSOR_DENSITY = {"Si": 2.33, "CdTe": 5.85, "GaAs": 5.32, "Ge": 5.323}
_NAMES = {"si": "Si", "silicon": "Si", "cdte": "CdTe", "cadmium telluride": "CdTe", "gaas": "GaAs",
          "gallium arsenide": "GaAs", "ge": "Ge", "germanium": "Ge"}  # formulas, and names headers spell out
HC_EV_A = 12398.419843320026  # photon energy (eV) x wavelength (A)


@functools.lru_cache(maxsize=64)
def attenuation_coefficient_per_mm(material: str, wavelength_A: float) -> float:
    """Linear attenuation coefficient mu (1/mm; total cross-section, xraydb's Elam tables) of a
    sensor material at `wavelength_A`, or 0.0 (no parallax) for an empty or unknown material.

    dials.import takes mu from cctbx's NIST table instead. For Si and GaAs/Ge the two agree
    within 0.35% from 0.3 to 2 A (Si: 0.07% at 1 A, 1.1% at 0.5 A); for CdTe cctbx's is 6%
    higher, as if the density were 6.2 g/cm^3 rather than 5.85. The shift in d is 1e-7 to 5e-5
    relative: the spots are the same, but one lying on an ice ring's edge can fall on the other
    side of it than in DIALS's per-image analysis.
    """
    formula = _NAMES.get(material.strip().lower())
    if formula is None:
        if material.strip():
            log.warning("no attenuation data for sensor material %r: positions get no parallax correction",
                        material)
        return 0.0
    if not (wavelength_A > 0 and math.isfinite(wavelength_A)):
        return 0.0
    import xraydb  # about 1 s to import (scipy.interpolate, sqlalchemy): only when a sensor needs it

    mu_per_cm = xraydb.material_mu(formula, HC_EV_A / wavelength_A, density=SENSOR_DENSITY[formula])
    return float(mu_per_cm) / 10.0


def sensor_normal(origin, fast, slow) -> np.ndarray:
    """Unit normal of the detector plane pointing away from the sample (along the rays)."""
    n = np.cross(fast, slow)
    n = n / np.linalg.norm(n)
    return n if n @ np.asarray(origin) >= 0 else -n


def attenuation_length_mm(mu: float, t0: float, cos_t):
    """Attenuation length o (mm) along rays meeting the sensor at cos_t (> 0)."""
    return 1.0 / mu - (t0 / cos_t + 1.0 / mu) * np.exp(-mu * t0 / cos_t)


def parallax_shift_mm(origin, fast, slow, mu: float, t0: float, x_mm, y_mm) -> tuple[np.ndarray, np.ndarray]:
    """In-plane shift (fast, slow; mm) of the ray towards plane position (x_mm, y_mm):
    o times the ray's unit components along fast and slow."""
    o, f, s = (np.asarray(v, dtype=np.float64) for v in (origin, fast, slow))
    n = sensor_normal(o, f, s)
    x, y = np.asarray(x_mm, dtype=np.float64), np.asarray(y_mm, dtype=np.float64)
    # component by component: a pixel-centre map's rays then cost a fifth of (N, 3) arrays
    ray = [o[k] + x * f[k] + y * s[k] for k in range(3)]
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        inv_length = 1.0 / np.sqrt(ray[0] * ray[0] + ray[1] * ray[1] + ray[2] * ray[2])
        cos_t = (ray[0] * n[0] + ray[1] * n[1] + ray[2] * n[2]) * inv_length
        scale = attenuation_length_mm(mu, t0, cos_t) * inv_length
    return ((ray[0] * f[0] + ray[1] * f[1] + ray[2] * f[2]) * scale,
            (ray[0] * s[0] + ray[1] * s[1] + ray[2] * s[2]) * scale)


def plane_from_pixel_mm(origin, fast, slow, mu: float, t0: float, x_mm, y_mm) -> tuple[np.ndarray, np.ndarray]:
    """Where the ray counted at pixel position (x_mm, y_mm) = pixel x pixel size crossed the
    detector plane (mm): dxtbx's px -> mm."""
    dx, dy = parallax_shift_mm(origin, fast, slow, mu, t0, x_mm, y_mm)
    return x_mm - dx, y_mm - dy


def pixel_from_plane_mm(origin, fast, slow, mu: float, t0: float, x_mm, y_mm, tolerance_mm: float = 1e-12,
                        max_iterations: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """The pixel position (mm) whose `plane_from_pixel_mm` is (x_mm, y_mm): solves p = m + shift(p)
    by iteration. Each step gains about distance/o (three orders of magnitude for a detector 100 mm
    away), so a few steps reach `tolerance_mm`; positions that are not finite stay as they are."""
    x_mm, y_mm = np.asarray(x_mm, dtype=np.float64), np.asarray(y_mm, dtype=np.float64)
    x, y = x_mm, y_mm
    for _ in range(max_iterations):
        dx, dy = parallax_shift_mm(origin, fast, slow, mu, t0, x, y)
        x_new, y_new = x_mm + dx, y_mm + dy
        with np.errstate(invalid="ignore"):
            change = np.abs(np.concatenate([np.ravel(x_new - x), np.ravel(y_new - y)]))
        change = change[np.isfinite(change)].max(initial=0.0)
        x, y = x_new, y_new
        if not change > tolerance_mm:
            break
    return x, y
