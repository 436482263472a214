"""The configured corrections of a series header (`config.geometry`), and what is wrong with one.

Real headers are sometimes wrong: a detector distance of 0, a beam centre of (0, 0), the
rotation axis of another goniometer. A beamline scientist who knows better says so in the
configuration, and every stage (workers, indexing, outputs) must then see the corrected
series: the corrections are applied once, where a series enters the processor (the fan-out
for streams and recorded data, `findspots` for its files). A header whose geometry cannot
give resolutions is reported with the correction that would fix it; its frames are still
processed (spots need no geometry).
"""

from __future__ import annotations

import dataclasses
import logging
import math

from streamer.config import GeometryOverride
from streamer.series import SeriesInfo

log = logging.getLogger(__name__)


def corrected(series: SeriesInfo, override: GeometryOverride) -> SeriesInfo:
    """The series with the configured values in place of the header's (logged), else unchanged."""
    changes: dict[str, object] = {}
    if override.beam_centre_px is not None:
        changes["beam_centre_px"] = tuple(float(v) for v in override.beam_centre_px)
    if override.distance_mm is not None:
        changes["distance_mm"] = float(override.distance_mm)
    if override.wavelength_A is not None:
        changes["wavelength_A"] = float(override.wavelength_A)
    if override.rotation_axis is not None:
        changes["rotation_axis"] = tuple(float(v) for v in override.rotation_axis)
    if override.oscillation is not None:
        changes["omega_start_deg"], changes["omega_increment_deg"] = (float(v) for v in override.oscillation)
    if not changes:
        return series
    log.info("series %s: configured geometry replaces the header's: %s", series.series_id,
             ", ".join(f"{name} {getattr(series, name)} -> {value}" for name, value in changes.items()))
    return dataclasses.replace(series, **changes)


MAX_LENGTH_MM = 1e5  # a detector distance or beam centre beyond 100 m is a header's mistake (or units)
MAX_PIXEL_MM = 10.0  # and so is a pixel over 1 cm wide
WAVELENGTH_RANGE_A = (1e-3, 1e3)  # electrons at 300 keV: 0.02 A; soft X-rays: 10s of A


def geometry_problems(series: SeriesInfo) -> list[str]:
    """What in the series' geometry rules out resolutions (d-spacings, estimated d_min, ice
    rings, spots to 4 A), each with the configuration key that corrects it."""
    problems = []
    if not (math.isfinite(series.distance_mm) and 0 < series.distance_mm <= MAX_LENGTH_MM):
        problems.append(f"detector distance {series.distance_mm} mm (set geometry.distance_mm)")
    low, high = WAVELENGTH_RANGE_A
    if not (math.isfinite(series.wavelength_A) and low <= series.wavelength_A <= high):
        problems.append(f"wavelength {series.wavelength_A} A (set geometry.wavelength_A)")
    pixels_ok = all(math.isfinite(v) and 0 < v <= MAX_PIXEL_MM for v in series.pixel_size_mm)
    if not pixels_ok:
        problems.append(f"pixel size {series.pixel_size_mm} mm")
    two_theta = series.two_theta_deg
    if two_theta:  # a detector on a swung arm: its plane is tilted by an angle and about an axis not modelled
        problems.append(f"detector two-theta {two_theta:g} deg (not modelled: collect at two-theta 0)")
    if not all(math.isfinite(v) and (abs(v * p) <= MAX_LENGTH_MM or not pixels_ok)
               for v, p in zip(series.beam_centre_px, series.pixel_size_mm)):
        problems.append(f"beam centre {series.beam_centre_px} px (set geometry.beam_centre_px)")
    return problems


def entering(series: SeriesInfo, override: GeometryOverride) -> SeriesInfo:
    """A series as it enters the processor: corrected, and a warning if its geometry is unusable."""
    series = corrected(series, override)
    problems = geometry_problems(series)
    if problems:
        log.warning("series %s: no resolutions from this header's geometry (%s); spots are still found",
                    series.series_id, "; ".join(problems))
    return series
