"""Scan-varying crystal orientation: one small rotation per block of images, tied to its
neighbours by a smoothness restraint, refined with scipy.optimize.least_squares (a block-wise
simplification of DIALS's smoothed scan-varying parametrisation, Waterman et al. 2016).

Detector, beam, axis and cell stay at their (scan-static) refined values; the orientation of
block k is R(theta_k) U with theta_k three small rotations (mrad) about lab x, y, z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.sparse import lil_matrix

from streamer.geometry import Experiment, rotation_matrix
from streamer.indexing.predict import predict_near
from streamer.indexing.refinement import Observations


@dataclass(frozen=True)
class ScanVaryingModel:
    """A per block of `block_images` images (block k covers images [k b, (k+1) b))."""

    block_images: int
    a_matrices: np.ndarray  # (n_blocks, 3, 3), columns a*, b*, c* at phi = 0
    rotations_mrad: np.ndarray  # (n_blocks, 3) about lab x, y, z relative to the static model
    rmsd_px: float
    rmsd_images: float

    def a_matrix_at(self, z_image: float) -> np.ndarray:
        k = int(np.clip(np.floor(z_image / self.block_images), 0, len(self.a_matrices) - 1))
        return self.a_matrices[k]

    def to_dict(self) -> dict:
        return {"block_images": self.block_images, "A_per_block": self.a_matrices.tolist(),
                "rotations_mrad": np.round(self.rotations_mrad, 4).tolist(),
                "rmsd_px": round(self.rmsd_px, 4), "rmsd_images": round(self.rmsd_images, 4)}


def _rot(theta_mrad: np.ndarray) -> np.ndarray:
    t = np.degrees(np.asarray(theta_mrad) * 1e-3)
    return rotation_matrix((0, 0, 1), t[2]) @ rotation_matrix((0, 1, 0), t[1]) @ rotation_matrix((1, 0, 0), t[0])


def refine_scan_varying(experiment: Experiment, obs: Observations, block_images: int,
                        smoothness_mrad: float = 0.5, max_obs: int = 6000, seed: int = 0) -> ScanVaryingModel:
    """Refine one orientation per block. The restraint residual (theta_k - theta_k+1) /
    smoothness_mrad weighs a change of `smoothness_mrad` between blocks like one pixel."""
    if len(obs) > max_obs:
        obs = obs.select(np.sort(np.random.default_rng(seed).choice(len(obs), max_obs, replace=False)))
    block = np.floor(obs.z_image / block_images).astype(int)
    scan = experiment.scan
    last = scan.n_images if scan.n_images > 1 else (int(obs.z_image.max()) + 1 if len(obs) else 1)
    n_blocks = max(1, int(np.ceil(last / block_images)))
    block = np.clip(block, 0, n_blocks - 1)
    a0 = experiment.crystal.A_matrix
    beam, det, gonio = experiment.beam, experiment.detector, experiment.goniometer
    width = abs(scan.width_deg) or 1.0
    phi_obs = scan.phi_deg(obs.z_image)
    members = [np.nonzero(block == k)[0] for k in range(n_blocks)]
    n = len(obs)

    def residuals(p):
        theta = p.reshape(n_blocks, 3)
        out = np.empty(3 * n + 3 * (n_blocks - 1))
        for k, idx in enumerate(members):
            if len(idx) == 0:
                continue
            x, y, phi, ok = predict_near(beam, det, gonio, _rot(theta[k]) @ a0, obs.hkl[idx], phi_obs[idx])
            out[idx] = np.where(ok, x - obs.x_px[idx], 50.0)
            out[n + idx] = np.where(ok, y - obs.y_px[idx], 50.0)
            out[2 * n + idx] = np.where(ok, (phi - phi_obs[idx]) / width, 50.0)
        out[3 * n:] = (np.diff(theta, axis=0) / smoothness_mrad).ravel()
        return out

    sparsity = lil_matrix((3 * n + 3 * (n_blocks - 1), 3 * n_blocks), dtype=int)
    for k, idx in enumerate(members):
        for r in (idx, n + idx, 2 * n + idx):
            for c in range(3):
                sparsity[r, 3 * k + c] = 1
    for k in range(n_blocks - 1):
        for c in range(3):
            sparsity[3 * n + 3 * k + c, 3 * k + c] = 1
            sparsity[3 * n + 3 * k + c, 3 * (k + 1) + c] = 1
    sol = least_squares(residuals, np.zeros(3 * n_blocks), jac_sparsity=sparsity, loss="soft_l1", f_scale=1.0,
                        x_scale="jac", tr_solver="lsmr", max_nfev=100)
    theta = sol.x.reshape(n_blocks, 3)
    r = residuals(sol.x)
    norm = np.sqrt(r[:n] ** 2 + r[n:2 * n] ** 2 + r[2 * n:3 * n] ** 2)
    inl = norm <= np.median(norm) + 5.0 * 1.4826 * max(np.median(np.abs(norm - np.median(norm))), 1e-3)
    rms = lambda v: float(np.sqrt(np.mean(v[inl] ** 2)))  # noqa: E731
    a_blocks = np.array([_rot(t) @ a0 for t in theta])
    return ScanVaryingModel(block_images, a_blocks, theta, float(np.hypot(rms(r[:n]), rms(r[n:2 * n]))),
                            rms(r[2 * n:3 * n]))
