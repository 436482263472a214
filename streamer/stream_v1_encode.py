"""DECTRIS SIMPLON stream v1, the detector's side: the parts a detector sends for a series.

Used by the detector sender (simulated sweeps, replays) and the tests; the layouts, units and
time ticks are those `streamer.stream_v1` parses (its docstring describes them), so a message
made here and parsed there gives back the series and frames it was made from.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from streamer.series import EncodedFrame, SeriesInfo
from streamer.stream_v1 import END, HC_KEV_A, HEADER, HEADER_PARTS, IMAGE, PIXEL_TYPES


def _json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def config_of(series: SeriesInfo) -> dict[str, Any]:
    """The SIMPLON detector configuration of `series`: the received one for v1 sources, else built."""
    if isinstance(series.raw.get("config"), dict) and series.source == "stream-v1":
        return dict(series.raw["config"])
    height, width = series.image_shape
    config = {
        "beam_center_x": series.beam_centre_px[0],
        "beam_center_y": series.beam_centre_px[1],
        "bit_depth_image": series.bit_depth_image or 8 * np.dtype(series.dtype).itemsize,
        "count_time": series.count_time_s,
        "countrate_correction_applied": bool(series.countrate_correction_applied),
        "countrate_correction_count_cutoff": series.saturation_value,
        "description": series.detector_description,
        "detector_distance": series.distance_mm / 1000.0,
        "detector_number": series.detector_serial,
        "flatfield_correction_applied": bool(series.flatfield_applied),
        "frame_time": series.frame_time_s,
        "nimages": series.n_images or 0,
        "ntrigger": 1,
        "omega_increment": series.omega_increment_deg,
        "omega_start": series.omega_start_deg,
        "photon_energy": HC_KEV_A * 1000.0 / series.wavelength_A if series.wavelength_A > 0 else 0.0,
        "sensor_material": series.sensor_material,
        "sensor_thickness": series.sensor_thickness_mm / 1000.0,
        "software_version": "1.8.0",
        "wavelength": series.wavelength_A,
        "x_pixel_size": series.pixel_size_mm[0] / 1000.0,
        "x_pixels_in_detector": width,
        "y_pixel_size": series.pixel_size_mm[1] / 1000.0,
        "y_pixels_in_detector": height,
    }
    if np.dtype(series.dtype).kind == "i":  # SIMPLON has no signed pixel type: the image's says it,
        del config["bit_depth_image"]  # and the receiver takes it from the first image (as for an EIGER 1)
    if series.underload_value is not None:  # not a DECTRIS key: NXmx's, for counts below 0 (`replay` of SMV)
        config["underload_value"] = int(series.underload_value)
    return config


def _array_parts(htype: str, array: np.ndarray | None) -> list[Any]:
    if array is None:
        return [_json({"htype": htype, "shape": [], "type": "undefined"}), b""]
    arr = np.ascontiguousarray(array)
    little = arr.astype(arr.dtype.newbyteorder("<")).tobytes()  # SIMPLON arrays are little-endian
    return [_json({"htype": htype, "shape": list(arr.shape[::-1]), "type": type_name(arr.dtype.str)}), little]


def encode_header(series: SeriesInfo, series_number: int, header_detail: str = "basic",
                  appendix: Any = None) -> list[Any]:
    """The parts of a `dheader-1.0` message announcing `series`."""
    if header_detail not in HEADER_PARTS:
        raise ValueError(f"header_detail must be one of {sorted(HEADER_PARTS)}")
    parts: list[Any] = [_json({"header_detail": header_detail, "htype": HEADER, "series": series_number})]
    if header_detail != "none":
        parts.append(_json(config_of(series)))
    if header_detail == "all":
        table = series.raw.get("countrate_table")
        parts += _array_parts("dflatfield-1.0", series.flatfield)
        parts += _array_parts("dpixelmask-1.0", series.pixel_mask)
        parts += _array_parts("dcountrate_table-1.0", table if isinstance(table, np.ndarray) else None)
    if appendix is not None:
        parts.append(appendix if isinstance(appendix, (bytes, bytearray, memoryview)) else _json(appendix))
    return parts


def v1_encoding_name(encoding: str, dtype: str) -> str:
    """The v1 `encoding` string of a codecs encoding ("bslz4" + "<u2" -> "bs16-lz4<")."""
    dt = np.dtype(dtype)
    order = ">" if dt.byteorder == ">" else "<"
    if encoding == "bslz4":
        return f"bs{8 * dt.itemsize}-lz4{order}"
    if encoding == "lz4":
        return f"lz4{order}"
    if encoding == "raw":
        return order
    raise ValueError(f"encoding {encoding!r} has no stream v1 form")


def type_name(dtype: str) -> str:
    return {v: k for k, v in PIXEL_TYPES.items()}[np.dtype(dtype).str[1:]]


def encode_image(frame: EncodedFrame, series_number: int, times_ticks: tuple[int, int, int],
                 appendix: Any = None) -> list[Any]:
    """The parts of a `dimage-1.0` message; the blob is `frame.data` itself (never copied).

    `times_ticks` = (start_time, stop_time, real_time) in detector ticks.
    """
    height, width = frame.shape
    blob = frame.data
    parts: list[Any] = [
        _json({"frame": frame.image_number, "hash": "", "htype": IMAGE, "series": series_number}),
        _json({"encoding": v1_encoding_name(frame.encoding, frame.dtype), "htype": "dimage_d-1.0",
               "shape": [width, height], "size": memoryview(blob).nbytes, "type": type_name(frame.dtype)}),
        blob,
        _json({"htype": "dconfig-1.0", "real_time": times_ticks[2], "start_time": times_ticks[0],
               "stop_time": times_ticks[1]}),
    ]
    if appendix is not None:
        parts.append(appendix if isinstance(appendix, (bytes, bytearray, memoryview)) else _json(appendix))
    return parts


def encode_end(series_number: int, appendix: Any = None) -> list[Any]:
    parts: list[Any] = [_json({"htype": END, "series": series_number})]
    if appendix is not None:
        parts.append(appendix if isinstance(appendix, (bytes, bytearray, memoryview)) else _json(appendix))
    return parts
