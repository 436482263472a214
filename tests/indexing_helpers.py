"""Simulated rotation sweeps for the indexing tests: spots from streamer.prediction.predict_rotation
with centroid noise, missing spots and outliers, and comparisons against the truth."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from streamer.crystal import Crystal
from streamer.geometry import Beam, Detector, Experiment, Goniometer, Scan
from streamer.prediction import predict_rotation
from streamer.indexing.rlp import Spots

BEAM_CENTRE = (513.0, 513.0)
DISTANCE = 150.0


def sweep_experiment(cell, space_group: str, n_images: int = 10, width: float = 0.5, seed: int = 1,
                     beam_centre=BEAM_CENTRE, distance: float = DISTANCE) -> Experiment:
    """A 1024 x 1024 (0.172 mm) detector at 150 mm, 1 A, axis +x, random orientation (seeded)."""
    U = Rotation.random(random_state=seed).as_matrix()
    detector = Detector.from_beam_centre(beam_centre, distance, (0.172, 0.172), (1024, 1024))
    return Experiment(Beam(1.0), detector, Goniometer(), Scan(n_images, 0.0, width),
                      Crystal.from_cell(cell, U, space_group))


def simulated_spots(experiment: Experiment, d_min: float = 2.0, noise_px: float = 0.3, noise_images: float = 0.1,
                    missing: float = 0.0, outliers: float = 0.0, seed: int = 1) -> Spots:
    """Predicted spots with Gaussian noise, a fraction dropped and a fraction of random outliers."""
    rng = np.random.default_rng(seed)
    p = predict_rotation(experiment, d_min)
    keep = rng.random(len(p)) >= missing
    x = p.x_px[keep] + rng.normal(0, noise_px, keep.sum())
    y = p.y_px[keep] + rng.normal(0, noise_px, keep.sum())
    z = p.z[keep] + rng.normal(0, noise_images, keep.sum())
    n_out = int(outliers * len(x))
    nx, ny = experiment.detector.image_size
    x = np.concatenate([x, rng.uniform(0, nx, n_out)])
    y = np.concatenate([y, rng.uniform(0, ny, n_out)])
    z = np.concatenate([z, rng.uniform(0, experiment.scan.n_images, n_out)])
    return Spots(x, y, z)


def misorientation_deg(a_true: np.ndarray, a_found: np.ndarray) -> float:
    """Angle (degrees) of the rotation taking the truth, in the found basis, onto the found A.
    The basis change is M = round(A_true^-1 A_found); it must be unimodular."""
    m = np.rint(np.linalg.inv(a_true) @ a_found)
    assert abs(abs(np.linalg.det(m)) - 1.0) < 1e-6, f"found lattice is not the true one: M = {m}"
    r = a_found @ np.linalg.inv(a_true @ m)
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(r / np.cbrt(np.linalg.det(r))).as_rotvec())))


def cell_errors(found, truth) -> tuple[float, float]:
    """(largest relative length error, largest angle error in degrees)."""
    f, t = np.asarray(found, float), np.asarray(truth, float)
    return float(np.max(np.abs(f[:3] - t[:3]) / t[:3])), float(np.max(np.abs(f[3:] - t[3:])))
