"""Prediction of rotation-data reflections from the shared geometry model (`streamer.geometry`).

Which Miller indices exist (resolution range, systematic absences from the space-group
operators) and where and when each crosses the Ewald sphere during the scan: the positions the
simulator renders, indexing refines against, and integration will box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gemmi
import numpy as np

from streamer.crystal import Crystal
from streamer.geometry import Experiment, resolution_of, rotate_vectors

# -- prediction ------------------------------------------------------------------------------


def miller_indices(crystal: Crystal, d_min: float, d_max: float = float("inf"),
                   remove_absent: bool = True) -> np.ndarray:
    """All (h, k, l) with d_max >= d >= d_min (int32, (N, 3)), systematic absences removed."""
    real = crystal.real_space_vectors()
    hmax = np.floor(np.linalg.norm(real, axis=1) / d_min).astype(int)
    grids = np.meshgrid(*(np.arange(-m, m + 1) for m in hmax), indexing="ij")
    hkl = np.stack([g.ravel() for g in grids], axis=1)
    hkl = hkl[np.any(hkl != 0, axis=1)]
    d = resolution_of(hkl @ crystal.A_matrix.T)
    hkl = hkl[(d >= d_min) & (d <= d_max)]
    if remove_absent:
        hkl = hkl[~systematically_absent(crystal.gemmi_space_group, hkl)]
    return hkl.astype(np.int32)


def systematically_absent(space_group: gemmi.SpaceGroup, hkl: np.ndarray) -> np.ndarray:
    """True for reflections extinguished by the lattice centring or screw/glide operations."""
    hkl = np.asarray(hkl, dtype=np.int64)
    absent = np.zeros(len(hkl), dtype=bool)
    den = gemmi.Op.DEN
    for op in space_group.operations():
        rot = np.array(op.rot, dtype=np.int64)
        tran = np.array(op.tran, dtype=np.int64)
        fixed = np.all(hkl @ rot == hkl * den, axis=1)  # h R = h (R in units of 1/DEN)
        phase = (hkl @ tran) % den
        absent |= fixed & (phase != 0)
    return absent


@dataclass(frozen=True)
class Predictions:
    """Predicted reflections, columnar: one row per (h, k, l, crossing)."""

    hkl: np.ndarray  # (N, 3) int32
    phi_deg: np.ndarray  # rotation angle of the crossing
    z: np.ndarray  # continuous frame coordinate
    x_px: np.ndarray
    y_px: np.ndarray
    s1: np.ndarray  # (N, 3)
    entering: np.ndarray  # bool: crossing the Ewald sphere from outside to inside
    d: np.ndarray
    zeta: np.ndarray  # e . (s1 x s0) / (|s1||s0|): 1/Lorentz factor, signed

    def __len__(self) -> int:
        return len(self.hkl)

    def select(self, mask: np.ndarray) -> Predictions:
        return Predictions(*(getattr(self, f)[mask] for f in self.__dataclass_fields__))


def ewald_crossings(beam, goniometer, a_matrix: np.ndarray, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both rotation angles (degrees, (N, 2); NaN where h never diffracts) at which A h meets
    the Ewald sphere, and q' = F A h (N, 3).

    Solves 2 s0.q(phi) + |q|^2 = 0 in closed form: with s0' = S^-1 s0 and the rotation
    R(e, phi), s0'.R(phi) q' = a cos(phi) + b sin(phi) + (e.q')(e.s0').
    """
    s0p = goniometer.S.T @ beam.s0
    e = np.asarray(goniometer.rotation_axis)
    q0 = (np.asarray(hkl, dtype=np.float64) @ np.asarray(a_matrix).T) @ goniometer.F.T
    eq = q0 @ e
    a = q0 @ s0p - eq * (e @ s0p)
    b = np.cross(e, q0) @ s0p
    c = eq * (e @ s0p) + 0.5 * np.einsum("ij,ij->i", q0, q0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_arg = -c / np.hypot(a, b)
    base = np.arctan2(b, a)
    half = np.arccos(np.where(np.abs(cos_arg) <= 1.0, cos_arg, np.nan))
    return np.degrees(np.stack([base + half, base - half], axis=1)), q0


def predict_rotation(experiment: Experiment, d_min: float, hkl: np.ndarray | None = None,
                     z_range: tuple[float, float] | None = None) -> Predictions:
    """Predict where and when reflections diffract during the scan (static model).

    Returns both Ewald-sphere crossings (`ewald_crossings`) of every reflection within
    `z_range` (default: the scan) that land on the detector, on every turn of a range over
    360 degrees (a full sweep with margins, or several turns, meets a reflection again).
    """
    crystal = experiment.crystal
    if crystal is None:
        raise ValueError("prediction needs a crystal model")
    if hkl is None:
        hkl = miller_indices(crystal, d_min)
    gonio, scan, beam = experiment.goniometer, experiment.scan, experiment.beam
    s0 = beam.s0
    e = np.asarray(gonio.rotation_axis)
    both, q0 = ewald_crossings(beam, gonio, crystal.A_matrix, hkl)
    z0, z1 = (0.0, float(scan.n_images)) if z_range is None else z_range
    phi_lo, phi_hi = sorted((scan.phi_deg(z0), scan.phi_deg(z1)))
    rows = []
    turns = max(1, math.ceil((phi_hi - phi_lo) / 360.0))  # a range over 360 deg meets a reflection again
    for phi in both.T:
        ok = np.isfinite(phi)
        # the first angle in the scanned range, modulo a full turn; then one more per turn
        first = phi_lo + np.mod(np.where(ok, phi, 0.0) - phi_lo, 360.0)
        for turn in range(turns):
            angle = first + 360.0 * turn
            keep = ok & (angle < phi_hi)
            rows.append((np.nonzero(keep)[0], angle[keep]))
    idx = np.concatenate([r_[0] for r_ in rows])
    phi = np.concatenate([r_[1] for r_ in rows])
    q = rotate_vectors(q0[idx], e, phi) @ gonio.S.T
    s1 = s0 + q
    x, y, valid = experiment.detector.lab_to_pixel(s1)
    zeta = (np.cross(s1, s0) @ gonio.lab_axis) / (np.linalg.norm(s1, axis=1) * np.linalg.norm(s0))
    preds = Predictions(
        hkl=np.asarray(hkl, dtype=np.int32)[idx],
        phi_deg=phi,
        z=scan.z_from_phi(phi) if not scan.is_still else np.zeros_like(phi),
        x_px=x,
        y_px=y,
        s1=s1,
        entering=zeta < 0,
        d=resolution_of(q),
        zeta=zeta,
    )
    return preds.select(valid)
