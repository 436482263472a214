"""Per-pixel maps of a detector in numpy: the ray to every pixel centre, 2theta, d-spacing.

The analyser builds its resolution map with the compiled `kernels.d_spacing.pixel_centre_d_spacing`;
these are the reference it is tested against, and what the simulator and the tests use.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from streamer.geometry import Beam, Detector


def pixel_centre_rays(detector: Detector, rows: slice) -> np.ndarray:
    """Lab vectors (mm, shape (n_rows, nx, 3)) from the sample to where the rays counted at the
    pixel centres of `rows` crossed the detector plane (with the sensor's parallax, if any)."""
    nx = detector.image_size[0]
    y = np.arange(rows.start, rows.stop, dtype=np.float64) + 0.5
    x = np.arange(nx, dtype=np.float64) + 0.5
    o, f, s = (np.asarray(a) for a in (detector.origin_mm, detector.fast_axis, detector.slow_axis))
    px, py = detector.pixel_size_mm
    if detector.has_parallax:
        x_mm, y_mm = np.broadcast_arrays(x[None, :] * px, y[:, None] * py)
        x_mm, y_mm = detector.plane_from_pixel_mm(x_mm, y_mm)
        return o + x_mm[:, :, None] * f + y_mm[:, :, None] * s
    return o + (x[None, :, None] * px) * f + (y[:, None, None] * py) * s


def _cos_two_theta_rows(detector: Detector, beam: Beam, rows_per_block: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(rows, cos 2theta in float64) over every pixel centre, a block of rows at a time."""
    ny = detector.image_size[1]
    b = np.asarray(beam.direction)
    for start in range(0, ny, rows_per_block):
        rows = slice(start, min(ny, start + rows_per_block))
        v = pixel_centre_rays(detector, rows)
        yield rows, np.clip((v @ b) / np.linalg.norm(v, axis=2), -1.0, 1.0)


def two_theta_map(detector: Detector, beam: Beam, rows_per_block: int = 256) -> np.ndarray:
    """Scattering angle 2theta (degrees, float32, shape (ny, nx)) at every pixel centre."""
    nx, ny = detector.image_size
    out = np.empty((ny, nx), dtype=np.float32)
    for rows, cos2t in _cos_two_theta_rows(detector, beam, rows_per_block):
        out[rows] = np.degrees(np.arccos(cos2t))
    return out


def resolution_map(detector: Detector, beam: Beam, rows_per_block: int = 256) -> np.ndarray:
    """d-spacing (A, float32, shape (ny, nx)) at every pixel centre, worked out in float64;
    inf at 2theta = 0."""
    nx, ny = detector.image_size
    out = np.empty((ny, nx), dtype=np.float32)
    for rows, cos2t in _cos_two_theta_rows(detector, beam, rows_per_block):
        sin_theta = np.sqrt((1.0 - cos2t) / 2.0)
        with np.errstate(divide="ignore"):
            out[rows] = beam.wavelength_A / (2.0 * sin_theta)
    return out
