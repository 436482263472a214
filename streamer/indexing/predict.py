"""Prediction of reflections from a model, and matching of predictions to observed spots.

Rotation geometry as in streamer.prediction.predict_rotation (closed-form Ewald-sphere crossings);
mosaicity widens the rotation range over which a reflection is recorded by about
mosaicity / |zeta| (zeta: the Lorentz geometry factor, Kabsch 1988), which decides the images a
prediction touches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.geometry import Beam, Detector, Experiment, Goniometer, rotate_vectors
from streamer.prediction import Predictions, ewald_crossings, predict_rotation


def crossings(beam: Beam, gonio: Goniometer, a_matrix: np.ndarray, hkl: np.ndarray):
    """Both rotation angles (degrees, (N, 2)) at which A h meets the Ewald sphere; NaN if never."""
    return ewald_crossings(beam, gonio, a_matrix, hkl)


def predict_near(beam: Beam, detector: Detector, gonio: Goniometer, a_matrix: np.ndarray, hkl: np.ndarray,
                 phi_obs_deg: np.ndarray):
    """Predicted (x_px, y_px, phi_deg, ok) of each h at the crossing nearest its observed angle.

    Used by refinement: each observed spot is compared with the prediction of its own index.
    """
    phis, q0 = crossings(beam, gonio, a_matrix, hkl)
    phi_obs = np.asarray(phi_obs_deg, dtype=np.float64)
    diff = np.mod(phis - phi_obs[:, None] + 180.0, 360.0) - 180.0
    pick = np.argmin(np.where(np.isnan(diff), np.inf, np.abs(diff)), axis=1)
    d = diff[np.arange(len(diff)), pick]
    ok = np.isfinite(d)
    phi = phi_obs + np.where(ok, d, 0.0)
    q = rotate_vectors(q0, gonio.rotation_axis, phi) @ gonio.S.T
    s1 = beam.s0 + q
    x, y, on = detector.lab_to_pixel(s1)
    # keep predictions that run slightly off the edge: the observed spot was on it
    ok &= np.isfinite(x) & np.isfinite(y)
    return x, y, phi, ok


def predict_images(experiment: Experiment, d_min: float, first_image: int, last_image: int) -> Predictions:
    """Reflections recorded on images first..last (0-based, inclusive): crossings within the images,
    widened by the mosaic spread mosaicity / |zeta| (degrees) at each end."""
    crystal = experiment.crystal
    if crystal is None:
        raise ValueError("prediction needs a crystal model")
    width = abs(experiment.scan.width_deg) or 1.0
    pad = crystal.mosaicity_deg / width * 5.0 + 1.0  # frames: wide enough for the zeta test below
    preds = predict_rotation(experiment, d_min, z_range=(first_image - pad, last_image + 1 + pad))
    half = 0.5 * crystal.mosaicity_deg / np.maximum(np.abs(preds.zeta), 1e-3) / width
    keep = (preds.z + half >= first_image) & (preds.z - half < last_image + 1)
    return preds.select(keep)


@dataclass(frozen=True)
class Match:
    """Observed spots paired with predictions: index arrays into both, and the RMSDs."""

    spot_index: np.ndarray
    prediction_index: np.ndarray
    rmsd_x_px: float
    rmsd_y_px: float
    rmsd_z_images: float

    @property
    def rmsd_px(self) -> float:
        return float(np.hypot(self.rmsd_x_px, self.rmsd_y_px))


def match_spots(preds: Predictions, x_px, y_px, z_image, max_px: float = 3.0, max_images: float = 2.0) -> Match:
    """Nearest prediction to each spot in (x, y, z scaled so max_images ~ max_px), within limits."""
    from scipy.spatial import cKDTree

    x_px, y_px, z_image = (np.asarray(v, dtype=np.float64) for v in (x_px, y_px, z_image))
    empty = np.zeros(0, dtype=np.int64)
    if len(preds) == 0 or len(x_px) == 0:
        return Match(empty, empty, float("nan"), float("nan"), float("nan"))
    zs = max_px / max_images
    tree = cKDTree(np.column_stack([preds.x_px, preds.y_px, preds.z * zs]))
    dist, idx = tree.query(np.column_stack([x_px, y_px, z_image * zs]), distance_upper_bound=max_px * 1.5)
    ok = np.isfinite(dist)
    si, pi = np.nonzero(ok)[0], idx[ok]
    dx, dy, dz = x_px[si] - preds.x_px[pi], y_px[si] - preds.y_px[pi], z_image[si] - preds.z[pi]
    inside = (np.hypot(dx, dy) <= max_px) & (np.abs(dz) <= max_images)
    si, pi, dx, dy, dz = si[inside], pi[inside], dx[inside], dy[inside], dz[inside]
    if len(si) == 0:
        return Match(empty, empty, float("nan"), float("nan"), float("nan"))
    rms = lambda v: float(np.sqrt(np.mean(v * v)))  # noqa: E731
    return Match(si, pi, rms(dx), rms(dy), rms(dz))
