"""Per-image analysis: strong pixels, 2D spots and the per-image statistics of one frame.

`ImageAnalyser(series, config)` is built once per series (static mask, resolution map and
radial bins, buffers, JIT warm-up), then `analyse(image, image_number) -> ImageResult` runs
per frame: DIALS dispersion(_extended) threshold -> 4-connected labelling of the strong
pixels -> centroids, intensities, DIALS's spot filters -> statistics as DIALS per-image
analysis defines them (`dials.algorithms.spot_finding.per_image_analysis`, 3.12): spots on
ice rings (width 0.004 A^-2), spots with d > 4 A, total intensity of spots off the ice
rings, estimated d_min (`streamer.resolution_estimate`, DIALS's I/sigma method, -1 with 10
or fewer spots off the ice). Coordinates: x fast, y slow, 0-based, pixel centre at +0.5;
z_image in 0-based frame units (a spot on image i has z = i + 0.5).

The result also carries every strong pixel of the image (flat index and raw value), so the
collector can join the 2D spots of a rotation sweep into 3D spots exactly
(`streamer.spot_joiner`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import numpy as np

from kernels.bslz4_native import DecodeError
from kernels.centroids import spot_moments
from kernels.d_spacing import d_spacing, pixel_centre_d_spacing
from kernels.dispersion import DispersionWorkspace, strong_pixels
from kernels.image_spots import image_spots
from kernels.image_statistics import image_statistics
from kernels.labelling import label_pixels
from kernels.radial import (
    BandedRadial,
    bin_map_of_d,
    integer_sums_apply,
    largest_d_star_sq,
    radial_profile,
    radial_segments,
    radial_sums,
)
from streamer import band_decode, codecs
from streamer.config import Config
from streamer.errors import BadFrame
from streamer.geometry import Experiment
from streamer.header_corrections import geometry_problems
from streamer.ice_rings import IceRingShells, ice_ring_table
from streamer.image_result import ImageResult, SpotTable
from streamer.masks import SeriesMask
from streamer.resolution_estimate import E_CUTOFF
from streamer.series import EncodedFrame, SeriesInfo

log = logging.getLogger(__name__)

D_4A = 4.0
MIN_SPOTS_NO_ICE = 10  # DIALS estimates d_min from more than 10 spots off the ice rings


# what the per-series set-up depends on besides the pixel mask (phi and timing do not enter it)
SETUP_FIELDS = ("image_shape", "dtype", "source", "detector_description", "detector_type", "detector_gain",
                "pixel_size_mm", "beam_centre_px", "distance_mm", "wavelength_A", "fast_axis", "slow_axis",
                "rotation_axis", "saturation_value", "underload_value", "bit_depth_image", "two_theta_deg",
                "sensor_material", "sensor_thickness_mm")

RADIAL_D_MIN_A = 0.25  # the radial profile's highest resolution
MAX_RADIAL_BINS = np.iinfo(np.int16).max  # bins of the radial profile at most (`kernels.radial.bin_map_of_d`)

WARM_DTYPES = ("<u2", "<u4")  # EIGER 16/32-bit frames (others compile with their first series)

CCD_NAMES = ("ADSC", "CCD", "RAYONIX", "MAR", "SATURN", "Q315", "Q210", "Q270", "MX225", "MX300")


def default_min_spot_size(series: SeriesInfo) -> int:
    """DIALS's Auto: 3 pixels for pixel-array detectors, 6 for CCDs (as the format says, else
    known by the header's name)."""
    if series.detector_type:
        return 6 if series.detector_type == "CCD" else 3
    name = series.detector_description.upper()
    return 6 if any(ccd in name for ccd in CCD_NAMES) else 3


def _experiment(series: SeriesInfo) -> Experiment:
    """The series' geometry; when it rules out resolutions (`header_corrections.geometry_problems`
    says why, once per series: a header with no geometry, a detector two-theta) one that gives
    none, as a distance of 0 does: spots are still found."""
    if geometry_problems(series):  # NaN throughout, from finite numbers (no invalid-value arithmetic)
        series = dataclasses.replace(series, wavelength_A=1.0, distance_mm=math.nan, beam_centre_px=(0.0, 0.0),
                                     pixel_size_mm=(0.1, 0.1))
    return Experiment.from_series(series)


class ImageAnalyser:
    """Per-series set-up, then `analyse(image, image_number)` per frame (one worker core)."""

    def __init__(self, series: SeriesInfo, config: Config | None = None, warm_up: bool = True):
        self.series = series
        self.config = config if config is not None else Config()
        sf = self.config.spotfinding
        self.params = sf
        self.shape = tuple(int(n) for n in series.image_shape)
        self.dtype = np.dtype(series.dtype)
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise BadFrame(f"series image shape {self.shape} is not a 2D image", reason="wrong_shape")
        self.experiment = _experiment(series)
        # A detector counting g ADU per photon (a CCD): DIALS finds spots on the pixels divided by g.
        # The same tests on the raw pixels take gain g (and a global threshold g times higher);
        # intensities and background are reported in photons, as DIALS's.
        g = series.detector_gain if series.detector_gain > 0 and math.isfinite(series.detector_gain) else 1.0
        self.gain = sf.gain * g
        self.global_threshold = sf.global_threshold * g
        self.adu_per_photon = g
        det, beam = self.experiment.detector, self.experiment.beam
        self._geometry = (np.asarray(det.origin_mm), np.asarray(det.fast_axis), np.asarray(det.slow_axis),
                          np.asarray(det.pixel_size_mm), beam.wavelength_A, np.asarray(beam.s0),
                          det.sensor_mu_per_mm, det.sensor_thickness_mm)
        self.resolution_map = pixel_centre_d_spacing(self.shape, *self._geometry)
        self.series_mask = SeriesMask.build(series, self.config.mask, sf.d_min, sf.d_max, self.resolution_map)
        self.mask = self.series_mask.mask
        self.trusted_range = self.series_mask.trusted_range
        # the profile's bins reach the detector's corner, or RADIAL_D_MIN_A (a short wavelength close
        # by: 0.1 A on a 16M at 100 mm, 50,000 bins), and number at most the int16 bin map's
        top = min(largest_d_star_sq(self.resolution_map), RADIAL_D_MIN_A ** -2)
        n_bins = max(1, min(int(math.ceil(top / sf.radial_bin_width)), MAX_RADIAL_BINS))
        self.radial_bin_edges = np.arange(n_bins + 1, dtype=np.float64) * sf.radial_bin_width
        self.radial_bins = bin_map_of_d(self.resolution_map, self.radial_bin_edges)
        self.radial_segments = radial_segments(self.mask, self.radial_bins, n_bins, sf.radial_row_step)
        # taken inside the threshold pass where it can (integer pixels, `analyse`)
        self.radial_in_pass = BandedRadial(self.radial_segments, self.dtype, self.trusted_range) \
            if integer_sums_apply(self.dtype) else None
        self.ice_shells = IceRingShells.build(self.radial_bin_edges, sf.ice_ring_width)
        self.ice_table = ice_ring_table()
        self.min_spot_size = sf.min_spot_size or default_min_spot_size(series)
        if sf.max_spot_size <= self.min_spot_size:
            raise BadFrame(f"max_spot_size {sf.max_spot_size} must exceed min_spot_size {self.min_spot_size}",
                           reason="bad_config")
        self.workspace = DispersionWorkspace(self.shape)
        self._block_scratch = np.empty(0, np.uint8)  # the band sources' block scratch, kept from frame to frame
        self.max_strong = int(math.ceil(sf.max_strong_pixel_fraction * self.shape[0] * self.shape[1]))
        if warm_up:
            self._warm_up()

    @classmethod
    def warm_up_kernels(cls, config: Config | None = None, dtypes: tuple[str, ...] = WARM_DTYPES) -> None:
        """Compile (first run on a machine: ~20 s) or load from numba's cache (~0.3 s) every
        kernel for the detectors' usual pixel types, before a worker says it is ready: frames
        must not wait behind a compiler while the detector streams."""
        for dtype in dtypes:
            cls(SeriesInfo("warm-up", "simulator", (64, 64), dtype, pixel_size_mm=(0.075, 0.075),
                           beam_centre_px=(32.0, 32.0), distance_mm=100.0, wavelength_A=1.0, sensor_material="Si",
                           sensor_thickness_mm=0.45), config)  # a sensor: its attenuation tables load now

    def reuse_for(self, series: SeriesInfo) -> ImageAnalyser | None:
        """This analyser's set-up (mask, resolution map, radial bins, buffers, compiled kernels)
        for another series of the same detector, geometry and mask, or None. A beamline's many
        short series (grid scans, screening) then skip the set-up (0.2 s for a 6M detector, 0.5 s for a 16M);
        the copy shares the tables and buffers, so use one analyser at a time (a worker does)."""
        old = self.series
        if any(getattr(old, name) != getattr(series, name) for name in SETUP_FIELDS):
            return None
        if (old.pixel_mask is None) != (series.pixel_mask is None) or (
                old.pixel_mask is not None and not np.array_equal(old.pixel_mask, series.pixel_mask)):
            return None
        other = copy.copy(self)
        other.series = series
        other.experiment = _experiment(series)
        return other

    # ------------------------------------------------------------------ per frame
    def strong(self, image: np.ndarray, source: tuple | None = None, radial: bool = False) -> np.ndarray:
        """Strong pixel flat indices of a checked frame (a view into the workspace); `source`:
        see `prepare`; `radial`: the pass may take the radial sums too (`radial_in_pass`)."""
        sf = self.params
        try:
            return strong_pixels(image, self.mask, sf.algorithm, sf.window_fast_slow, sf.sigma_background,
                                 sf.sigma_strong, self.global_threshold, sf.min_local, self.gain, self.trusted_range,
                                 self.workspace, source=source, flagged=self.series_mask.inactive,
                                 radial=self.radial_in_pass if radial else None)
        except DecodeError as exc:
            raise BadFrame(str(exc), reason="corrupt_compression") from exc

    def prepare(self, frame: EncodedFrame, out: np.ndarray) -> tuple[np.ndarray, tuple | None]:
        """(image, source) for `analyse` from an encoded frame, `out` a buffer reused across
        frames. Of a bslz4 frame of the series' integer type only the header is checked here:
        the threshold pass decodes it band by band into `out` just ahead of the rows it reads,
        while they are in L2, and checks each block as it gets to it (`kernels.bslz4_native`;
        measured 10.7 -> 9.9 ms per 4M frame, 36 -> 28 ms per 16M frame). Other frames are
        decoded here, the decoder's own output taken when it makes one."""
        if (frame.encoding == "bslz4" and self.dtype.kind in "iu" and self.dtype.isnative
                and np.dtype(frame.dtype) == self.dtype and tuple(frame.shape) == self.shape
                and out.shape == self.shape and out.dtype == self.dtype
                and band_decode.block_decoder_functions() is not None):
            source = band_decode.bslz4_band_source(frame, out, self._block_scratch)
            self._block_scratch = source[2]  # (src, dst, scratch, functions, state)
            image = out.view()
            image.flags.writeable = False
            return image, source
        return codecs.decode(frame, out=out, allow_view=True), None

    def check(self, image: np.ndarray) -> np.ndarray:
        """The frame as a native, C-contiguous array of the series dtype, or BadFrame."""
        if not isinstance(image, np.ndarray) or image.ndim != 2:
            raise BadFrame(f"frame is not a 2D array ({getattr(image, 'shape', None)})", reason="wrong_shape")
        if tuple(image.shape) != self.shape:
            raise BadFrame(f"frame shape {image.shape} differs from the series {self.shape}", reason="wrong_shape")
        if image.dtype.newbyteorder("=") != self.dtype.newbyteorder("="):
            raise BadFrame(f"frame dtype {image.dtype} differs from the series {self.dtype}", reason="wrong_dtype")
        if not image.dtype.isnative or not image.flags.c_contiguous:
            image = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("="))
        if image.dtype.kind == "f" and np.isnan(image).any():
            raise BadFrame("float frame contains NaN", reason="nan_pixels")
        if image.flags.writeable:  # one kind of array for the kernels (numba compiles read-only apart)
            image = image.view()
            image.flags.writeable = False
        return image

    def analyse(self, image: np.ndarray, image_number: int, source: tuple | None = None) -> ImageResult:
        """The per-image result of a decoded frame, or of one `prepare` handed on with its source."""
        image, spots, n_strong = self.find_spots(image, image_number, source, radial=True)
        ws = self.workspace
        if self.radial_in_pass is not None and self.radial_in_pass.filled:
            profile, counts = self.radial_in_pass.result()
        else:  # the pixels of its spots (the dispersed ones) are flagged in ws.flag
            profile, counts = radial_sums(image, self.radial_segments, ws.flag, self.trusted_range)
        if self.adu_per_photon != 1.0:
            profile = (profile / np.float32(self.adu_per_photon)).astype(profile.dtype)
        total_counts = counts.sum()
        background = float(np.nansum(profile.astype(np.float64) * counts) / total_counts) if total_counts \
            else float("nan")
        return self.statistics(image_number, spots, n_strong, ws.n_overloads, background, profile, counts)

    def find_spots(self, image: np.ndarray, image_number: int, source: tuple | None = None,
                   radial: bool = False) -> tuple[np.ndarray, SpotTable, int]:
        """(checked image, spots, strong pixel count): what `dials.find_spots` does per image
        (decode, threshold, labelling, centroids, spot filters), without the statistics and
        radial profile `analyse` adds (`radial`: as `strong`). BadFrame for a frame with
        nothing to find."""
        image = self.check(image)
        strong = self.strong(image, source, radial)
        ws = self.workspace
        # a strong pixel is valid and above zero, so only an empty result can mean a dead frame
        # (the fast pass counts valid pixels only when asked)
        if strong.size == 0 and ws.n_valid == 0:
            raise BadFrame(f"image {image_number} has no valid pixel (all saturated or masked)",
                           reason="all_saturated")
        if strong.size == 0 and ws.n_valid_nonzero == 0 and ws.n_overloads == 0:
            raise BadFrame(f"image {image_number} is all zero", reason="all_zero")
        if strong.size > self.max_strong:
            raise BadFrame(f"image {image_number} has {strong.size} strong pixels, more than "
                           f"{self.params.max_strong_pixel_fraction:.0%} of the detector",
                           reason="too_many_strong_pixels")
        index = strong.copy()
        values = ws.strong_values()
        if values is None:
            values = np.take(image.reshape(-1), index)
        return image, self.spots(index, values, image_number), index.size

    def spots(self, index: np.ndarray, values: np.ndarray, image_number: int) -> SpotTable:
        """2D spots from one image's strong pixels, with DIALS's size and peak-separation filters."""
        if index.size == 0:
            return SpotTable.empty()
        columns = image_spots(index, values, self.shape, self.min_spot_size, self.params.max_spot_size,
                              self.params.max_separation, image_number, self._geometry)
        table = SpotTable(*columns, pixel_index=index.copy(), pixel_value=values.astype(np.float32))
        if self.adu_per_photon != 1.0:  # in photons, as DIALS sums them
            photons = np.float32(1.0 / self.adu_per_photon)
            table = dataclasses.replace(table, intensity=table.intensity / self.adu_per_photon,
                                        pixel_value=table.pixel_value * photons)
        return table

    def d_spacing(self, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """Resolution (A) at continuous pixel positions: 1/|s1 - s0|."""
        return d_spacing(x_px, y_px, *self._geometry)

    def statistics(self, image_number: int, spots: SpotTable, n_strong: int, n_overloads: int, background: float,
                   profile: np.ndarray, counts: np.ndarray) -> ImageResult:
        # one compiled call: `on_ice_rings`, `estimate_d_min` and `IceRingShells.detect`, bit for bit
        with np.errstate(invalid="ignore", divide="ignore"):
            log_i_over_sigma = np.log(spots.intensity / np.sqrt(np.abs(spots.intensity)))
        _, n_no_ice, n_4a, total, d_min_est, on_image = image_statistics(
            spots.d_spacing, spots.intensity, log_i_over_sigma, profile, counts, self.ice_table,
            self.params.ice_ring_width / 2.0, self.ice_shells.shells, self.ice_shells.detection, D_4A,
            MIN_SPOTS_NO_ICE, E_CUTOFF)
        return ImageResult(
            image_number=int(image_number),
            phi_deg=float(self.series.phi_deg(image_number + 0.5)),
            n_spots=len(spots),
            n_spots_no_ice=n_no_ice,
            n_spots_4A=n_4a,
            total_intensity=total,
            estimated_d_min=d_min_est,
            background=background,
            n_overloads=int(n_overloads),
            ice_rings=int(np.count_nonzero(on_image)),
            strong_pixels=int(n_strong),
            radial_profile=profile,
            spots=spots,
        )

    # ------------------------------------------------------------------ set-up
    def _warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel for this dtype on a tiny frame."""
        rng = np.random.default_rng(0)
        small = rng.poisson(3.0, (24, 24)).astype(self.dtype.newbyteorder("="))
        small[10:13, 10:13] = 200
        small.flags.writeable = False  # as `check` hands frames to the kernels
        mask = np.ones(small.shape, dtype=np.uint8)
        mask.setflags(write=False)  # as the series mask is: numba compiles read-only arrays apart
        sf = self.params
        for algorithm, final in (("dispersion", "auto"), ("dispersion_extended", "tiles"),
                                 ("dispersion_extended", "rows")):  # and both final tests
            for path in ("auto", "packed", "banded"):  # every pass a frame of this series may take
                ws = DispersionWorkspace(small.shape)
                try:
                    idx = strong_pixels(small, mask, algorithm, sf.window_fast_slow, sf.sigma_background,
                                        sf.sigma_strong, self.global_threshold, sf.min_local, self.gain,
                                        self.trusted_range, ws, path=path, final=final).copy()
                except ValueError:  # that pass does not apply to this series (float frames, large windows)
                    continue
        if small.dtype.kind in "iu" and band_decode.block_decoder_functions() is not None:
            # frames a worker hands over still compressed, decoded inside the pass
            frame = EncodedFrame("warm-up", 0, small.shape, small.dtype.str, "bslz4", codecs.encode(small, "bslz4"))
            out = np.empty_like(small)
            view = out.view()
            view.flags.writeable = False
            for path in ("auto", "packed"):  # decoded before the pass, then inside it
                try:
                    strong_pixels(view, mask, sf.algorithm, sf.window_fast_slow, sf.sigma_background,
                                  sf.sigma_strong, self.global_threshold, sf.min_local, self.gain, self.trusted_range,
                                  DispersionWorkspace(small.shape), path=path,
                                  source=band_decode.bslz4_band_source(frame, out))
                except ValueError:  # the packed pass does not apply (windows of 64 pixels or more)
                    continue
        labels, n = label_pixels(idx, small.shape)
        spot_moments(idx, small.reshape(-1)[idx], labels, n, small.shape)
        columns = image_spots(idx, small.reshape(-1)[idx], small.shape, 1, 1000, 2.0, 0, self._geometry)
        bins = np.zeros(small.shape, dtype=np.int16)
        radial_profile(small, mask, bins, 1, ws.flag, self.trusted_range, 1)
        n_bins = len(self.radial_bin_edges) - 1
        spots = SpotTable(*columns, pixel_index=idx.astype(np.int32), pixel_value=small.reshape(-1)[idx].astype("f4"))
        self.statistics(0, spots, idx.size, 0, 1.0, np.ones(n_bins, dtype=np.float32), np.full(n_bins, 100))
        self.d_spacing(np.array([0.5]), np.array([0.5]))
