"""DECTRIS stream v2: one CBOR message per ZeroMQ message (start / image / end), parsed.

Follows the DECTRIS documentation (github.com/dectris/documentation, stream_v2/README.md and
cbor/dectris-compression-tag.md). A message is a CBOR map, preceded by the self-describe tag
55799 (bytes d9 d9 f7), whose first key is `type`. Arrays are RFC 8746 multi-dimensional arrays
(tag 40: [dims in numpy (row-major) order, typed array]); a typed array is an RFC 8746 tag
(64 uint8, 69 uint16 LE, 70 uint32 LE, 85 float32 LE, ...) on a byte string or on the DECTRIS
compression tag 56500 ["bslz4" | "lz4", element size, bytes] ("lz4" uses the HDF5 LZ4 framing).
Times are rationals [ticks, 50000000] in seconds; `image_id` starts at 0; `data` maps channel
names ("threshold_1", ...) to arrays. Units of the start message: metres for pixel size, sensor
thickness and detector translation; eV / Angstrom for energy / wavelength; degrees for axes.
Bad messages raise BadMessage/BadHeader with a stable `reason`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
import numpy as np

from streamer import cbor_splice, codecs
from streamer.errors import BadFrame, BadHeader, BadMessage
from streamer.series import (BIT_DEPTH_TYPES, MAX_WHOLE, SCAN_AXES, EncodedFrame, SeriesInfo, finite_or_zero,
                             header_text, optional_int, rotation_scan)

SELF_DESCRIBE = b"\xd9\xd9\xf7"
TIME_BASE = 50_000_000  # ticks per second in DECTRIS time rationals
MAX_DEPTH = 16
SPLICE_BYTES = 64 * 1024  # byte strings from this size are views of the message (`loads`)
HC_EV_A = 12398.419843320026  # h*c in eV*Angstrom (CODATA 2018)
# RFC 8746 typed-array tags -> numpy dtype strings
TYPED_ARRAY_TAGS = {
    64: "|u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "|u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "|i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
}
COMPRESSION_NAMES = {"bslz4": "bslz4", "lz4": "lz4-h5"}  # tag-56500 algorithm -> codecs encoding


@dataclass(frozen=True)
class Compressed:
    """Tag 56500 content: algorithm, element size, compressed bytes."""

    algorithm: str
    elem_size: int
    data: Any = field(repr=False)


@dataclass(frozen=True)
class TypedArray:
    dtype: str
    data: Any = field(repr=False)  # bytes or Compressed


@dataclass(frozen=True)
class MultiDimArray:
    shape: tuple[int, ...]  # numpy order
    array: TypedArray

    def encoded(self) -> tuple[str, Any]:
        """(codecs encoding, buffer) of this array; BadMessage for an unknown compression."""
        payload = self.array.data
        if isinstance(payload, Compressed):
            encoding = COMPRESSION_NAMES.get(payload.algorithm)
            if encoding is None:
                raise BadMessage(f"unknown compression {payload.algorithm!r}", reason="unknown_encoding")
            if encoding == "bslz4" and payload.elem_size != np.dtype(self.array.dtype).itemsize:
                raise BadMessage(f"bslz4 element size {payload.elem_size} does not fit {self.array.dtype}",
                                 reason="unknown_encoding")
            return encoding, payload.data
        return "raw", payload

    def decode(self) -> np.ndarray:
        encoding, data = self.encoded()
        return codecs.decode_buffer(data, self.shape, self.array.dtype, encoding)


@dataclass(frozen=True)
class V2Start:
    series_id: int
    series_unique_id: str
    fields: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class V2Image:
    series_id: int
    series_unique_id: str
    image_id: int
    data: dict[str, MultiDimArray] = field(repr=False)  # channel -> array, in message order
    start_time_s: float | None = None
    stop_time_s: float | None = None
    real_time_s: float | None = None
    user_data: Any = None


@dataclass(frozen=True)
class V2End:
    series_id: int
    series_unique_id: str



def _tag_hook(a: Any, b: Any, payloads: dict[bytes, memoryview] | None = None) -> Any:
    # cbor2 >= 6 calls hook(tag, immutable); cbor2 5 calls hook(decoder, tag). payloads: the
    # byte strings `cbor_splice.split` took out, by placeholder (popped as they are put back)
    tag = a if isinstance(a, cbor2.CBORTag) else b
    value = tag.value
    if tag.tag == 56500:
        if not (isinstance(value, Sequence) and len(value) == 3 and isinstance(value[0], str)
                and isinstance(value[1], int) and isinstance(value[2], (bytes, bytearray))):
            raise BadMessage("tag 56500 is not [algorithm, element size, bytes]", reason="malformed_cbor")
        return Compressed(value[0], value[1], _put_back(value[2], payloads))
    if tag.tag in TYPED_ARRAY_TAGS:
        if not isinstance(value, (bytes, bytearray, Compressed)):
            raise BadMessage(f"typed array tag {tag.tag} holds {type(value).__name__}", reason="malformed_cbor")
        return TypedArray(TYPED_ARRAY_TAGS[tag.tag], _put_back(value, payloads))
    if tag.tag == 40:
        if not (isinstance(value, Sequence) and len(value) == 2 and isinstance(value[1], TypedArray)
                and isinstance(value[0], Sequence) and all(isinstance(n, int) and 0 < n <= MAX_WHOLE
                                                           for n in value[0])):
            raise BadMessage("tag 40 is not [dims, typed array]", reason="malformed_cbor")
        return MultiDimArray(tuple(int(n) for n in value[0]), value[1])
    return tag


def _put_back(value: Any, payloads: dict[bytes, memoryview] | None) -> Any:
    if payloads and isinstance(value, bytes) and value in payloads:
        return payloads.pop(value)
    return value


def loads(buf: Any, max_bytes: int) -> dict[str, Any]:
    """Decode one CBOR message map, bounded: at most `max_bytes` and MAX_DEPTH nesting levels.

    The compressed frames and arrays of tags 56500 and RFC 8746 are views of `buf`, not copies
    (`cbor_splice.split`, for byte strings of SPLICE_BYTES and more), when every such string
    is one of those; else cbor2 decodes the whole message, and they are bytes."""
    view = memoryview(buf).cast("B")
    if view.nbytes > max_bytes:
        raise BadMessage(f"message of {view.nbytes} bytes exceeds {max_bytes}", reason="oversized_message")
    split = cbor_splice.split(view, SPLICE_BYTES, MAX_DEPTH) if view.nbytes >= SPLICE_BYTES else None
    if split is not None:
        small, payloads = split
        try:
            msg = cbor2.loads(small, tag_hook=lambda a, b: _tag_hook(a, b, payloads), max_depth=MAX_DEPTH)
        except Exception:  # any error: the whole message is decoded below, which reports it as before
            payloads = None
        if payloads is not None and not payloads:  # every large string was put back where it belongs
            return _message_map(msg)
    try:
        msg = cbor2.loads(view, tag_hook=_tag_hook, max_depth=MAX_DEPTH)
    except BadMessage:
        raise
    except Exception as exc:  # cbor2 raises CBORDecodeError, ValueError, TypeError, ... on garbage
        cause = exc.__cause__ if isinstance(exc.__cause__, BadMessage) else None
        if cause is not None:
            raise cause from exc
        raise BadMessage(f"CBOR does not parse: {exc}", reason="malformed_cbor") from exc
    return _message_map(msg)


def _message_map(msg: Any) -> dict[str, Any]:
    if isinstance(msg, cbor2.CBORTag) and msg.tag == 55799:
        msg = msg.value
    if not isinstance(msg, Mapping):
        raise BadMessage(f"CBOR message is a {type(msg).__name__}, not a map", reason="malformed_cbor")
    return dict(msg)


def looks_like_v2(first_part: Any) -> bool:
    """True if a message part starts like a stream v2 message (self-describe tag or a CBOR map)."""
    head = bytes(memoryview(first_part)[:3])
    return head == SELF_DESCRIBE or (len(head) > 0 and 0xA0 <= head[0] <= 0xBF)


def _seconds(value: Any) -> float | None:
    """A [numerator, denominator] time in seconds, or None (not such a pair, or past a float)."""
    if isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int) for v in value) and value[1] > 0:
        try:
            return value[0] / value[1]
        except OverflowError:
            return None
    return None


def _uint(msg: Mapping[str, Any], key: str) -> int:
    value = msg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WHOLE:
        raise BadMessage(f"field {key!r} is {value!r:.40}, not a 63-bit unsigned integer", reason="malformed_cbor")
    return value


def parse_message(buf: Any, max_bytes: int = 1 << 30) -> V2Start | V2Image | V2End:
    """Parse one v2 message; BadMessage with reason unknown_type / malformed_cbor / ...."""
    msg = loads(buf, max_bytes)
    kind = msg.get("type")
    if kind not in ("start", "image", "end"):
        raise BadMessage(f"unknown message type {kind!r}", reason="unknown_type")
    series_id = _uint(msg, "series_id")
    unique = msg.get("series_unique_id", str(series_id))
    if not isinstance(unique, str) or header_text(unique) != unique:  # a series' name in every output
        raise BadMessage("series_unique_id is not a text string (of at most 1024 characters)", reason="malformed_cbor")
    if kind == "end":
        return V2End(series_id, unique)
    if kind == "start":
        return V2Start(series_id, unique, msg)
    data = msg.get("data")
    if not isinstance(data, Mapping) or not data or not all(
            isinstance(k, str) and isinstance(v, MultiDimArray) and len(v.shape) == 2 for k, v in data.items()):
        raise BadMessage("image data is not a map of channel -> 2-D array", reason="malformed_cbor")
    return V2Image(series_id, unique, _uint(msg, "image_id"), dict(data),
                   start_time_s=_seconds(msg.get("start_time")), stop_time_s=_seconds(msg.get("stop_time")),
                   real_time_s=_seconds(msg.get("real_time")), user_data=msg.get("user_data"))


def _num(msg: Mapping[str, Any], key: str, default: float = 0.0) -> float:
    value = msg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadHeader(f"start field {key!r} is {value!r}, not a finite number", reason="bad_header")
    return float(value)


def _per_channel_array(msg: Mapping[str, Any], key: str, channel: str) -> np.ndarray | None:
    arrays = msg.get(key)
    if not isinstance(arrays, Mapping) or channel not in arrays:
        return None
    arr = arrays[channel]
    if not isinstance(arr, MultiDimArray):
        raise BadHeader(f"{key}[{channel}] is not an array", reason="bad_header")
    try:
        return arr.decode()
    except BadFrame as exc:
        raise BadHeader(f"{key}[{channel}]: {exc}", reason="bad_header") from exc


def start_pixel_type(fields: Mapping[str, Any]) -> str | None:
    """The pixel type a start message names (`image_dtype`, else `bit_depth_image`), or None
    when it names none that images have (the first image then tells)."""
    name = fields.get("image_dtype")
    if isinstance(name, str) and name in ("uint8", "uint16", "uint32", "int32", "float32"):
        return np.dtype(name).newbyteorder("<").str
    depth = fields.get("bit_depth_image")
    return BIT_DEPTH_TYPES[depth] if type(depth) is int and depth in BIT_DEPTH_TYPES else None


def series_info(start: V2Start, channel: str | None = None, dtype: str | None = None) -> SeriesInfo:
    """Normalise a start message into SeriesInfo (mm, Angstrom, degrees, seconds; numpy shapes).

    `channel` selects the pixel mask / flatfield (default the first channel). `dtype` is used
    when the start message does not name the pixel type (`image_dtype` / `bit_depth_image`).
    """
    m = start.fields
    channels = tuple(c for c in m.get("channels", ()) if isinstance(c, str) and header_text(c) == c) if isinstance(
        m.get("channels"), Sequence) else ()
    channel = channel or (channels[0] if channels else "threshold_1")
    width, height = int(_num(m, "image_size_x")), int(_num(m, "image_size_y"))
    if width <= 0 or height <= 0:
        raise BadHeader("start message lacks image_size_x/y", reason="bad_header")
    if dtype is None:
        dtype = start_pixel_type(m) or "<u4"
    wavelength = _num(m, "incident_wavelength")
    if wavelength <= 0 and _num(m, "incident_energy") > 0:
        wavelength = HC_EV_A / _num(m, "incident_energy")
    translation = m.get("detector_translation")
    distance_m = _num(m, "detector_distance", 0.0)
    if distance_m == 0.0 and isinstance(translation, Sequence) and len(translation) == 3:
        distance_m = _num({"z": translation[2]}, "z")
    gonio = m.get("goniometer") if isinstance(m.get("goniometer"), Mapping) else {}
    axes = {a: gonio[a] for a in SCAN_AXES if isinstance(gonio.get(a), Mapping)}
    angles = {a: (v.get("start"), v.get("increment")) for a, v in axes.items()}
    if "omega" in axes:  # the usual scan: strict
        angles["omega"] = (_num(axes["omega"], "start"), _num(axes["omega"], "increment"))
    axis, scan_start, increment = rotation_scan(angles)
    saturation = m.get("saturation_value")
    raw = {k: v for k, v in m.items() if k not in ("pixel_mask", "flatfield", "countrate_correction_lookup_table")}
    raw["scan_axis"] = axis
    two_theta = gonio.get("two_theta")
    raw["time_tick_s"] = 1.0 / TIME_BASE
    table = m.get("countrate_correction_lookup_table")
    if isinstance(table, TypedArray) and not isinstance(table.data, Compressed):
        raw["countrate_table"] = np.frombuffer(table.data, dtype=table.dtype).copy()
    return SeriesInfo(
        series_id=start.series_unique_id,
        source="stream-v2",
        image_shape=(height, width),
        dtype=dtype,
        n_images=int(_num(m, "number_of_images")) or None,
        detector_description=header_text(m.get("detector_description", "")),
        detector_serial=header_text(m.get("detector_serial_number", "")),
        sensor_material=header_text(m.get("sensor_material", "")),
        sensor_thickness_mm=_num(m, "sensor_thickness") * 1000.0,
        pixel_size_mm=(_num(m, "pixel_size_x", 75e-6) * 1000.0, _num(m, "pixel_size_y", 75e-6) * 1000.0),
        beam_centre_px=(_num(m, "beam_center_x"), _num(m, "beam_center_y")),
        distance_mm=distance_m * 1000.0,
        wavelength_A=wavelength,
        omega_start_deg=scan_start,
        omega_increment_deg=increment,
        two_theta_deg=finite_or_zero(two_theta.get("start")) if isinstance(two_theta, Mapping) else 0.0,
        count_time_s=_num(m, "count_time"),
        frame_time_s=_num(m, "frame_time"),
        saturation_value=int(saturation) if isinstance(saturation, int) and not isinstance(saturation, bool) else None,
        underload_value=optional_int(m.get("underload_value")),
        bit_depth_image=8 * np.dtype(dtype).itemsize,
        countrate_correction_applied=m.get("countrate_correction_enabled") if isinstance(
            m.get("countrate_correction_enabled"), bool) else None,
        flatfield_applied=m.get("flatfield_enabled") if isinstance(m.get("flatfield_enabled"), bool) else None,
        pixel_mask=_per_channel_array(m, "pixel_mask", channel),
        flatfield=_per_channel_array(m, "flatfield", channel),
        channels=channels,
        raw=raw,
    )


def encoded_frames(image: V2Image, series_id: str, channels: Sequence[str] = (),
                   received_at: float = 0.0) -> list[EncodedFrame]:
    """EncodedFrames of the chosen channels of an image message (default: its first channel)."""
    wanted = list(channels) if channels else [next(iter(image.data))]
    frames = []
    for name in wanted:
        arr = image.data.get(name)
        if arr is None:
            continue
        encoding, data = arr.encoded()
        frames.append(EncodedFrame(series_id, image.image_id, (arr.shape[0], arr.shape[1]), arr.array.dtype,
                                   encoding, data, channel=name, start_time_s=image.start_time_s,
                                   stop_time_s=image.stop_time_s, real_time_s=image.real_time_s,
                                   received_at=received_at))
    return frames
