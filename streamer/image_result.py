"""What the per-image analysis gives for one image: its spots (a columnar table, with every
strong pixel) and its statistics. Made by `streamer.perimage`, carried to the collector by
`streamer.pipeline_messages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np


@dataclass(frozen=True)
class SpotTable:
    """Columnar 2D spots of one image (one row per spot) plus all its strong pixels.

    x_px, y_px, z_image: centroid (px, frames); intensity: summed raw counts; n_pixels;
    bbox (n, 6) int32 [x0, x1, y0, y1, z0, z1) half-open; variance (n, 3) px^2 (x, y, z);
    d_spacing (A). pixel_index (ascending flat y*nx + x: int32, int64 for frames past 2**31
    pixels; half the bytes on the wire to the collector) and pixel_value (float32) list every
    strong pixel of the image, including those of spots the filters removed.
    """

    x_px: np.ndarray
    y_px: np.ndarray
    z_image: np.ndarray
    intensity: np.ndarray
    n_pixels: np.ndarray
    bbox: np.ndarray
    variance: np.ndarray
    d_spacing: np.ndarray
    pixel_index: np.ndarray = field(repr=False)
    pixel_value: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.x_px.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def empty(cls) -> SpotTable:
        f8 = np.zeros(0, dtype=np.float64)
        return cls(f8, f8, f8, f8, np.zeros(0, np.int32), np.zeros((0, 6), np.int32), np.zeros((0, 3)), f8,
                   np.zeros(0, np.int32), np.zeros(0, np.float32))


@dataclass(frozen=True)
class ImageResult:
    """What one image gives (CONTRACT.md per_image.csv names). d in A, phi in degrees.

    estimated_d_min is -1 when it cannot be estimated (DIALS's convention); background is the
    mean of valid non-spot pixels (sampled rows); radial_profile the mean background per
    1/d^2 bin (edges: `ImageAnalyser.radial_bin_edges`), NaN for empty bins.
    """

    image_number: int
    phi_deg: float
    n_spots: int
    n_spots_no_ice: int
    n_spots_4A: int
    total_intensity: float
    estimated_d_min: float
    background: float
    n_overloads: int
    ice_rings: int
    strong_pixels: int
    radial_profile: np.ndarray
    spots: SpotTable
