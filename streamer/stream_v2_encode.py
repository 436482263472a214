"""DECTRIS stream v2, the detector's side: the CBOR start, image and end messages a detector sends.

Used by the detector sender (simulated sweeps, replays) and the tests; the tags, units and
time rationals are those `streamer.stream_v2` parses (its docstring describes them), so a
message made here and parsed there gives back the series and frames it was made from. Image
messages splice the pixels in after encoding (`streamer.cbor_splice`): each copied once.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cbor2
import numpy as np

from streamer import cbor_splice
from streamer.series import EncodedFrame, SeriesInfo
from streamer.stream_v2 import HC_EV_A, TIME_BASE, TYPED_ARRAY_TAGS

TAG_OF_DTYPE = {v: k for k, v in TYPED_ARRAY_TAGS.items() if k != 68}  # 68: uint8 clamped, read only

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now_s: float | None = None) -> str:
    """A 26-character ULID (48-bit milliseconds since the epoch + 80 random bits, Crockford base32)."""
    ms = int((time.time() if now_s is None else now_s) * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


def dumps(msg: dict[str, Any], payloads: Sequence[Any] = ()) -> bytes:
    """A message as a detector sends it: self-describe tag, then the map with `type` first.
    `payloads` are byte strings that `cbor_splice.placeholder`s in `msg` stand for, each
    copied once into the message."""
    tagged = cbor2.CBORTag(55799, msg)
    return cbor_splice.dumps(tagged, payloads) if payloads else cbor2.dumps(tagged)


def ticks(seconds: float | None) -> list[int]:
    """A time in seconds as the rational [ticks, 50000000] a detector writes."""
    return [int(round((seconds or 0.0) * TIME_BASE)), TIME_BASE]


def multidim(shape: Sequence[int], dtype: str, encoding: str, data: Any) -> cbor2.CBORTag:
    """Tag 40 array of an encoded buffer (codecs encoding name) as a detector sends it."""
    dt = np.dtype(dtype)
    tag = TAG_OF_DTYPE.get(dt.str)
    if tag is None:
        raise ValueError(f"pixel type {dtype} has no RFC 8746 tag")
    payload = data if isinstance(data, bytes) else bytes(memoryview(data))
    if encoding == "bslz4":
        payload = cbor2.CBORTag(56500, ["bslz4", dt.itemsize, payload])
    elif encoding == "lz4-h5":
        payload = cbor2.CBORTag(56500, ["lz4", 0, payload])
    elif encoding != "raw":
        raise ValueError(f"encoding {encoding!r} has no stream v2 form (convert lz4 first)")
    return cbor2.CBORTag(40, [list(shape), cbor2.CBORTag(tag, payload)])


def _array_tag(array: np.ndarray) -> cbor2.CBORTag:
    arr = np.ascontiguousarray(array)
    arr = arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.byteorder == ">" else arr
    return multidim(arr.shape, arr.dtype.str, "raw", arr.tobytes())


def encode_start(series: SeriesInfo, series_number: int, unique_id: str, header_detail: str = "basic",
                 channels: Sequence[str] = ("threshold_1",), user_data: Any = None) -> bytes:
    """A start message for `series`; with header_detail "all" it carries mask, flatfield and table."""
    height, width = series.image_shape
    msg: dict[str, Any] = {
        "type": "start",
        "series_id": series_number,
        "series_unique_id": unique_id,
        "arm_date": _dt.datetime.now(_dt.timezone.utc),
        "beam_center_x": float(series.beam_centre_px[0]),
        "beam_center_y": float(series.beam_centre_px[1]),
        "channels": list(channels),
        "count_time": float(series.count_time_s),
        "countrate_correction_enabled": bool(series.countrate_correction_applied),
        "detector_description": series.detector_description,
        "detector_serial_number": series.detector_serial,
        "detector_translation": [0.0, 0.0, series.distance_mm / 1000.0],
        "flatfield_enabled": bool(series.flatfield_applied),
        "frame_time": float(series.frame_time_s),
        "goniometer": {axis: {"increment": 0.0, "start": 0.0} for axis in ("chi", "kappa", "phi", "two_theta")}
        | {"omega": {"increment": float(series.omega_increment_deg), "start": float(series.omega_start_deg)}},
        "image_dtype": np.dtype(series.dtype).name,
        "image_size_x": width,
        "image_size_y": height,
        "incident_energy": HC_EV_A / series.wavelength_A if series.wavelength_A > 0 else 0.0,
        "incident_wavelength": float(series.wavelength_A),
        "number_of_images": int(series.n_images or 0),
        "pixel_mask_enabled": series.pixel_mask is not None,
        "pixel_size_x": series.pixel_size_mm[0] / 1000.0,
        "pixel_size_y": series.pixel_size_mm[1] / 1000.0,
        "saturation_value": int(series.saturation_value or 0),
        "sensor_material": series.sensor_material,
        "sensor_thickness": series.sensor_thickness_mm / 1000.0,
        "virtual_pixel_interpolation_enabled": False,
    }
    if isinstance(series.raw.get("threshold_energy"), Mapping):
        msg["threshold_energy"] = dict(series.raw["threshold_energy"])
    if series.underload_value is not None:  # not a DECTRIS field: NXmx's, for counts below 0 (`replay` of SMV)
        msg["underload_value"] = int(series.underload_value)
    if header_detail == "all":
        if series.pixel_mask is not None:
            msg["pixel_mask"] = {c: _array_tag(series.pixel_mask.astype("<u4")) for c in channels}
        if series.flatfield is not None:
            msg["flatfield"] = {c: _array_tag(series.flatfield.astype("<f4")) for c in channels}
        table = series.raw.get("countrate_table")
        if isinstance(table, np.ndarray):
            flat = np.ascontiguousarray(table, dtype="<f4").reshape(-1)
            msg["countrate_correction_lookup_table"] = cbor2.CBORTag(85, flat.tobytes())
    if user_data is not None:
        msg["user_data"] = user_data
    return dumps(msg)


def encode_image(frames: Sequence[EncodedFrame], series_number: int, unique_id: str, series_date: _dt.datetime,
                 times_s: tuple[float, float, float], user_data: Any = None) -> bytes:
    """An image message holding `frames` (one per channel, same image) as tag-40 arrays.

    `times_s` = (start, stop, real) in seconds; written as [ticks, 50000000].
    """
    image_id = frames[0].image_number
    # the pixels are spliced in after encoding, each copied once (`cbor_splice`)
    data = {(f.channel or "threshold_1"): multidim(f.shape, f.dtype, f.encoding, cbor_splice.placeholder(i))
            for i, f in enumerate(frames)}
    msg: dict[str, Any] = {
        "type": "image",
        "series_id": series_number,
        "series_unique_id": unique_id,
        "image_id": image_id,
        "real_time": ticks(times_s[2]),
        "series_date": series_date,
        "start_time": ticks(times_s[0]),
        "stop_time": ticks(times_s[1]),
        "data": data,
    }
    if user_data is not None:
        msg["user_data"] = user_data
    return dumps(msg, [f.data for f in frames])


def encode_end(series_number: int, unique_id: str) -> bytes:
    return dumps({"type": "end", "series_id": series_number, "series_unique_id": unique_id})
