"""Writers of `spots.csv` and `per_image.csv` (CONTRACT.md columns).

spots.csv: image, x_px, y_px, z_image, intensity, n_pixels; one row per spot. `image` is the
0-based image the centroid lies on (floor of z_image); x/y/z are centroids in pixels and
0-based frame units (pixel centre at +0.5, a single-image spot has z = image + 0.5).
per_image.csv: image, phi, n_spots, n_spots_no_ice, n_spots_4A, total_intensity,
estimated_d_min, background, n_overloads, ice_rings, n_integrated, mean_i_over_sigma, scale,
b_factor; the last four belong to later stages and are left empty here. Its spot figures are
each frame's own 2-D spots (what a frame shows as it arrives), so a reflection spread over
several frames counts on each; spots.csv lists it once, joined in 3-D.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

import numpy as np

SPOTS_COLUMNS = ("image", "x_px", "y_px", "z_image", "intensity", "n_pixels")
PER_IMAGE_COLUMNS = ("image", "phi", "n_spots", "n_spots_no_ice", "n_spots_4A", "total_intensity", "estimated_d_min",
                     "background", "n_overloads", "ice_rings", "n_integrated", "mean_i_over_sigma", "scale",
                     "b_factor")


class SpotsWriter:
    """Appends spots to spots.csv as they come (columns of equal length)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: TextIO = open(self.path, "w", newline="")
        self._file.write(",".join(SPOTS_COLUMNS) + "\n")
        self.n_written = 0

    def write(self, x_px: np.ndarray, y_px: np.ndarray, z_image: np.ndarray, intensity: np.ndarray,
              n_pixels: np.ndarray) -> None:
        image = np.floor(np.asarray(z_image, dtype=np.float64)).astype(np.int64)
        lines = [f"{i},{x:.4f},{y:.4f},{z:.4f},{s:.1f},{n}"
                 for i, x, y, z, s, n in zip(image, x_px, y_px, z_image, intensity, n_pixels)]
        if lines:
            self._file.write("\n".join(lines) + "\n")
        self.n_written += len(lines)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SpotsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _cell(value: Any) -> str:
    """A per_image.csv cell: whole numbers in full (a total intensity of 48390505 counts stays
    exact, not 4.83905e+07), other floats to 10 significant digits, NaN and None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 2.0**53:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


class PerImageWriter:
    """Writes per_image.csv rows from ImageResult-like objects (or mappings)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: TextIO = open(self.path, "w", newline="")
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(PER_IMAGE_COLUMNS)

    def write(self, result: Any) -> None:
        get = result.get if isinstance(result, dict) else lambda k, d=None: getattr(result, k, d)
        row = {
            "image": get("image_number", get("image")),
            "phi": get("phi_deg", get("phi")),
        }
        for name in PER_IMAGE_COLUMNS[2:]:
            row[name] = get(name)
        self._csv.writerow([_cell(row[name]) for name in PER_IMAGE_COLUMNS])

    def write_all(self, results: Iterable[Any]) -> None:
        for result in results:
            self.write(result)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PerImageWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_spots_csv(path: str | Path) -> dict[str, np.ndarray]:
    """spots.csv back as columns (for tests and tools)."""
    lines = Path(path).read_text().splitlines()[1:]
    rows = [[float(v) for v in line.split(",")] for line in lines if line.strip()]
    data = np.array(rows, dtype=np.float64).reshape(-1, len(SPOTS_COLUMNS))
    return {name: data[:, k] for k, name in enumerate(SPOTS_COLUMNS)}
