"""Spot centroids -> reciprocal-lattice points (1/A) with the current geometry.

Spot tables are columnar: a mapping (dict, numpy structured array or anything indexable by column
name) with `x_px`, `y_px` (pixels, 0-based, pixel centre +0.5) and `z_image` (continuous 0-based
frame coordinate), the columns of CONTRACT.md's spots.csv. Extra columns are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.errors import BadInput
from streamer.geometry import Experiment, reciprocal_vectors


class BadSpots(BadInput):
    """A spot table that cannot be used for indexing (missing columns, non-finite values)."""

    reason = "bad_spots"


@dataclass(frozen=True)
class Spots:
    """Observed spot centroids: x, y in pixels, z in 0-based frame units (float64, same length)."""

    x_px: np.ndarray
    y_px: np.ndarray
    z_image: np.ndarray
    refine: np.ndarray | None = None  # bool: may enter refinement (None: all); e.g. not truncated
    intensity: np.ndarray | None = None  # summed counts (None: unknown); the strongest may index alone

    def __len__(self) -> int:
        return len(self.x_px)

    def strongest(self, fraction: float) -> Spots:
        """The `fraction` of the spots with the highest intensity (all of them when unknown)."""
        if self.intensity is None or fraction >= 1.0 or not len(self):
            return self
        n = max(1, int(round(fraction * len(self))))
        return self.select(np.sort(np.argpartition(-self.intensity, n - 1)[:n]))

    @classmethod
    def from_table(cls, table) -> Spots:
        """Validate a columnar spot table (x_px, y_px, z_image); drops rows with non-finite values."""
        try:
            cols = [np.asarray(table[name], dtype=np.float64).ravel() for name in ("x_px", "y_px", "z_image")]
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise BadSpots(f"spot table needs numeric columns x_px, y_px, z_image: {exc}") from exc
        if len({len(c) for c in cols}) != 1:
            raise BadSpots("spot table columns differ in length")
        keep = np.all(np.isfinite(np.stack(cols)), axis=0)
        optional = [_optional_column(table, name, dtype, len(keep)) for name, dtype in OPTIONAL_COLUMNS]
        return cls(*(c[keep] for c in cols), *(None if c is None else c[keep] for c in optional))

    @classmethod
    def concatenate(cls, parts: list[Spots]) -> Spots:
        if not parts:
            return cls(np.zeros(0), np.zeros(0), np.zeros(0))
        refine = None
        if any(p.refine is not None for p in parts):
            refine = np.concatenate([np.ones(len(p), bool) if p.refine is None else p.refine for p in parts])
        intensity = None  # known only if known for every part
        if all(p.intensity is not None for p in parts):
            intensity = np.concatenate([p.intensity for p in parts])
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("x_px", "y_px", "z_image")), refine,
                   intensity)

    def select(self, mask) -> Spots:
        return Spots(self.x_px[mask], self.y_px[mask], self.z_image[mask],
                     None if self.refine is None else self.refine[mask],
                     None if self.intensity is None else self.intensity[mask])


OPTIONAL_COLUMNS = (("refine", bool), ("intensity", np.float64))


def _optional_column(table, name: str, dtype, n: int) -> np.ndarray | None:
    """Column `name` of a spot table as `dtype`, or None when it is absent or unusable."""
    try:
        column = np.asarray(table[name], dtype=dtype).ravel()
    except (KeyError, ValueError, TypeError, IndexError):
        return None
    if len(column) != n or (column.dtype.kind == "f" and not np.all(np.isfinite(column))):
        return None
    return column


def rlps_from_spots(experiment: Experiment, spots: Spots) -> np.ndarray:
    """Reciprocal-lattice points (N, 3; 1/A) of the spots, rotated back to phi = 0 (= A h)."""
    if len(spots) == 0:
        return np.zeros((0, 3))
    return reciprocal_vectors(experiment, spots.x_px, spots.y_px, spots.z_image)


def rlps_of_still(experiment: Experiment, x_px, y_px) -> np.ndarray:
    """Reciprocal-lattice points (1/A) of spots on a still: s1 - s0, no rotation."""
    from streamer.geometry import s1_vectors

    return s1_vectors(experiment, x_px, y_px) - experiment.beam.s0
