"""A simulated rotation sweep: geometry, reflections, partialities, and its frames.

Set up once (`Simulation(spec)`), then `frame(i)` renders image i cheaply:
1. Prediction: `streamer.prediction.predict_rotation` gives each reflection's Ewald crossing
   (phi, x, y, zeta), so the truth is exactly the shared model's. Reflections with |zeta| <
   `min_zeta` (in the blind region near the rotation axis) are left out of the sweep.
2. Rotation profile (Kabsch 2010, the XDS model): the reflection diffracts over a Gaussian in
   phi with standard deviation sigma_phi = sqrt(mosaicity^2 + divergence^2) / |zeta| (degrees,
   both given as standard deviations); the partiality of image i is the Gaussian's integral
   over its phi range [start + i w, start + (i + 1) w).
3. Expected photons of the full reflection: I * P / |zeta| * D_i with I the true intensity
   (`structure`), P the polarisation factor (Kahn et al. 1982), 1/|zeta| the rotation Lorentz
   factor and D_i = exp(-damage (i + 1/2) / 50) exp(-2 damage (i + 1/2) s^2) the radiation
   damage on image i (B grows by `damage` A^2 per image, s = 1/2d). Image i gets that times its
   partiality.
4. Spot on the detector: a 2-D Gaussian at the predicted (x, y) with sigma_px^2 =
   spot_sigma_px^2 + (divergence_rad * |sample-to-spot| / pixel)^2 (`render`).
5. Background (`background`) drawn sparsely as photons (`noise`), zingers (a Poisson number per
   image of single hot pixels holding 500-20000 photons), counts times `gain` ADU per photon,
   overloads (counts above the preset's `saturation_value`) written as saturation_value + 1,
   module gaps as the dtype's largest value (the DECTRIS mask value).
An optional second lattice is the same crystal turned by a random rotation, its intensities
scaled by `second_lattice`. Everything is seeded: image i is the same whatever order frames
are drawn in.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation
from scipy.special import ndtr

from streamer import codecs
from streamer.crystal import Crystal
from streamer.detector_presets import DetectorPreset, load_preset
from streamer.geometry import Beam, Detector, Experiment, Goniometer, Scan, polarization_factor
from streamer.prediction import Predictions, miller_indices, predict_rotation
from streamer.sensor import attenuation_coefficient_per_mm
from streamer.series import EncodedFrame, SeriesInfo
from tools.simulator.background import BackgroundModel, expected_background
from tools.simulator.noise import SparseBackground, seed_numba
from tools.simulator.render import render_spots, spot_means, window_pixels
from tools.simulator.structure import IntensityModel, from_mtz, random_structure

log = logging.getLogger(__name__)

N_SIGMA_PHI = 5.0  # images beyond +-5 sigma_phi get no share of a reflection
N_SIGMA_PX = 4.0  # spot window half width in sigmas
MIN_PARTIALITY = 1e-4


@dataclass(frozen=True)
class SimulationSpec:
    """Everything that defines a simulated sweep. Units: A, degrees, mm, photons, seconds."""

    cell: tuple[float, ...] = (79.1, 79.1, 38.0, 90.0, 90.0, 90.0)
    space_group: str = "P 43 21 2"
    U: tuple[tuple[float, ...], ...] | None = None  # None: a random orientation from `seed`
    seed: int = 1
    n_images: int = 100
    detector: str = "eiger2_1m"
    wavelength_A: float = 1.0
    distance_mm: float | None = None  # None: the preset's
    beam_centre_px: tuple[float, float] | None = None  # None: image centre + (3.3, -4.7) px
    osc_start_deg: float = 0.0
    osc_width_deg: float = 0.1
    rotation_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)  # DIALS laboratory frame
    mosaicity_deg: float = 0.05
    divergence_deg: float = 0.01
    spot_sigma_px: float = 0.7
    d_min: float = 1.8
    b_factor: float = 20.0
    intensity_scale: float = 3000.0  # Wilson mean intensity at s = 0 (photons of a full reflection)
    anomalous: float = 0.0
    mtz: str | None = None
    background: BackgroundModel = field(default_factory=BackgroundModel)
    zingers_per_image: float = 1.0
    gain: float = 1.0
    damage: float = 0.0  # B increase per image (A^2)
    second_lattice: float = 0.0  # relative intensity of a second lattice (0: none)
    polarization_fraction: float = 0.99
    min_zeta: float = 0.05
    frame_time_s: float = 0.01
    series_id: str = "1"


def random_u(seed: int) -> np.ndarray:
    """A uniformly random rotation matrix (scipy, seeded)."""
    return Rotation.random(random_state=np.random.default_rng(seed)).as_matrix()


def misset_u(angles_deg) -> np.ndarray:
    """U from rotations about the lab x, then y, then z axes by the given angles (degrees, extrinsic)."""
    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


@dataclass(frozen=True)
class Reflections:
    """The sweep's reflections (one row per Ewald crossing) and their per-image shares."""

    lattice: np.ndarray  # int8: 0 main, 1 second lattice
    pred: Predictions
    intensity: np.ndarray  # true intensity I
    polarization: np.ndarray
    lorentz: np.ndarray  # 1/|zeta|
    sigma_phi_deg: np.ndarray
    sigma_px: np.ndarray
    # per (reflection, image) rows, sorted by image
    part_refl: np.ndarray
    part_image: np.ndarray
    partiality: np.ndarray
    part_counts: np.ndarray  # expected photons of the reflection on that image

    @property
    def expected_counts(self) -> np.ndarray:
        """Expected photons of each reflection summed over the sweep's images."""
        return np.bincount(self.part_refl, weights=self.part_counts, minlength=len(self.intensity))


class Simulation:
    """A set-up sweep; `frame(i)` returns image i (a buffer valid until the next call)."""

    def __init__(self, spec: SimulationSpec):
        t0 = time.perf_counter()
        self.spec = spec
        self.preset: DetectorPreset = load_preset(spec.detector)
        self.experiment = self._experiment()
        self.mask = self.preset.gap_mask()
        self.mask_u8 = (self.mask != 0).astype(np.uint8)
        self.rng_setup = np.random.default_rng([spec.seed, 0])
        self.crystals = [self.experiment.crystal]
        if spec.second_lattice > 0:
            U2 = random_u(spec.seed + 7919) @ self.experiment.crystal.U
            self.crystals.append(Crystal.from_cell(spec.cell, U2, spec.space_group, spec.mosaicity_deg))
        self.structure = self._structure()
        self.reflections = self._reflections()
        self.background_map = expected_background(self.experiment, spec.background, self.mask)
        self.background = SparseBackground(self.background_map)
        self.dtype = np.dtype(self.preset.dtype)
        self.mask_value = int(np.iinfo(self.dtype).max)
        self.overload = int(self.preset.saturation_value) + 1
        self.adu = max(1, int(round(spec.gain)))
        ny, nx = self.preset.shape
        self._frame = np.zeros((ny, nx), dtype=self.dtype)
        self._frame[self.mask != 0] = self.mask_value
        self._touched = np.zeros(1 << 16, dtype=np.int64)
        self._n_touched = 0
        order = self.reflections.part_image
        self._image_rows = np.searchsorted(order, np.arange(spec.n_images + 1))
        self.setup_s = time.perf_counter() - t0
        log.info("simulation set up in %.2f s: %d reflections, %d partials, background %.3g photons/image",
                 self.setup_s, len(self.reflections.intensity), len(self.reflections.partiality),
                 self.background.total)

    # -- set-up ---------------------------------------------------------------------------

    def _experiment(self) -> Experiment:
        spec, preset = self.spec, self.preset
        beam = Beam(spec.wavelength_A, polarization_fraction=spec.polarization_fraction)
        nx, ny = preset.image_size
        centre = spec.beam_centre_px or (nx / 2 + 3.3, ny / 2 - 4.7)
        distance = spec.distance_mm or preset.distance_mm
        pixel = (preset.pixel_size_mm, preset.pixel_size_mm)
        # spots land where the analysis will look for them: with the sensor's parallax, which the
        # series header implies (its material and thickness)
        mu = attenuation_coefficient_per_mm(preset.sensor_material, spec.wavelength_A)
        detector = Detector.from_beam_centre(centre, distance, pixel, (nx, ny), sensor_mu_per_mm=mu,
                                             sensor_thickness_mm=preset.sensor_thickness_mm)
        U = random_u(spec.seed) if spec.U is None else np.asarray(spec.U, dtype=np.float64)
        crystal = Crystal.from_cell(spec.cell, U, spec.space_group, spec.mosaicity_deg)
        scan = Scan(spec.n_images, spec.osc_start_deg, spec.osc_width_deg)
        return Experiment(beam, detector, Goniometer(spec.rotation_axis), scan, crystal)

    def _structure(self) -> IntensityModel:
        spec = self.spec
        if spec.mtz:
            return from_mtz(spec.mtz, spec.space_group)
        hkl = miller_indices(self.experiment.crystal, spec.d_min)
        d = 1.0 / np.linalg.norm(hkl @ self.experiment.crystal.A_matrix.T, axis=1)
        return random_structure(hkl, d, spec.space_group, spec.b_factor, spec.intensity_scale, spec.anomalous,
                                np.random.default_rng([spec.seed, 1]))

    def _reflections(self) -> Reflections:
        spec, exp = self.spec, self.experiment
        width = abs(spec.osc_width_deg)
        sigma_angle = math.hypot(spec.mosaicity_deg, spec.divergence_deg)
        pad = N_SIGMA_PHI * sigma_angle / spec.min_zeta / width
        parts = []
        for lattice, crystal in enumerate(self.crystals):
            e = exp.replace(crystal=crystal)
            pred = predict_rotation(e, spec.d_min, z_range=(-pad, spec.n_images + pad))
            pred = pred.select(np.abs(pred.zeta) >= spec.min_zeta)
            intensity = self.structure.intensities(pred.hkl)
            if spec.mtz:  # an MTZ on its own scale: bring its mean to the Wilson scale's
                mean = float(np.mean(intensity[intensity > 0])) if np.any(intensity > 0) else 1.0
                intensity = intensity * (spec.intensity_scale * 0.2 / mean)
            if lattice == 1:
                intensity = intensity * spec.second_lattice
            parts.append((np.full(len(pred), lattice, np.int8), pred, intensity))
        lattice = np.concatenate([p[0] for p in parts])
        pred = Predictions(*(np.concatenate([getattr(p[1], f) for p in parts])
                             for f in Predictions.__dataclass_fields__))
        intensity = np.concatenate([p[2] for p in parts])
        pol = polarization_factor(exp.beam, pred.s1)
        lorentz = 1.0 / np.abs(pred.zeta)
        sigma_phi = sigma_angle * lorentz
        rays = pred.s1 * (exp.detector.distance_mm / (pred.s1 @ exp.detector.normal))[:, None]
        spread_mm = math.radians(spec.divergence_deg) * np.linalg.norm(rays, axis=1)
        sigma_px = np.sqrt(spec.spot_sigma_px ** 2 + (spread_mm / self.preset.pixel_size_mm) ** 2)
        # images each reflection touches
        sigma_z = sigma_phi / width
        lo = np.clip(np.floor(pred.z - N_SIGMA_PHI * sigma_z), 0, spec.n_images).astype(np.int64)
        hi = np.clip(np.ceil(pred.z + N_SIGMA_PHI * sigma_z), 0, spec.n_images).astype(np.int64)
        n = hi - lo
        refl = np.repeat(np.arange(len(pred)), n)
        image = lo[refl] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
        phi0 = spec.osc_start_deg + image * spec.osc_width_deg
        phi1 = phi0 + spec.osc_width_deg
        a, b = sorted_pair((phi0 - pred.phi_deg[refl]) / sigma_phi[refl], (phi1 - pred.phi_deg[refl]) / sigma_phi[refl])
        partiality = ndtr(b) - ndtr(a)
        mid = image + 0.5
        s2 = (0.5 / pred.d[refl]) ** 2
        damage = np.exp(-spec.damage * mid / 50.0) * np.exp(-2.0 * spec.damage * mid * s2)
        counts = intensity[refl] * pol[refl] * lorentz[refl] * damage * partiality
        keep = partiality > MIN_PARTIALITY
        refl, image, partiality, counts = refl[keep], image[keep], partiality[keep], counts[keep]
        # keep only reflections with a share in some image, and renumber them
        used = np.zeros(len(pred), dtype=bool)
        used[refl] = True
        new_index = np.cumsum(used) - 1
        refl = new_index[refl]
        order = np.argsort(image, kind="stable")
        return Reflections(lattice[used], pred.select(used), intensity[used], pol[used], lorentz[used],
                           sigma_phi[used], sigma_px[used], refl[order], image[order], partiality[order],
                           counts[order])

    # -- per image -------------------------------------------------------------------------

    def rows_of_image(self, i: int) -> slice:
        return slice(int(self._image_rows[i]), int(self._image_rows[i + 1]))

    def ub_matrices(self) -> np.ndarray:
        """(n_lattices, n_images, 3, 3): S R(phi at the image's middle) F A for each lattice."""
        gonio, scan = self.experiment.goniometer, self.experiment.scan
        out = np.empty((len(self.crystals), scan.n_images, 3, 3))
        for k, crystal in enumerate(self.crystals):
            for i in range(scan.n_images):
                out[k, i] = gonio.rotation_matrix(float(scan.phi_deg(i + 0.5))) @ crystal.A_matrix
        return out

    def _spot_arrays(self, i: int):
        rows = self.rows_of_image(i)
        r = self.reflections
        idx = r.part_refl[rows]
        return r.pred.x_px[idx], r.pred.y_px[idx], r.sigma_px[idx], r.part_counts[rows]

    def expected_spots(self, i: int) -> np.ndarray:
        """Noise-free expected spot photons of image i (float64, (ny, nx)), no background."""
        out = np.zeros(self.preset.shape, dtype=np.float64)
        x, y, s, c = self._spot_arrays(i)
        spot_means(x, y, s, c, self.mask_u8, out, N_SIGMA_PX)
        return out

    def frame(self, i: int) -> np.ndarray:
        """Image i (0-based) as the detector would send it. The array is reused by the next call."""
        if not 0 <= i < self.spec.n_images:
            raise IndexError(f"image {i} outside the sweep of {self.spec.n_images}")
        frame = self._frame
        flat = frame.reshape(-1)
        flat[self._touched[:self._n_touched]] = 0  # clear the previous image's photons
        self._n_touched = 0
        rng = np.random.default_rng([self.spec.seed, 2, i])
        seed_numba(int(rng.integers(0, 2**31)))
        x, y, s, c = self._spot_arrays(i)
        n_bg = self.background.total
        w = 2 * np.clip(np.ceil(N_SIGMA_PX * s), 1, 127) + 1
        n_spot = float(c[c < 0.5 * w * w].sum())  # weak spots are drawn photon by photon
        need = int(n_bg + n_spot + 10 * math.sqrt(n_bg + n_spot + 1) + 100) + window_pixels(s, N_SIGMA_PX) + 64
        if need > len(self._touched):
            self._touched = np.zeros(max(need, 2 * len(self._touched)), dtype=np.int64)
        t = self.background.throw(rng, frame, self._touched, 0, self.adu, self.overload)
        t = render_spots(x, y, s, c, self.mask_u8, frame, self._touched, t, self.adu, self.overload, N_SIGMA_PX)
        n_zingers = int(rng.poisson(self.spec.zingers_per_image))
        if n_zingers:
            pixels = rng.integers(0, flat.size, n_zingers)
            pixels = pixels[self.mask.reshape(-1)[pixels] == 0]
            values = np.minimum(rng.integers(500, 20000, len(pixels)) * self.adu, self.overload)
            flat[pixels] = np.maximum(flat[pixels], values.astype(self.dtype))
            self._touched[t:t + len(pixels)] = pixels
            t += len(pixels)
        self._n_touched = t
        return frame

    def encoded_frame(self, i: int, encoding: str = "bslz4") -> EncodedFrame:
        data = codecs.encode(self.frame(i), encoding)
        ft = self.spec.frame_time_s
        return EncodedFrame(self.spec.series_id, i, self.preset.shape, self.dtype.str, encoding, data,
                            start_time_s=i * ft, stop_time_s=i * ft + ft * 0.99, real_time_s=ft * 0.99)

    def series_info(self) -> SeriesInfo:
        spec, preset, exp = self.spec, self.preset, self.experiment
        return SeriesInfo(
            series_id=spec.series_id, source="simulator", image_shape=preset.shape, dtype=self.dtype.str,
            n_images=spec.n_images, detector_description=preset.description, detector_serial="SIM-0001",
            sensor_material=preset.sensor_material, sensor_thickness_mm=preset.sensor_thickness_mm,
            pixel_size_mm=exp.detector.pixel_size_mm, beam_centre_px=exp.detector.beam_centre_px(exp.beam),
            distance_mm=exp.detector.distance_mm, wavelength_A=exp.beam.wavelength_A,
            fast_axis=exp.detector.fast_axis, slow_axis=exp.detector.slow_axis,
            rotation_axis=exp.goniometer.rotation_axis, omega_start_deg=spec.osc_start_deg,
            omega_increment_deg=spec.osc_width_deg, count_time_s=spec.frame_time_s * 0.99,
            frame_time_s=spec.frame_time_s, saturation_value=int(preset.saturation_value),
            bit_depth_image=preset.bit_depth, countrate_correction_applied=True, flatfield_applied=True,
            pixel_mask=self.mask.copy(),
        )


def sorted_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise (min, max): a negative oscillation width swaps the ends."""
    return np.minimum(a, b), np.maximum(a, b)
