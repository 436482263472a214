"""One image's strong pixels to the columns of its spot table, in one compiled call.

Composes the kernels the spot joiner also uses (`kernels.labelling`, `kernels.centroids`,
`kernels.d_spacing`) with DIALS's size and peak-separation filters (as `spot_filter`), so
the few hundred spots of an image cost one call instead of some fifty small numpy
operations, which cost most when the caches are cold, right after the threshold pass.
Same arithmetic as the separate steps, so the same values bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from kernels.centroids import _spot_moments
from kernels.d_spacing import _d_spacing
from kernels.jit import njit
from kernels.labelling import _label


@njit
def _image_spots(index, values, ny, nx, min_size, max_size, max_separation, use_separation, image_number, origin,
                 fast, slow, pixel_size, wavelength, s0, mu, t0):
    n = index.shape[0]
    labels = np.empty(n, dtype=np.int32)
    n_labels = _label(index, ny, nx, labels, np.empty(n, dtype=np.int64))
    if n_labels < 0:
        n_labels = 0  # not ascending: the caller raises
    n_pixels = np.zeros(n_labels, dtype=np.int64)
    bbox = np.zeros((n_labels, 6), dtype=np.int64)
    sums = np.zeros((n_labels, 5))
    peak = np.zeros((n_labels, 3))
    centroid = np.zeros((n_labels, 3))
    variance = np.zeros((n_labels, 3))
    if n_labels:
        _spot_moments(index, values, labels, n_labels, ny, nx, n_pixels, bbox, sums, np.empty(n_labels), peak,
                      centroid, variance)
    keep = np.empty(n_labels, dtype=np.int64)
    k = 0
    for s in range(n_labels):
        ok = (n_pixels[s] >= min_size) & (n_pixels[s] <= max_size)
        if use_separation:  # |peak - centroid| as np.linalg.norm(axis=1): ((dx^2 + dy^2) + dz^2)
            dx = peak[s, 0] - centroid[s, 0]
            dy = peak[s, 1] - centroid[s, 1]
            dz = peak[s, 2] - centroid[s, 2]
            ok &= math.sqrt(dx * dx + dy * dy + dz * dz) <= max_separation
        if ok:
            keep[k] = s
            k += 1
    x = np.empty(k)
    y = np.empty(k)
    z = np.empty(k)
    intensity = np.empty(k)
    size = np.empty(k, dtype=np.int32)
    box = np.empty((k, 6), dtype=np.int32)
    var = np.empty((k, 3))
    offset = np.float64(image_number)
    for j in range(k):
        s = keep[j]
        x[j] = centroid[s, 0]
        y[j] = centroid[s, 1]
        z[j] = centroid[s, 2] + offset
        intensity[j] = sums[s, 0]
        size[j] = n_pixels[s]
        for c in range(6):
            box[j, c] = bbox[s, c] + (image_number if c >= 4 else 0)
        for c in range(3):
            var[j, c] = variance[s, c]
    d = np.empty(k)
    _d_spacing(x, y, origin, fast, slow, pixel_size, wavelength, s0, mu, t0, d)
    return n_labels, x, y, z, intensity, size, box, var, d


def image_spots(index: np.ndarray, values: np.ndarray, shape: tuple[int, int], min_spot_size: int,
                max_spot_size: int, max_separation: float | None, image_number: int,
                geometry: tuple) -> tuple[np.ndarray, ...]:
    """Spot columns of one image: x_px, y_px, z_image (px, frames; x fast, y slow, pixel centre
    +0.5, z = image_number + 0.5), intensity (summed raw counts), n_pixels (int32), bbox
    (int32 [x0, x1, y0, y1, z0, z1), z in frames), variance (px^2), d_spacing (A).

    `index`: strictly ascending flat indices (int32 or int64) of the image's strong pixels,
    `values` their raw values; spots are 4-connected components with min_spot_size <=
    n_pixels <= max_spot_size and (unless None) |peak - centroid| <= max_separation (px).
    `geometry`: (origin_mm, fast_axis, slow_axis, pixel_size_mm, wavelength_A, s0[, sensor_mu_per_mm,
    sensor_thickness_mm]) as `kernels.d_spacing.d_spacing` takes them (no sensor values: no parallax).
    """
    ny, nx = shape
    index = np.asarray(index)
    index = np.ascontiguousarray(index if index.dtype in (np.int32, np.int64) else index.astype(np.int64))
    values = np.ascontiguousarray(values, dtype=np.float64)
    if index.ndim != 1 or values.shape != index.shape:
        raise ValueError("index and values must be 1D of one length")
    if index.size and (index[0] < 0 or index[-1] >= ny * nx):
        raise ValueError("index must be strictly ascending flat indices inside the shape")
    origin, fast, slow, pixel_size, wavelength, s0, mu, t0 = (*geometry, 0.0, 0.0)[:8]
    vectors = [np.ascontiguousarray(v, dtype=np.float64) for v in (origin, fast, slow, pixel_size, s0)]
    if any(v.shape != (3,) for v in vectors[:3] + vectors[4:]) or vectors[3].shape != (2,):
        raise ValueError("geometry: 3-vectors origin, fast, slow, s0 and (fast, slow) pixel size")
    use_separation = max_separation is not None
    n_labels, *columns = _image_spots(index, values, int(ny), int(nx), int(min_spot_size), int(max_spot_size),
                                      float(max_separation) if use_separation else 0.0, use_separation,
                                      int(image_number), *vectors[:3], vectors[3], float(wavelength), vectors[4],
                                      float(mu), float(t0))
    if index.size and n_labels == 0:
        raise ValueError("index must be strictly ascending flat indices inside the shape")
    return tuple(columns)
