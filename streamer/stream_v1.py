"""DECTRIS SIMPLON stream v1 ("legacy"): multipart JSON + binary messages, parsed.

The detector's side (the same messages produced) is `streamer.stream_v1_encode`.

Message layouts (SIMPLON API 1.6/1.8 stream interface; one list entry per ZeroMQ part):

- series header: `dheader-1.0` {series, header_detail}; with detail "basic" or "all" the
  detector configuration (JSON); with "all" also `dflatfield-1.0` + float32 blob,
  `dpixelmask-1.0` + uint32 blob, `dcountrate_table-1.0` + float32 blob.
- image: `dimage-1.0` {series, frame, hash}, `dimage_d-1.0` {shape, type, encoding, size},
  the pixel blob, `dconfig-1.0` {start_time, stop_time, real_time}.
- end: `dseries_end-1.0` {series}.
Any message may carry one extra appendix part (user data). `shape` is [width, height]: numpy
order is the reverse. Times: EIGER2 (API 1.8) counts nanoseconds, EIGER (API 1.5/1.6) 20 ns ticks.
The image `hash` is not a checksum of blob or pixels on real detectors and is not checked.
Bad messages raise `BadMessage` (or `BadHeader`) with a stable `reason`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.errors import BadHeader, BadMessage
from streamer.series import (BIT_DEPTH_TYPES, MAX_SIDE, MAX_WHOLE, SCAN_AXES, EncodedFrame, SeriesInfo,
                             finite_or_zero, header_text, optional_int, rotation_scan)

MAX_JSON_BYTES = 1 << 20  # the biggest real config part is ~1.5 kB
HEADER, IMAGE, END = "dheader-1.0", "dimage-1.0", "dseries_end-1.0"
HEADER_PARTS = {"none": 1, "basic": 2, "all": 8}
IMAGE_PARTS = 4
END_PARTS = 1
HC_KEV_A = 12.398419843320026  # h*c in keV*Angstrom (CODATA 2018)
_ENCODING = re.compile(r"^(?:bs(8|16|32)-)?(lz4)?([<>])$")
# the pixel type names of the stream -> numpy type codes
PIXEL_TYPES = {"uint8": "u1", "uint16": "u2", "uint32": "u4", "int8": "i1", "int16": "i2", "int32": "i4",
               "float32": "f4", "float64": "f8"}


@dataclass(frozen=True)
class V1Header:
    """A parsed `dheader-1.0` message: the config dict and, for detail "all", the arrays (numpy order)."""

    series: int
    header_detail: str
    config: dict[str, Any]
    flatfield: np.ndarray | None = field(default=None, repr=False)
    pixel_mask: np.ndarray | None = field(default=None, repr=False)
    countrate_table: np.ndarray | None = field(default=None, repr=False)
    appendix: Any = None


@dataclass(frozen=True)
class V1Image:
    """A parsed `dimage-1.0` message; `data` is the blob as received (not decoded, not copied)."""

    series: int
    frame: int
    shape: tuple[int, int]  # numpy order (height, width)
    dtype: str
    encoding: str  # codecs name: "bslz4", "lz4", "raw"
    data: Any = field(repr=False)
    start_time: int | None = None  # detector ticks (see `time_tick_s`)
    stop_time: int | None = None
    real_time: int | None = None
    appendix: Any = None


@dataclass(frozen=True)
class V1End:
    series: int
    appendix: Any = None


def _bytes(part: Any) -> memoryview:
    view = memoryview(part)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def parse_json(part: Any, what: str = "part") -> dict[str, Any]:
    """A JSON object part, bounded in size; BadMessage("malformed_json") otherwise."""
    view = _bytes(part)
    if view.nbytes > MAX_JSON_BYTES:
        raise BadMessage(f"{what} of {view.nbytes} bytes is too large for JSON", reason="malformed_json")
    try:
        obj = json.loads(bytes(view))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadMessage(f"{what} is not JSON: {exc}", reason="malformed_json") from exc
    if not isinstance(obj, dict):
        raise BadMessage(f"{what} is JSON but not an object", reason="malformed_json")
    return obj


def _appendix(part: Any) -> Any:
    view = _bytes(part)
    if view.nbytes > MAX_JSON_BYTES:
        return bytes(view[:MAX_JSON_BYTES])
    try:
        return json.loads(bytes(view))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return bytes(view)


def _int(obj: dict[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WHOLE:
        raise BadMessage(f"{what} field {key!r} is {value!r:.40}, not a 63-bit non-negative integer",
                         reason="malformed_json")
    return value


def _count_parts(parts: Sequence[Any], needed: int, what: str) -> Any:
    """Check the part count (an appendix part is allowed); return the appendix or None."""
    if len(parts) < needed:
        raise BadMessage(f"{what} has {len(parts)} parts, needs {needed}", reason="truncated_message")
    if len(parts) > needed + 1:
        raise BadMessage(f"{what} has {len(parts)} parts, expected {needed} (+1 appendix)", reason="wrong_part_count")
    return _appendix(parts[needed]) if len(parts) == needed + 1 else None


def dtype_of(type_name: Any) -> str:
    """numpy dtype string of a SIMPLON `type` ("uint16" -> "<u2"); BadMessage if unknown."""
    if not isinstance(type_name, str) or type_name not in PIXEL_TYPES:  # a list or map is unhashable
        raise BadMessage(f"unknown pixel type {type_name!r:.40}", reason="unknown_encoding")
    return "<" + PIXEL_TYPES[type_name] if PIXEL_TYPES[type_name] != "u1" else "|u1"


def encoding_of(name: Any, dtype: str) -> tuple[str, str]:
    """(codecs encoding, dtype with byte order) of a v1 `encoding` string such as "bs16-lz4<"."""
    match = _ENCODING.match(name) if isinstance(name, str) else None
    if match is None:
        raise BadMessage(f"unknown encoding {name!r}", reason="unknown_encoding")
    bits, lz4, order = match.groups()
    dt = np.dtype(dtype).newbyteorder(order)
    if bits is not None and (lz4 is None or int(bits) != 8 * dt.itemsize):
        raise BadMessage(f"encoding {name!r} does not fit pixel type {dtype}", reason="unknown_encoding")
    encoding = "bslz4" if bits else "lz4" if lz4 else "raw"
    return encoding, dt.str


def _array_part(header_part: Any, blob: Any, htype: str) -> np.ndarray | None:
    """A header array (flatfield, mask, countrate table): JSON part + raw little-endian blob."""
    desc = parse_json(header_part, htype)
    if desc.get("htype") != htype:
        raise BadHeader(f"expected {htype}, got {desc.get('htype')!r}", reason="wrong_part_count")
    shape = desc.get("shape")
    blob = _bytes(blob)
    if not shape or desc.get("type") == "undefined":
        return None  # EIGER2 sends empty parts when the array is not available
    if not isinstance(shape, list) or not all(isinstance(n, int) and n > 0 for n in shape) or len(shape) > 2:
        raise BadHeader(f"{htype} shape {shape!r:.40} is not [width, height]", reason="bad_header")
    dtype = dtype_of(desc.get("type"))
    expected = math.prod(shape) * np.dtype(dtype).itemsize  # exact: Python integers
    if blob.nbytes != expected:
        raise BadHeader(f"{htype} blob has {blob.nbytes} bytes, its header says {expected}", reason="blob_size")
    return np.frombuffer(blob, dtype=dtype).reshape(shape[::-1]).copy()


def htype_of(parts: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """The `htype` of a multipart message and its first part."""
    if not parts:
        raise BadMessage("empty multipart message", reason="truncated_message")
    first = parse_json(parts[0], "first part")
    htype = first.get("htype")
    if not isinstance(htype, str):
        raise BadMessage("first part has no htype", reason="malformed_json")
    return htype, first


def parse_message(parts: Sequence[Any]) -> V1Header | V1Image | V1End:
    """Parse one v1 multipart message (a sequence of buffers, e.g. zmq frame buffers)."""
    htype, first = htype_of(parts)
    if htype == IMAGE:
        return parse_image(parts, first)
    if htype == HEADER:
        return parse_header(parts, first)
    if htype == END:
        appendix = _count_parts(parts, END_PARTS, "end of series")
        return V1End(_int(first, "series", htype), appendix)
    raise BadMessage(f"unknown htype {htype!r}", reason="unknown_type")


def parse_header(parts: Sequence[Any], first: dict[str, Any] | None = None) -> V1Header:
    first = first if first is not None else parse_json(parts[0], "header")
    series = _int(first, "series", HEADER)
    detail = first.get("header_detail", "basic")
    if not isinstance(detail, str) or detail not in HEADER_PARTS:  # a list or map is unhashable
        raise BadHeader(f"unknown header_detail {detail!r:.40}", reason="bad_header")
    appendix = _count_parts(parts, HEADER_PARTS[detail], f"header ({detail})")
    config = parse_json(parts[1], "detector configuration") if detail != "none" else {}
    arrays: dict[str, np.ndarray | None] = {}
    if detail == "all":
        arrays["flatfield"] = _array_part(parts[2], parts[3], "dflatfield-1.0")
        arrays["pixel_mask"] = _array_part(parts[4], parts[5], "dpixelmask-1.0")
        arrays["countrate_table"] = _array_part(parts[6], parts[7], "dcountrate_table-1.0")
    return V1Header(series, detail, config, appendix=appendix, **arrays)


def parse_image(parts: Sequence[Any], first: dict[str, Any] | None = None) -> V1Image:
    first = first if first is not None else parse_json(parts[0], "image")
    series = _int(first, "series", IMAGE)
    frame = _int(first, "frame", IMAGE)
    appendix = _count_parts(parts, IMAGE_PARTS, f"image {frame}")
    desc = parse_json(parts[1], "image description")
    if desc.get("htype") != "dimage_d-1.0":
        raise BadMessage(f"image part 2 is {desc.get('htype')!r}, not dimage_d-1.0", reason="wrong_part_count")
    shape = desc.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and 0 < n <= MAX_SIDE
                                                                 for n in shape)):
        raise BadMessage(f"image shape {shape!r} is not [width, height]", reason="malformed_json")
    encoding, dtype = encoding_of(desc.get("encoding"), dtype_of(desc.get("type")))
    blob = parts[2]
    size = _bytes(blob).nbytes
    if "size" in desc and desc["size"] != size:
        raise BadMessage(f"image blob has {size} bytes, its header says {desc['size']!r}", reason="blob_size")
    times = parse_json(parts[3], "image timing")
    if times.get("htype") != "dconfig-1.0":
        raise BadMessage(f"image part 4 is {times.get('htype')!r}, not dconfig-1.0", reason="wrong_part_count")
    t = {k: times.get(k) if isinstance(times.get(k), int) and not isinstance(times.get(k), bool) else None
         for k in ("start_time", "stop_time", "real_time")}
    return V1Image(series, frame, (shape[1], shape[0]), dtype, encoding, blob, appendix=appendix, **t)


def time_tick_s(config: dict[str, Any]) -> float:
    """Duration of one `dconfig-1.0` time tick: 20 ns on EIGER (SIMPLON API 1.5/1.6), else 1 ns."""
    version = str(config.get("software_version", ""))
    return 20e-9 if version.startswith(("1.5", "1.6")) else 1e-9


def image_bit_depth(config: dict[str, Any]) -> int | None:
    """The header's `bit_depth_image` where it names a pixel type (8, 16 or 32), else None: EIGER 1
    sends none, and a value that is none of these is as good as none (the first image tells)."""
    value = config.get("bit_depth_image")
    return value if type(value) is int and value in BIT_DEPTH_TYPES else None


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)  # EIGER (API 1.6) sends booleans as 0/1


def _float(config: dict[str, Any], key: str, default: float = 0.0) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadHeader(f"configuration field {key!r} is {value!r}, not a finite number", reason="bad_header")
    return float(value)


def series_info(header: V1Header, dtype: str | None = None) -> SeriesInfo:
    """Normalise a v1 header into SeriesInfo (mm, Angstrom, degrees, seconds; numpy shapes).

    `dtype` is the pixel type when the header does not say (EIGER 1 has no `bit_depth_image`:
    the receiver takes it from the first image). Without either, "<u4" is assumed.
    """
    c = header.config
    width, height = int(_float(c, "x_pixels_in_detector", 0)), int(_float(c, "y_pixels_in_detector", 0))
    if header.header_detail != "none" and (width <= 0 or height <= 0):
        raise BadHeader("configuration lacks x/y_pixels_in_detector", reason="bad_header")
    if dtype is None:
        dtype = BIT_DEPTH_TYPES.get(image_bit_depth(c) or 32, "<u4")
    bit_depth = image_bit_depth(c) or 8 * np.dtype(dtype).itemsize
    wavelength = _float(c, "wavelength", 0.0)
    if wavelength <= 0 and _float(c, "photon_energy", 0.0) > 0:
        wavelength = HC_KEV_A * 1000.0 / _float(c, "photon_energy")
    cutoff_key = next((k for k in ("countrate_correction_count_cutoff", "saturation_value") if k in c), "")
    cutoff = c.get(cutoff_key)
    nimages = int(_float(c, "nimages", 0)) * max(1, int(_float(c, "ntrigger", 1)))
    angles = {"omega": (_float(c, "omega_start"), _float(c, "omega_increment"))}  # the usual scan: strict
    angles.update({a: (c.get(f"{a}_start"), c.get(f"{a}_increment")) for a in SCAN_AXES[1:]})
    axis, scan_start, increment = rotation_scan(angles)
    raw = {"config": dict(c), "header_detail": header.header_detail, "time_tick_s": time_tick_s(c),
           "scan_axis": axis}
    if header.countrate_table is not None:
        raw["countrate_table"] = header.countrate_table
    if header.appendix is not None:
        raw["appendix"] = header.appendix
    return SeriesInfo(
        series_id=str(header.series),
        source="stream-v1",
        image_shape=(height, width),
        dtype=dtype,
        n_images=nimages or None,
        detector_description=header_text(c.get("description", "")),
        detector_serial=header_text(c.get("detector_number", "")),
        sensor_material=header_text(c.get("sensor_material", "")),
        sensor_thickness_mm=_float(c, "sensor_thickness") * 1000.0,
        pixel_size_mm=(_float(c, "x_pixel_size", 75e-6) * 1000.0, _float(c, "y_pixel_size", 75e-6) * 1000.0),
        beam_centre_px=(_float(c, "beam_center_x"), _float(c, "beam_center_y")),
        distance_mm=_float(c, "detector_distance") * 1000.0,
        wavelength_A=wavelength,
        omega_start_deg=scan_start,
        omega_increment_deg=increment,
        two_theta_deg=finite_or_zero(c.get("two_theta_start")),
        count_time_s=_float(c, "count_time"),
        frame_time_s=_float(c, "frame_time"),
        saturation_value=int(_float(c, cutoff_key)) if isinstance(cutoff, (int, float)) and not isinstance(cutoff, bool)
        else None,  # NaN or infinity: a bad header (`_float`), as for every number the header must give
        underload_value=optional_int(c.get("underload_value")),
        bit_depth_image=int(bit_depth),
        countrate_correction_applied=_bool(c.get("countrate_correction_applied")),
        flatfield_applied=_bool(c.get("flatfield_correction_applied")),
        pixel_mask=header.pixel_mask,
        flatfield=header.flatfield,
        raw=raw,
    )


def encoded_frame(image: V1Image, series: SeriesInfo, received_at: float = 0.0) -> EncodedFrame:
    """The EncodedFrame of a v1 image of `series` (times converted to seconds)."""
    tick = float(series.raw.get("time_tick_s", 1e-9))
    seconds = {k: (None if v is None else v * tick) for k, v in
               (("start_time_s", image.start_time), ("stop_time_s", image.stop_time), ("real_time_s", image.real_time))}
    return EncodedFrame(series.series_id, image.frame, image.shape, image.dtype, image.encoding, image.data,
                        received_at=received_at, **seconds)
