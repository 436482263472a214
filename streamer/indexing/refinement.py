"""Positional refinement of detector, crystal (orientation, cell constrained by the lattice) and
optionally the rotation axis against observed spot centroids (x, y, phi), with
scipy.optimize.least_squares and a robust (soft L1) loss followed by MAD outlier rejection.

Parametrisation (each parameter is a small change from the starting model, as in DIALS's
prediction-parameter refinement, Waterman et al. 2016, Acta Cryst. D72, 558):
- detector: two in-plane shifts (px), distance (mm, along the normal), three rotations (mrad)
  about the normal, fast and slow axes through the point the beam hits;
- crystal: three rotations (mrad) about lab x, y, z applied to U; the cell parameters allowed by
  the crystal system (e.g. a and c for tetragonal), B from them (Busing & Levy 1967);
- goniometer (optional): two rotations (mrad) of the axis about directions perpendicular to it.
Residuals: x and y in pixels and phi in images (degrees / oscillation width).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import least_squares

from streamer.crystal import Crystal, b_matrix
from streamer.geometry import Detector, Experiment, Goniometer, rotation_matrix
from streamer.indexing.predict import predict_near

log = logging.getLogger(__name__)

#: indices into (a, b, c, alpha, beta, gamma) that are free per crystal system
_FREE = {
    "triclinic": (0, 1, 2, 3, 4, 5), "monoclinic": (0, 1, 2, 4), "orthorhombic": (0, 1, 2),
    "tetragonal": (0, 2), "hexagonal": (0, 2), "rhombohedral": (0, 2), "cubic": (0,),
}


def cell_from_free(system: str, values, template) -> tuple[float, ...]:
    """Full cell from the free parameters of a crystal system (template supplies fixed angles)."""
    cell = list(template)
    for i, v in zip(_FREE[system], values):
        cell[i] = float(v)
    if system in ("tetragonal", "hexagonal", "rhombohedral"):
        cell[1] = cell[0]
    elif system == "cubic":
        cell[1] = cell[2] = cell[0]
    return tuple(cell)


def nearest_rotation(m: np.ndarray) -> np.ndarray:
    """The rotation nearest to m (polar decomposition by SVD)."""
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] = -u[:, -1]
        r = u @ vt
    return r


def _perpendiculars(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = v / np.linalg.norm(v)
    helper = np.array([0.0, 0.0, 1.0]) if abs(v[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    p1 = np.cross(v, helper)
    p1 /= np.linalg.norm(p1)
    return p1, np.cross(v, p1)


@dataclass(frozen=True)
class Observations:
    """Indexed spots: Miller indices (in the crystal model's setting) and centroids."""

    hkl: np.ndarray
    x_px: np.ndarray
    y_px: np.ndarray
    z_image: np.ndarray

    def __len__(self) -> int:
        return len(self.hkl)

    def select(self, mask) -> Observations:
        return Observations(self.hkl[mask], self.x_px[mask], self.y_px[mask], self.z_image[mask])


@dataclass(frozen=True)
class RefinementResult:
    experiment: Experiment
    rmsd_x_px: float
    rmsd_y_px: float
    rmsd_z_images: float
    rmsd_deg: float
    n_used: int
    inliers: np.ndarray  # bool over the observations given
    success: bool

    @property
    def rmsd_px(self) -> float:
        """Combined positional RMSD sqrt(rmsd_x^2 + rmsd_y^2) (pixels)."""
        return float(np.hypot(self.rmsd_x_px, self.rmsd_y_px))


class ModelParameters:
    """Maps a parameter vector to (detector, goniometer, A) around a starting experiment."""

    def __init__(self, experiment: Experiment, system: str, refine_detector: bool = True,
                 refine_distance: bool = True, refine_axis: bool = False, refine_tilt: bool = True):
        self.exp = experiment
        self.system = system
        self.cell0 = experiment.crystal.unit_cell
        self.U0 = nearest_rotation(experiment.crystal.U)
        det = experiment.detector
        self.f0, self.s0_, self.o0 = (np.asarray(v) for v in (det.fast_axis, det.slow_axis, det.origin_mm))
        self.n0 = det.normal
        beam_dir = np.asarray(experiment.beam.direction)
        self.pivot = beam_dir * (det.distance_mm / (self.n0 @ beam_dir))
        self.axis0 = np.asarray(experiment.goniometer.rotation_axis)
        self.axis_p1, self.axis_p2 = _perpendiculars(self.axis0)
        names = ["rot_x_mrad", "rot_y_mrad", "rot_z_mrad"]
        names += [f"cell_{'a b c alpha beta gamma'.split()[i]}" for i in _FREE[system]]
        if refine_detector:
            names += ["shift_fast_px", "shift_slow_px"]
            if refine_distance:
                names += ["distance_mm"]
            if refine_tilt:
                # with a refined axis, turning the detector about the beam equals turning everything
                names += (["tau_normal_mrad"] if not refine_axis else []) + ["tau_fast_mrad", "tau_slow_mrad"]
        if refine_axis:
            names += ["axis_1_mrad", "axis_2_mrad"]
        self.names = names

    def initial(self) -> np.ndarray:
        p = np.zeros(len(self.names))
        for k, i in enumerate(_FREE[self.system]):
            p[3 + k] = self.cell0[i]
        return p

    def build(self, p: np.ndarray) -> tuple[Detector, Goniometer, np.ndarray, tuple[float, ...]]:
        v = dict(zip(self.names, p))
        rot = (rotation_matrix((0, 0, 1), np.degrees(v["rot_z_mrad"] * 1e-3))
               @ rotation_matrix((0, 1, 0), np.degrees(v["rot_y_mrad"] * 1e-3))
               @ rotation_matrix((1, 0, 0), np.degrees(v["rot_x_mrad"] * 1e-3)))
        cell = cell_from_free(self.system, p[3:3 + len(_FREE[self.system])], self.cell0)
        a_matrix = rot @ self.U0 @ b_matrix(cell)
        det = self.exp.detector
        if "shift_fast_px" in v:
            r = np.eye(3)
            if "tau_fast_mrad" in v:
                r = (rotation_matrix(self.n0, np.degrees(v.get("tau_normal_mrad", 0.0) * 1e-3))
                     @ rotation_matrix(self.f0, np.degrees(v["tau_fast_mrad"] * 1e-3))
                     @ rotation_matrix(self.s0_, np.degrees(v["tau_slow_mrad"] * 1e-3)))
            f, s = r @ self.f0, r @ self.s0_
            origin = self.pivot + r @ (self.o0 - self.pivot)
            px, py = det.pixel_size_mm
            origin = origin + v["shift_fast_px"] * px * f + v["shift_slow_px"] * py * s
            origin = origin + v.get("distance_mm", 0.0) * self.n0
            det = replace(det, origin_mm=tuple(origin), fast_axis=tuple(f), slow_axis=tuple(s))  # keeps the sensor
        gonio = self.exp.goniometer
        if "axis_1_mrad" in v:
            axis = (rotation_matrix(self.axis_p1, np.degrees(v["axis_1_mrad"] * 1e-3))
                    @ rotation_matrix(self.axis_p2, np.degrees(v["axis_2_mrad"] * 1e-3)) @ self.axis0)
            gonio = Goniometer(tuple(axis), gonio.fixed_rotation, gonio.setting_rotation)
        return det, gonio, a_matrix, cell

    def experiment(self, p: np.ndarray) -> Experiment:
        det, gonio, a_matrix, _ = self.build(p)
        crystal = self.exp.crystal
        return self.exp.replace(detector=det, goniometer=gonio,
                                crystal=Crystal(a_matrix, crystal.space_group, crystal.mosaicity_deg))


def residuals(model: ModelParameters, p: np.ndarray, obs: Observations) -> np.ndarray:
    """Stacked (dx px, dy px, dphi images) for every observation (predicted - observed)."""
    det, gonio, a_matrix, _ = model.build(p)
    scan = model.exp.scan
    phi_obs = scan.phi_deg(obs.z_image)
    x, y, phi, ok = predict_near(model.exp.beam, det, gonio, a_matrix, obs.hkl, phi_obs)
    width = abs(scan.width_deg) or 1.0
    big = 50.0  # a reflection that no longer crosses the sphere: a large, finite residual
    dx = np.where(ok, x - obs.x_px, big)
    dy = np.where(ok, y - obs.y_px, big)
    dz = np.where(ok, (phi - phi_obs) / width, big)
    return np.concatenate([dx, dy, dz])


def refine(experiment: Experiment, obs: Observations, system: str = "triclinic", refine_detector: bool = True,
           refine_distance: bool = True, refine_axis: bool = False, refine_tilt: bool = True,
           max_obs: int = 3000, outlier_sigmas: float = 5.0, seed: int = 0) -> RefinementResult:
    """Refine the model against the observations; returns the refined experiment and RMSDs.

    At most `max_obs` observations (random, fixed seed) enter the fit, for speed; the RMSDs are
    computed over all inliers with the refined model.
    """
    n = len(obs)
    use = np.arange(n)
    if n > max_obs:
        use = np.sort(np.random.default_rng(seed).choice(n, max_obs, replace=False))
    model = ModelParameters(experiment, system, refine_detector, refine_distance, refine_axis, refine_tilt)
    p = model.initial()
    sub = obs.select(use)
    inl = np.ones(len(sub), dtype=bool)
    success = False
    for _ in range(2):
        fit_obs = sub.select(inl)
        if len(fit_obs) * 3 <= len(p):
            break
        sol = least_squares(lambda q: residuals(model, q, fit_obs), p, loss="soft_l1", f_scale=1.0,
                            x_scale="jac", max_nfev=200, ftol=1e-12, xtol=1e-10, gtol=1e-12,
                            # LSMR: no dense SVD of the Jacobian, which multithreaded BLAS makes
                            # slow on a busy machine; tight tolerances keep it exact enough
                            tr_solver="lsmr", tr_options={"atol": 1e-12, "btol": 1e-12})
        p, success = sol.x, bool(sol.success)
        log.debug("least_squares: %s nfev %d cost %.4g %s", sol.message, sol.nfev, sol.cost,
                  dict(zip(model.names, np.round(p, 4))))
        r = residuals(model, p, sub).reshape(3, -1)
        norm = np.sqrt((r**2).sum(axis=0))
        mad = 1.4826 * np.median(np.abs(norm - np.median(norm)))
        inl = norm <= np.median(norm) + outlier_sigmas * max(mad, 1e-3)
    refined = model.experiment(p)
    final = ModelParameters(refined, system, False)
    r = residuals(final, final.initial(), obs).reshape(3, -1)
    norm = np.sqrt((r**2).sum(axis=0))
    mad = 1.4826 * np.median(np.abs(norm - np.median(norm))) if n else 0.0
    inliers = norm <= (np.median(norm) if n else 0.0) + outlier_sigmas * max(mad, 1e-3)
    rms = lambda v: float(np.sqrt(np.mean(v[inliers] ** 2))) if inliers.any() else float("nan")  # noqa: E731
    width = abs(experiment.scan.width_deg) or 1.0
    rz = rms(r[2])
    return RefinementResult(refined, rms(r[0]), rms(r[1]), rz, rz * width, int(inliers.sum()), inliers, success)
