"""The diffraction geometry model shared by the simulator, indexing, prediction and integration.

Conventions (those of DIALS/dxtbx and imgCIF, stated once here):

- Laboratory frame: right-handed, z points from the sample towards the source, so the beam
  travels along -z and s0 = (0, 0, -1/lambda). The default rotation axis is +x; y completes
  the set (up, for a horizontal rotation axis).
- Lengths in mm, wavelengths and d-spacings in Angstrom, reciprocal vectors in 1/Angstrom,
  angles in degrees at every public interface (radians only inside).
- Pixels: x fast (column), y slow (row), 0-based continuous coordinates; pixel (i, j) covers
  [i, i+1) x [j, j+1), so its centre is at +0.5. A detector's `origin_mm` is the lab vector to
  the pixel coordinate (0, 0), the outer corner of the first pixel.
- Crystal (`streamer.crystal`): A = U B with B the transpose of the fractionalisation matrix
  (Busing & Levy 1967; the cctbx/DIALS B), so the columns of A are a*, b*, c* in the lab frame
  at rotation angle 0.
- Rotation: a reciprocal-lattice point h sits at q = S R(e, phi) F A h, with S the setting
  rotation, F the fixed rotation and R(e, phi) a right-handed rotation by phi about the
  axis e (dxtbx's goniometer model). It diffracts when |s0 + q| = |s0|; then s1 = s0 + q.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from streamer.crystal import Crystal, frozen_matrix
from streamer.sensor import attenuation_coefficient_per_mm, pixel_from_plane_mm, plane_from_pixel_mm

_IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    if not n > 0:
        raise ValueError(f"zero-length direction {v!r}")
    return v / n


def _tuple3(v) -> tuple[float, float, float]:
    return tuple(float(x) for x in np.asarray(v, dtype=np.float64).reshape(3))


def rotation_matrix(axis, angle_deg: float) -> np.ndarray:
    """Right-handed rotation by `angle_deg` about the unit vector `axis` (Rodrigues)."""
    e = _unit(axis)
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    k = np.array([[0.0, -e[2], e[1]], [e[2], 0.0, -e[0]], [-e[1], e[0], 0.0]])
    return c * np.eye(3) + s * k + (1.0 - c) * np.outer(e, e)


def rotate_vectors(vectors: np.ndarray, axis, angles_deg: np.ndarray) -> np.ndarray:
    """Rotate each row of `vectors` (N,3) by its own angle (N,) about `axis` (vectorised Rodrigues)."""
    e = _unit(axis)
    v = np.asarray(vectors, dtype=np.float64)
    a = np.radians(np.asarray(angles_deg, dtype=np.float64))[:, None]
    return v * np.cos(a) + np.cross(e, v) * np.sin(a) + np.outer(v @ e, e) * (1.0 - np.cos(a))


@dataclass(frozen=True)
class Beam:
    """Monochromatic beam: wavelength (A), direction of travel, polarisation.

    `polarization_fraction` is the fraction of intensity with its electric vector in the plane
    perpendicular to `polarization_normal` (DIALS's definition: 0.5 unpolarised, ~0.99 at a
    synchrotron with a horizontal rotation axis along x and normal (0, 1, 0)).
    """

    wavelength_A: float
    direction: tuple[float, float, float] = (0.0, 0.0, -1.0)
    polarization_fraction: float = 0.999
    polarization_normal: tuple[float, float, float] = (0.0, 1.0, 0.0)

    def __post_init__(self) -> None:
        if not self.wavelength_A > 0:
            raise ValueError(f"wavelength must be positive, not {self.wavelength_A}")
        object.__setattr__(self, "direction", _tuple3(_unit(self.direction)))
        object.__setattr__(self, "polarization_normal", _tuple3(_unit(self.polarization_normal)))

    @property
    def s0(self) -> np.ndarray:
        """Incident wave vector (1/A): beam direction / wavelength."""
        return np.asarray(self.direction) / self.wavelength_A

    @property
    def energy_eV(self) -> float:
        return 12398.419843320026 / self.wavelength_A


@dataclass(frozen=True)
class Detector:
    """A flat single-panel detector: where pixel (0, 0) is, its axes, pixel size, size in pixels.

    With a sensor attenuation coefficient and thickness (both > 0), pixel <-> lab positions
    include the parallax of absorption inside the sensor as DIALS models it (`streamer.sensor`):
    the lab position of a pixel is where its ray crossed the detector plane (the front surface).
    """

    origin_mm: tuple[float, float, float]
    fast_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    slow_axis: tuple[float, float, float] = (0.0, -1.0, 0.0)
    pixel_size_mm: tuple[float, float] = (0.075, 0.075)  # (fast, slow)
    image_size: tuple[int, int] = (1000, 1000)  # (nx fast, ny slow)
    sensor_mu_per_mm: float = 0.0  # linear attenuation coefficient at the beam's wavelength; 0: no parallax
    sensor_thickness_mm: float = 0.0  # 0: no parallax

    def __post_init__(self) -> None:
        f, s = _unit(self.fast_axis), _unit(self.slow_axis)
        if abs(f @ s) > 1e-6:
            raise ValueError("fast and slow axes must be perpendicular")
        object.__setattr__(self, "fast_axis", _tuple3(f))
        object.__setattr__(self, "slow_axis", _tuple3(s))
        object.__setattr__(self, "origin_mm", _tuple3(self.origin_mm))
        object.__setattr__(self, "pixel_size_mm", (float(self.pixel_size_mm[0]), float(self.pixel_size_mm[1])))
        object.__setattr__(self, "image_size", (int(self.image_size[0]), int(self.image_size[1])))
        object.__setattr__(self, "sensor_mu_per_mm", float(self.sensor_mu_per_mm))
        object.__setattr__(self, "sensor_thickness_mm", float(self.sensor_thickness_mm))

    @classmethod
    def from_beam_centre(
        cls,
        beam_centre_px: tuple[float, float],
        distance_mm: float,
        pixel_size_mm: tuple[float, float],
        image_size: tuple[int, int],
        fast_axis=(1.0, 0.0, 0.0),
        slow_axis=(0.0, -1.0, 0.0),
        beam_direction=(0.0, 0.0, -1.0),
        sensor_mu_per_mm: float = 0.0,
        sensor_thickness_mm: float = 0.0,
    ) -> Detector:
        """The detector whose plane lies `distance_mm` from the sample along its normal and that
        the beam hits at `beam_centre_px` (fast, slow), the way headers describe it.

        As dials.import reads a header, the beam centre is taken in the plane (pixels x pixel
        size, no parallax); it is where the beam is counted when the beam is along the normal."""
        f, s = _unit(fast_axis), _unit(slow_axis)
        n = np.cross(f, s)
        b = _unit(beam_direction)
        if n @ b < 0:  # the normal points away from the sample, towards the beam's way
            n = -n
        if abs(n @ b) < 1e-9:
            raise ValueError("the beam does not hit the detector plane")
        hit = b * (distance_mm / (n @ b))
        origin = hit - f * beam_centre_px[0] * pixel_size_mm[0] - s * beam_centre_px[1] * pixel_size_mm[1]
        return cls(_tuple3(origin), _tuple3(f), _tuple3(s), pixel_size_mm, image_size, sensor_mu_per_mm,
                   sensor_thickness_mm)

    @property
    def has_parallax(self) -> bool:
        return self.sensor_mu_per_mm > 0 and self.sensor_thickness_mm > 0

    def plane_from_pixel_mm(self, x_mm, y_mm):
        """Where the rays counted at pixel positions (mm: pixel x pixel size) crossed the plane (mm)."""
        return plane_from_pixel_mm(self.origin_mm, self.fast_axis, self.slow_axis, self.sensor_mu_per_mm,
                                   self.sensor_thickness_mm, x_mm, y_mm)

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the detector plane pointing away from the sample."""
        n = np.cross(self.fast_axis, self.slow_axis)
        return n if n @ np.asarray(self.origin_mm) >= 0 else -n

    @property
    def distance_mm(self) -> float:
        """Perpendicular distance from the sample to the detector plane."""
        return float(np.asarray(self.origin_mm) @ self.normal)

    @property
    def d_matrix(self) -> np.ndarray:
        """Columns fast, slow, origin: lab = D (x_mm, y_mm, 1)^T."""
        return np.column_stack([self.fast_axis, self.slow_axis, self.origin_mm])

    def pixel_to_lab(self, x_px, y_px) -> np.ndarray:
        """Lab vectors (mm, shape (N, 3)) of continuous pixel coordinates: where the rays counted
        there crossed the detector plane."""
        x = np.atleast_1d(np.asarray(x_px, dtype=np.float64)) * self.pixel_size_mm[0]
        y = np.atleast_1d(np.asarray(y_px, dtype=np.float64)) * self.pixel_size_mm[1]
        if self.has_parallax:
            x, y = self.plane_from_pixel_mm(x, y)
        return np.asarray(self.origin_mm) + np.outer(x, self.fast_axis) + np.outer(y, self.slow_axis)

    def lab_to_pixel(self, rays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where rays from the sample along `rays` (N, 3; any length) hit the detector plane.

        Returns (x_px, y_px, valid); `valid` is False for rays that miss the plane (parallel
        or pointing away) or land outside the image.
        """
        v = np.atleast_2d(np.asarray(rays, dtype=np.float64)) @ np.linalg.inv(self.d_matrix).T
        with np.errstate(divide="ignore", invalid="ignore"):
            x_mm, y_mm = v[:, 0] / v[:, 2], v[:, 1] / v[:, 2]
        if self.has_parallax:
            hits = v[:, 2] > 0
            x_mm[hits], y_mm[hits] = pixel_from_plane_mm(self.origin_mm, self.fast_axis, self.slow_axis,
                                                         self.sensor_mu_per_mm, self.sensor_thickness_mm,
                                                         x_mm[hits], y_mm[hits])
        x = x_mm / self.pixel_size_mm[0]
        y = y_mm / self.pixel_size_mm[1]
        nx, ny = self.image_size
        valid = (v[:, 2] > 0) & (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
        return x, y, valid

    def beam_centre_px(self, beam: Beam) -> tuple[float, float]:
        """Pixel coordinates (fast, slow) where the direct beam meets the detector plane."""
        x, y, _ = self.lab_to_pixel(np.asarray(beam.direction)[None, :])
        return float(x[0]), float(y[0])

    def with_beam_centre(self, beam: Beam, beam_centre_px: tuple[float, float]) -> Detector:
        """The same detector moved in its plane so that `beam_centre_px` returns `beam_centre_px`."""
        moved = Detector.from_beam_centre(
            beam_centre_px, self.distance_mm, self.pixel_size_mm, self.image_size,
            self.fast_axis, self.slow_axis, beam.direction, self.sensor_mu_per_mm, self.sensor_thickness_mm,
        )
        if not self.has_parallax:
            return moved
        # an oblique beam is counted off its plane point; parallax is the same wherever the
        # detector is moved in its plane, so one move by the difference puts it in place
        error = np.subtract(moved.beam_centre_px(beam), beam_centre_px) * self.pixel_size_mm
        origin = moved.d_matrix @ np.array([error[0], error[1], 1.0])
        return replace(moved, origin_mm=_tuple3(origin))


@dataclass(frozen=True)
class Goniometer:
    """Single-axis goniometer: q_lab = S R(axis, phi) F q_crystal (dxtbx's model)."""

    rotation_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    fixed_rotation: tuple[tuple[float, ...], ...] = _IDENTITY
    setting_rotation: tuple[tuple[float, ...], ...] = _IDENTITY

    def __post_init__(self) -> None:
        object.__setattr__(self, "rotation_axis", _tuple3(_unit(self.rotation_axis)))
        object.__setattr__(self, "fixed_rotation", frozen_matrix(self.fixed_rotation))
        object.__setattr__(self, "setting_rotation", frozen_matrix(self.setting_rotation))

    @property
    def F(self) -> np.ndarray:
        return np.asarray(self.fixed_rotation)

    @property
    def S(self) -> np.ndarray:
        return np.asarray(self.setting_rotation)

    def rotation_matrix(self, phi_deg: float) -> np.ndarray:
        """The full rotation S R(phi) F taking crystal-at-zero vectors to the lab at phi."""
        return self.S @ rotation_matrix(self.rotation_axis, phi_deg) @ self.F

    @property
    def lab_axis(self) -> np.ndarray:
        """The rotation axis in the laboratory frame (S e)."""
        return self.S @ np.asarray(self.rotation_axis)


@dataclass(frozen=True)
class Scan:
    """Images and their rotation: image i (0-based) spans phi in [start + i w, start + (i+1) w)."""

    n_images: int
    start_deg: float = 0.0
    width_deg: float = 0.0

    def phi_deg(self, z):
        """Rotation angle at continuous frame coordinate z (0-based frame units)."""
        return self.start_deg + np.asarray(z, dtype=np.float64) * self.width_deg

    def z_from_phi(self, phi_deg):
        if self.width_deg == 0:
            raise ValueError("a still has no rotation: z is undefined")
        return (np.asarray(phi_deg, dtype=np.float64) - self.start_deg) / self.width_deg

    @property
    def end_deg(self) -> float:
        return self.start_deg + self.n_images * self.width_deg

    @property
    def is_still(self) -> bool:
        return self.width_deg == 0.0


@dataclass(frozen=True)
class Experiment:
    """Beam, detector, goniometer, scan and (once indexed) crystal of one sweep."""

    beam: Beam
    detector: Detector
    goniometer: Goniometer = field(default_factory=Goniometer)
    scan: Scan = field(default_factory=lambda: Scan(1))
    crystal: Crystal | None = None

    @classmethod
    def from_series(cls, series: Any, polarization_fraction: float = 0.999) -> Experiment:
        """The geometry a `streamer.series.SeriesInfo` header describes."""
        beam = Beam(series.wavelength_A, polarization_fraction=polarization_fraction)
        ny, nx = series.image_shape
        thickness = series.sensor_thickness_mm
        if not (math.isfinite(thickness) and thickness > 0):  # unknown or nonsense: no parallax
            thickness = 0.0
        mu = attenuation_coefficient_per_mm(series.sensor_material, beam.wavelength_A) if thickness > 0 else 0.0
        detector = Detector.from_beam_centre(
            series.beam_centre_px, series.distance_mm, series.pixel_size_mm, (nx, ny),
            series.fast_axis, series.slow_axis, beam.direction, mu, thickness,
        )
        scan = Scan(series.n_images or 1, series.omega_start_deg, series.omega_increment_deg)
        return cls(beam, detector, Goniometer(series.rotation_axis), scan)

    def replace(self, **changes: Any) -> Experiment:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/msgpack-able form (for the model channel, truth files and outputs)."""
        from dataclasses import asdict

        return {
            "beam": asdict(self.beam),
            "detector": asdict(self.detector),
            "goniometer": asdict(self.goniometer),
            "scan": asdict(self.scan),
            "crystal": None if self.crystal is None else asdict(self.crystal),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Experiment:
        def tuples(x):
            return tuple(tuples(v) for v in x) if isinstance(x, list) else x

        def build(kind, data):
            return kind(**{k: tuples(v) for k, v in data.items()})

        return cls(
            build(Beam, d["beam"]),
            build(Detector, d["detector"]),
            build(Goniometer, d["goniometer"]),
            build(Scan, d["scan"]),
            None if d.get("crystal") is None else build(Crystal, d["crystal"]),
        )


# -- spot centroids <-> reciprocal space ---------------------------------------------------------


def s1_vectors(experiment: Experiment, x_px, y_px) -> np.ndarray:
    """Diffracted-beam vectors s1 (1/A, length 1/lambda) towards continuous pixel coordinates."""
    lab = experiment.detector.pixel_to_lab(x_px, y_px)
    return lab / np.linalg.norm(lab, axis=1)[:, None] / experiment.beam.wavelength_A


def reciprocal_vectors(experiment: Experiment, x_px, y_px, z_frames) -> np.ndarray:
    """Reciprocal-lattice vectors (1/A, (N, 3)) of spot centroids, rotated back to phi = 0.

    z_frames are continuous 0-based frame coordinates (frame i spans [i, i+1)); the crystal-frame
    vector is F^-1 R(-phi) S^-1 (s1 - s0), so that it equals A h for an indexed spot.
    """
    q_lab = s1_vectors(experiment, x_px, y_px) - experiment.beam.s0
    gonio = experiment.goniometer
    q = q_lab @ gonio.S  # S^-1 q for each row (S orthogonal)
    phi = experiment.scan.phi_deg(np.atleast_1d(np.asarray(z_frames, dtype=np.float64)))
    q = rotate_vectors(q, gonio.rotation_axis, -np.broadcast_to(phi, (len(q),)))
    return q @ gonio.F  # F^-1 q


def resolution_of(q: np.ndarray) -> np.ndarray:
    """d-spacing (A) of reciprocal vectors (N, 3)."""
    with np.errstate(divide="ignore"):
        return 1.0 / np.linalg.norm(np.atleast_2d(q), axis=1)


# -- corrections -----------------------------------------------------------------------------


def lorentz_zeta(experiment: Experiment, s1: np.ndarray) -> np.ndarray:
    """|e . (s1 x s0)| / (|s1| |s0|): the rotation Lorentz correction (1 / Lorentz factor).

    A reflection's time in diffracting condition scales as 1/zeta; multiplying a summed
    intensity by zeta removes it (as DIALS's LP correction does).
    """
    s0 = experiment.beam.s0
    s1 = np.atleast_2d(s1)
    e = experiment.goniometer.lab_axis
    return np.abs(np.cross(s1, s0) @ e) / (np.linalg.norm(s1, axis=1) * np.linalg.norm(s0))


def polarization_factor(beam: Beam, s1: np.ndarray) -> np.ndarray:
    """Fraction of the scattered intensity kept by polarisation (Kahn et al. 1982).

    P = (1 - 2f)(1 - (n.s1^)^2) + f (1 + (s0^.s1^)^2), with f the polarisation fraction and n the
    polarisation-plane normal; f = 0.5 gives the unpolarised (1 + cos^2 2theta) / 2.
    Divide an observed intensity by P to correct it.
    """
    s1n = np.atleast_2d(s1) / np.linalg.norm(np.atleast_2d(s1), axis=1)[:, None]
    s0n = np.asarray(beam.direction)
    n = np.asarray(beam.polarization_normal)
    f = beam.polarization_fraction
    return (1.0 - 2.0 * f) * (1.0 - (s1n @ n) ** 2) + f * (1.0 + (s1n @ s0n) ** 2)
