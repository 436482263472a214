"""Resolution (d-spacing) of continuous positions on a flat detector, for a few hundred spots.

d = 1 / |s1 - s0| with s1 the diffracted-beam vector (length 1/lambda) towards the lab
position origin + x px_fast fast + y px_slow slow (mm). The operations are those of
`streamer.geometry.s1_vectors` and `np.linalg.norm` in numpy, in the same order, so the
values are the same bit for bit; compiled, it avoids two dozen numpy calls per image.

With a sensor attenuation coefficient mu (1/mm) and thickness t0 (mm), both > 0, the position
is first moved back along its ray to where the ray crossed the detector plane, as
`streamer.sensor.plane_from_pixel_mm` (DIALS's parallax correction): by o (u . fast, u . slow)
with u the unit ray to the pixel, o = 1/mu - (t0/cos_t + 1/mu) exp(-mu t0/cos_t) and cos_t
= u . n (n the plane's normal away from the sample). Then d agrees with numpy's to ~1e-15
relative (exp and dot products are not numpy's, so not bit for bit).
"""

from __future__ import annotations

import math

import numpy as np

from kernels.jit import njit


@njit
def _d_spacing(x_px, y_px, origin, fast, slow, pixel_size, wavelength, s0, mu, t0, out):
    parallax = (mu > 0.0) & (t0 > 0.0)
    n0 = fast[1] * slow[2] - fast[2] * slow[1]
    n1 = fast[2] * slow[0] - fast[0] * slow[2]
    n2 = fast[0] * slow[1] - fast[1] * slow[0]
    if n0 * origin[0] + n1 * origin[1] + n2 * origin[2] < 0.0:  # the normal away from the sample
        n0, n1, n2 = -n0, -n1, -n2
    n_length = math.sqrt(n0 * n0 + n1 * n1 + n2 * n2)
    for i in range(x_px.shape[0]):
        x = x_px[i] * pixel_size[0]
        y = y_px[i] * pixel_size[1]
        if parallax:
            l0 = origin[0] + x * fast[0] + y * slow[0]
            l1 = origin[1] + x * fast[1] + y * slow[1]
            l2 = origin[2] + x * fast[2] + y * slow[2]
            length = math.sqrt(l0 * l0 + l1 * l1 + l2 * l2)
            u0, u1, u2 = l0 / length, l1 / length, l2 / length
            cos_t = (u0 * n0 + u1 * n1 + u2 * n2) / n_length
            o = 1.0 / mu - (t0 / cos_t + 1.0 / mu) * math.exp(-mu * t0 / cos_t)
            x = x - (u0 * fast[0] + u1 * fast[1] + u2 * fast[2]) * o
            y = y - (u0 * slow[0] + u1 * slow[1] + u2 * slow[2]) * o
        l0 = origin[0] + x * fast[0] + y * slow[0]
        l1 = origin[1] + x * fast[1] + y * slow[1]
        l2 = origin[2] + x * fast[2] + y * slow[2]
        length = math.sqrt(l0 * l0 + l1 * l1 + l2 * l2)
        q0 = l0 / length / wavelength - s0[0]
        q1 = l1 / length / wavelength - s0[1]
        q2 = l2 / length / wavelength - s0[2]
        out[i] = 1.0 / math.sqrt(q0 * q0 + q1 * q1 + q2 * q2)


def _checked_geometry(origin_mm, fast_axis, slow_axis, pixel_size_mm, s0) -> list[np.ndarray]:
    """The geometry as contiguous float64 arrays: origin, fast, slow, pixel size, s0."""
    vectors = [np.ascontiguousarray(v, dtype=np.float64) for v in (origin_mm, fast_axis, slow_axis, s0)]
    if any(v.shape != (3,) for v in vectors):
        raise ValueError("origin, axes and s0 must be 3-vectors")
    pixel_size = np.ascontiguousarray(pixel_size_mm, dtype=np.float64)
    if pixel_size.shape != (2,):
        raise ValueError("pixel_size_mm must be (fast, slow)")
    return [*vectors[:3], pixel_size, vectors[3]]


def d_spacing(x_px: np.ndarray, y_px: np.ndarray, origin_mm: np.ndarray, fast_axis: np.ndarray,
              slow_axis: np.ndarray, pixel_size_mm: np.ndarray, wavelength_A: float, s0: np.ndarray,
              sensor_mu_per_mm: float = 0.0, sensor_thickness_mm: float = 0.0) -> np.ndarray:
    """d (A, float64; inf along the beam) at pixel coordinates (x fast, y slow, continuous).

    origin_mm, fast_axis, slow_axis, s0 (1/A): 3-vectors in the lab frame; pixel_size_mm (fast, slow);
    sensor mu and thickness: parallax as `streamer.geometry.Detector` has it (either 0: none).
    """
    x_px = np.ascontiguousarray(x_px, dtype=np.float64)
    y_px = np.ascontiguousarray(y_px, dtype=np.float64)
    if x_px.ndim != 1 or x_px.shape != y_px.shape:
        raise ValueError("x_px and y_px must be 1D of one length")
    origin, fast, slow, pixel_size, s0 = _checked_geometry(origin_mm, fast_axis, slow_axis, pixel_size_mm, s0)
    out = np.empty(x_px.shape, dtype=np.float64)
    _d_spacing(x_px, y_px, origin, fast, slow, pixel_size, float(wavelength_A), s0, float(sensor_mu_per_mm),
               float(sensor_thickness_mm), out)
    return out


@njit
def _pixel_centre_d(origin, fast, slow, pixel_size, wavelength, s0, mu, t0, out):
    ny, nx = out.shape
    x = np.empty(nx)
    y = np.empty(nx)
    row = np.empty(nx)
    for i in range(nx):
        x[i] = i + 0.5
    for j in range(ny):
        y[:] = j + 0.5
        _d_spacing(x, y, origin, fast, slow, pixel_size, wavelength, s0, mu, t0, row)
        for i in range(nx):
            out[j, i] = row[i]


def pixel_centre_d_spacing(shape: tuple[int, int], origin_mm: np.ndarray, fast_axis: np.ndarray,
                           slow_axis: np.ndarray, pixel_size_mm: np.ndarray, wavelength_A: float, s0: np.ndarray,
                           sensor_mu_per_mm: float = 0.0, sensor_thickness_mm: float = 0.0) -> np.ndarray:
    """d (A, float32, shape (ny, nx); inf along the beam) at every pixel centre: the per-series
    resolution map (d_min/d_max masks, radial bins), as `streamer.pixel_maps.resolution_map`
    gives it in numpy, ten times faster (a new 16M geometry's set-up waited 2.8 s for it).
    Arguments as `d_spacing` takes them."""
    ny, nx = (int(n) for n in shape)
    if ny < 1 or nx < 1:
        raise ValueError("shape must be (ny, nx), both positive")
    origin, fast, slow, pixel_size, s0 = _checked_geometry(origin_mm, fast_axis, slow_axis, pixel_size_mm, s0)
    out = np.empty((ny, nx), dtype=np.float32)
    _pixel_centre_d(origin, fast, slow, pixel_size, float(wavelength_A), s0, float(sensor_mu_per_mm),
                    float(sensor_thickness_mm), out)
    return out
