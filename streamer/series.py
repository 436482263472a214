"""Typed records for one data series and its frames, the same whatever the source.

Every source (stream v1, stream v2, HDF5 replay, CBF/SMV files, the simulator) normalises its
header into a `SeriesInfo` and its images into `EncodedFrame`s, so later stages never see
protocol details. Units: mm, Angstrom, degrees, seconds. Pixel coordinates follow
dxtbx: x fast (column), y slow (row), 0-based, pixel centre at +0.5. Lab frame: DIALS/imgCIF
(see `streamer.geometry`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.errors import BadHeader

# Bit meanings of the DECTRIS pixel mask (SIMPLON API; bit 0 is the least significant).
PIXEL_MASK_BITS = {
    0: "gap",  # gap between modules/chips
    1: "dead",
    2: "under_responding",
    3: "over_responding",
    4: "noisy",
    31: "user_masked",
}


# The pixel type of the images a DECTRIS header's bit_depth_image names (stream v1 and v2)
BIT_DEPTH_TYPES = {8: "|u1", 16: "<u2", 32: "<u4"}

# The goniometer axes a DECTRIS header gives a start and an increment for, in the order in which
# one with a non-zero increment is taken for the scan (`rotation_scan`).
SCAN_AXES = ("omega", "phi", "kappa", "chi")


def finite_or_zero(value: Any) -> float:
    """A header's number, or 0 for anything else (fields that are seldom set)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else 0.0


def optional_int(value: Any) -> int | None:
    """A header's whole number (a finite number, rounded down), or None for anything else."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return int(math.floor(value)) if ok else None


MAX_SIDE = 1 << 16  # pixels along one side of an image (the largest detectors have ~4400)
MAX_TEXT = 1024  # characters of a header's name or description that are kept
MAX_WHOLE = (1 << 63) - 1  # the largest whole number a header or image number may be (msgpack, numpy)
_INT64 = (-MAX_WHOLE - 1, MAX_WHOLE)


def header_text(value: Any) -> str:
    """A header's name or description as text that every output can carry: characters UTF-8
    cannot encode (a lone surrogate from JSON) replaced, at most MAX_TEXT characters kept."""
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "replace").decode("utf-8")[:MAX_TEXT]


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def rotation_scan(angles: dict[str, tuple[Any, Any]]) -> tuple[str, float, float]:
    """(axis, start, increment) of the rotation a header describes: omega's, or else the first
    axis of SCAN_AXES that moves (a phi scan on a kappa goniometer: omega's increment is 0 and
    phi's is not, which is not a still). Without any moving axis, omega's start and 0 (stills).

    Stream headers give angles, not axis vectors: a rotation is modelled about omega's axis
    (the configured rotation axis), which phi's is only while kappa and chi are at 0. A kappa
    or chi scan, or a phi scan with kappa or chi off 0, is analysed as stills (increment 0,
    its axis named "<axis> (not modelled: stills)"), never as a rotation about the wrong axis.

    `angles` maps axis names to (start, increment) in degrees as the header gives them; what is
    not a finite number counts as 0 (parsers check omega's themselves), missing axes are still.
    """
    def start_of(axis: str) -> float:
        return finite_or_zero(angles.get(axis, (0.0, 0.0))[0])

    for axis in SCAN_AXES:
        start, increment = (finite_or_zero(v) for v in angles.get(axis, (0.0, 0.0)))
        if increment == 0.0:
            continue
        if axis == "omega" or (axis == "phi" and start_of("kappa") == 0.0 and start_of("chi") == 0.0):
            return axis, start, increment
        return f"{axis} (not modelled: stills)", start_of("omega"), 0.0
    return "omega", start_of("omega"), 0.0


@dataclass(frozen=True)
class SeriesInfo:
    """What a series header tells: detector, geometry, timing. Frozen; arrays are read-only.

    `image_shape` is numpy order (rows = slow, cols = fast). `pixel_mask` is the detector's
    bit mask (nonzero = do not use), or None. `raw` keeps the header as received (config
    dict, for `record`; `scan_axis` for the receiver's log), never used for decisions.
    """

    series_id: str
    source: str  # "stream-v1", "stream-v2", "hdf5", "cbf", "smv", "simulator"
    image_shape: tuple[int, int]
    dtype: str  # numpy dtype string with explicit byte order, e.g. "<u4"
    n_images: int | None = None
    detector_description: str = ""
    detector_type: str = ""  # "PAD" or "CCD" where the format decides it as dxtbx does; "": by the description
    detector_gain: float = 1.0  # ADU per photon, as the format states or dxtbx implies it (ADSC CCDs); counters 1
    detector_serial: str = ""
    sensor_material: str = ""
    sensor_thickness_mm: float = 0.0
    pixel_size_mm: tuple[float, float] = (0.075, 0.075)  # (fast, slow)
    beam_centre_px: tuple[float, float] = (0.0, 0.0)  # (fast, slow)
    distance_mm: float = 100.0
    wavelength_A: float = 1.0
    fast_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    slow_axis: tuple[float, float, float] = (0.0, -1.0, 0.0)
    rotation_axis: tuple[float, float, float] = (1.0, 0.0, 0.0)
    omega_start_deg: float = 0.0
    omega_increment_deg: float = 0.0
    two_theta_deg: float = 0.0  # the detector arm's angle; not modelled (`header_corrections.geometry_problems`)
    count_time_s: float = 0.0
    frame_time_s: float = 0.0
    saturation_value: int | None = None  # this value and above: not trusted (overloads)
    underload_value: int | None = None  # the lowest trusted value (NXmx); None: 0 (-1 marks a bad pixel)
    bit_depth_image: int | None = None
    countrate_correction_applied: bool | None = None
    flatfield_applied: bool | None = None
    pixel_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    flatfield: np.ndarray | None = field(default=None, repr=False, compare=False)
    channels: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:  # caught here, whatever the source: later stages and the wire can carry every field
            raise BadHeader(f"series {self.series_id!r}: {problem}", reason="bad_header")
        for name in ("pixel_mask", "flatfield"):
            arr = getattr(self, name)
            if arr is not None:
                arr.setflags(write=False)

    def _problem(self) -> str:
        """What makes this header unusable, or "": an image side beyond MAX_SIDE, a whole number
        beyond 64 bits, a number that is not one, text that is not text."""
        shape = self.image_shape
        sides_ok = isinstance(shape, tuple) and len(shape) == 2 and all(_is_whole(n) and 0 <= n <= MAX_SIDE
                                                                        for n in shape)
        if not sides_ok:
            return f"image shape {shape!r} is not two sides of 0 to {MAX_SIDE} pixels"
        for name in ("n_images", "saturation_value", "underload_value", "bit_depth_image"):
            value = getattr(self, name)
            if value is not None and not _is_whole(value):
                return f"{name} {value!r} is not a 64-bit whole number"
        for name in ("pixel_size_mm", "beam_centre_px", "fast_axis", "slow_axis", "rotation_axis"):
            if not all(_is_real(v) for v in getattr(self, name)):
                return f"{name} {getattr(self, name)!r} is not a list of numbers"
        for name in ("detector_gain", "sensor_thickness_mm", "distance_mm", "wavelength_A", "omega_start_deg",
                     "omega_increment_deg", "two_theta_deg", "count_time_s", "frame_time_s"):
            if not _is_real(getattr(self, name)):
                return f"{name} {getattr(self, name)!r} is not a number"
        for text in (self.series_id, self.source, self.dtype, self.detector_description, self.detector_type,
                     self.detector_serial, self.sensor_material, *self.channels):
            if not isinstance(text, str) or len(text) > MAX_TEXT or header_text(text) != text:
                return f"{text!r:.80} is not text of at most {MAX_TEXT} characters"
        return ""

    @property
    def is_still(self) -> bool:
        return self.omega_increment_deg == 0.0

    def phi_deg(self, image_number: float) -> float:
        """Rotation angle at `image_number` in frame units (image i spans [i, i+1))."""
        return self.omega_start_deg + image_number * self.omega_increment_deg


@dataclass(frozen=True)
class EncodedFrame:
    """One image as it arrived: compressed bytes (or raw) plus how to decode them.

    `encoding` is one of "bslz4" (bitshuffle-LZ4 with the 12-byte HDF5-filter header), "lz4"
    (one bare LZ4 block, v1) / "lz4-h5" (HDF5 lz4 filter framing), or "raw".
    `data` is any buffer (bytes, memoryview, zmq.Frame.buffer): never copied until decoded.
    """

    series_id: str
    image_number: int  # 0-based
    shape: tuple[int, int]  # numpy order
    dtype: str  # explicit byte order, e.g. "<u2"
    encoding: str
    data: Any = field(repr=False)
    channel: str = ""
    start_time_s: float | None = None
    stop_time_s: float | None = None
    real_time_s: float | None = None
    received_at: float = 0.0  # time.monotonic() when the receiver got it

    @property
    def nbytes_decoded(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class SeriesEnd:
    """End of a series; `reason` is "end" for a proper end-of-series message, else why it was closed."""

    series_id: str
    reason: str = "end"
    n_images_received: int = 0


@dataclass(frozen=True)
class Dropped:
    """A message or frame that could not be used, with its counted reason."""

    reason: str
    message: str
    series_id: str | None = None
    image_number: int | None = None
