"""The pipeline's typed messages: series headers, frames for the workers, per-frame results.

Each converts to and from a `streamer.wire` message (kinds series, frame, result / dropped):
scalars in the msgpack body, arrays (pixel mask, compressed frame, spot columns, profiles) as
parts of their own, so a frame's bytes and a result's columns are never copied into msgpack.
A message that does not make a valid object raises `WireError` (counted, never a crash).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.series import EncodedFrame, SeriesInfo
from streamer.wire import Message, WireError, check_dtype, encode

_SERIES_ARRAYS = ("pixel_mask", "flatfield")
_SERIES_HINTS = typing.get_type_hints(SeriesInfo)


def _is_tuple_type(hint: Any) -> bool:
    if typing.get_origin(hint) is tuple:
        return True
    return any(typing.get_origin(arg) is tuple for arg in typing.get_args(hint))


def _plain(value: Any) -> Any:
    """Dataclass field value -> msgpack-safe value (tuples as lists, numpy scalars as Python)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_series(series: SeriesInfo) -> list[Any]:
    """SeriesInfo -> parts. `raw` (the header as received) stays with the receiver."""
    body = {}
    for f in dataclasses.fields(SeriesInfo):
        if f.name in _SERIES_ARRAYS or f.name == "raw":
            continue
        body[f.name] = _plain(getattr(series, f.name))
    arrays = {name: getattr(series, name) for name in _SERIES_ARRAYS if getattr(series, name) is not None}
    return encode("series", body, arrays)


def series_from(message: Message) -> SeriesInfo:
    """The SeriesInfo of a `series` message (unknown fields are a WireError)."""
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(SeriesInfo)}
    for key, value in message.body.items():
        if key not in names or key in _SERIES_ARRAYS or key == "raw":
            raise WireError(f"series message has an unknown field {key!r}")
        if isinstance(value, list) and _is_tuple_type(_SERIES_HINTS[key]):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[key] = value
    for name in _SERIES_ARRAYS:
        if name in message.arrays:
            kwargs[name] = np.array(message.arrays[name])  # own copy: SeriesInfo freezes it
    try:
        return SeriesInfo(**kwargs)
    except TypeError as exc:
        raise WireError(f"series message incomplete: {exc}") from exc


def encode_frame(frame: EncodedFrame, seq: int, stored_at: int | None = None, run: str = "") -> list[Any]:
    """EncodedFrame -> parts: timing and layout in the header, compressed bytes as one part.

    `seq` is the dispatch sequence number within the series (0, 1, 2, ... without gaps),
    which the collector uses to restore frame order. With `stored_at`, the bytes stay in the
    shared frame store (`streamer.frame_store`) at that offset and only the header is sent.
    `run`: the token of the run that sent it, so that a worker left over from an earlier run
    (ZeroMQ reconnects it silently to a new run on the same ports) notices and joins anew.
    """
    body = {
        "run": run,
        "series_id": frame.series_id,
        "seq": int(seq),
        "image_number": int(frame.image_number),
        "shape": list(frame.shape),
        "dtype": frame.dtype,
        "encoding": frame.encoding,
        "channel": frame.channel,
        "start_time_s": frame.start_time_s,
        "stop_time_s": frame.stop_time_s,
        "real_time_s": frame.real_time_s,
        "received_at": frame.received_at,
    }
    if stored_at is not None:
        body["store_offset"] = int(stored_at)
        body["store_size"] = memoryview(frame.data).nbytes
        return encode("frame", body)
    return encode("frame", body, {"data": frame.data})


@dataclass(frozen=True)
class WorkFrame:
    """A frame as a worker gets it: the EncodedFrame and its dispatch sequence number."""

    frame: EncodedFrame
    seq: int
    stored: tuple[int, int] | None = None  # (offset, size) in the shared frame store; data is then empty
    run: str = ""  # the sending run's token ("" from a sender that has none)


def frame_from(message: Message) -> WorkFrame:
    b = message.body
    try:
        shape = tuple(int(n) for n in b["shape"])
        check_dtype(b["dtype"])
        stored = (int(b["store_offset"]), int(b["store_size"])) if "store_offset" in b else None
        frame = EncodedFrame(
            series_id=str(b["series_id"]),
            image_number=int(b["image_number"]),
            shape=shape,  # type: ignore[arg-type]
            dtype=str(b["dtype"]),
            encoding=str(b["encoding"]),
            data=b"" if stored is not None else message.arrays["data"],
            channel=str(b.get("channel", "")),
            start_time_s=b.get("start_time_s"),
            stop_time_s=b.get("stop_time_s"),
            real_time_s=b.get("real_time_s"),
            received_at=float(b.get("received_at") or 0.0),
        )
        seq = int(b["seq"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"frame message incomplete: {exc!r}") from exc
    if len(shape) != 2:
        raise WireError(f"frame shape {shape} is not 2D")
    return WorkFrame(frame, seq, stored, str(b.get("run") or ""))


@dataclass(frozen=True)
class FrameResult:
    """What a worker reports for one frame: statistics and spot columns, or a drop reason.

    `stats` holds the scalar per-image figures (names as in per_image.csv); `profiles` 1D
    arrays such as the radial background profile; `spots` the spot table as columns
    (x_px, y_px fast/slow with pixel centre +0.5, intensity, n_pixels, ...). Times in seconds.
    """

    series_id: str
    seq: int
    image_number: int
    worker: str
    decode_s: float = 0.0
    analyse_s: float = 0.0
    stats: Mapping[str, Any] = field(default_factory=dict)
    profiles: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    spots: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)
    drop_reason: str | None = None
    drop_message: str = ""

    @property
    def dropped(self) -> bool:
        return self.drop_reason is not None


def _columns(table: Any) -> dict[str, np.ndarray]:
    """A columnar spot table (dict of arrays, structured array, or dataclass of arrays) -> columns."""
    if table is None:
        return {}
    if isinstance(table, np.ndarray) and table.dtype.names:
        return {name: np.ascontiguousarray(table[name]) for name in table.dtype.names}
    if isinstance(table, Mapping):
        return {str(k): np.asarray(v) for k, v in table.items()}
    if dataclasses.is_dataclass(table):
        return {f.name: np.asarray(getattr(table, f.name)) for f in dataclasses.fields(table)
                if isinstance(getattr(table, f.name), np.ndarray)}
    if hasattr(table, "columns") and callable(getattr(table, "columns")):
        return {str(k): np.asarray(v) for k, v in table.columns().items()}
    raise TypeError(f"cannot read spot table of type {type(table).__name__}")


def split_result(result: Any) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """An ImageResult-like dataclass -> (scalar stats, 1D/2D arrays, spot columns).

    Scalars are numbers, strings, bools or None; small tuples/lists of numbers (e.g. ice ring
    resolutions) travel as lists in the body; ndarrays as buffers; the `spots` field as columns.
    """
    stats: dict[str, Any] = {}
    profiles: dict[str, np.ndarray] = {}
    spots: dict[str, np.ndarray] = {}
    if dataclasses.is_dataclass(result):
        items = ((f.name, getattr(result, f.name)) for f in dataclasses.fields(result))
    else:
        items = dict(result).items()
    for name, value in items:
        if name == "spots":
            spots = _columns(value)
        elif isinstance(value, np.ndarray):
            profiles[name] = value
        else:
            stats[name] = _plain(value)
    return stats, profiles, spots


def encode_result(result: FrameResult) -> list[Any]:
    body = {
        "series_id": result.series_id,
        "seq": result.seq,
        "image_number": result.image_number,
        "worker": result.worker,
        "decode_s": result.decode_s,
        "analyse_s": result.analyse_s,
        "stats": {k: _plain(v) for k, v in result.stats.items()},
        "profiles": list(result.profiles),
        "drop_reason": result.drop_reason,
        "drop_message": result.drop_message,
    }
    arrays = {f"p.{k}": v for k, v in result.profiles.items()}
    arrays.update({f"s.{k}": v for k, v in result.spots.items()})
    return encode("dropped" if result.dropped else "result", body, arrays)


def result_from(message: Message) -> FrameResult:
    b = message.body
    try:
        return FrameResult(
            series_id=str(b["series_id"]),
            seq=int(b["seq"]),
            image_number=int(b["image_number"]),
            worker=str(b.get("worker", "")),
            decode_s=float(b.get("decode_s") or 0.0),
            analyse_s=float(b.get("analyse_s") or 0.0),
            stats=dict(b.get("stats") or {}),
            profiles={k[2:]: v for k, v in message.arrays.items() if k.startswith("p.")},
            spots={k[2:]: v for k, v in message.arrays.items() if k.startswith("s.")},
            drop_reason=None if message.kind == "result" else str(b.get("drop_reason") or "bad_frame"),
            drop_message=str(b.get("drop_message") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"result message incomplete: {exc!r}") from exc


MAX_CREDIT = 1 << 16  # one grant never exceeds this (a worker's queue depth is a handful of frames)


def encode_credit(worker: str, n: int) -> list[Any]:
    """A worker's grant: `n` more frames may be sent to it (credit-based dispatch)."""
    return encode("credit", {"worker": worker, "n": int(n)})


def credit_from(message: Message) -> int:
    """The number of frames a `credit` message grants (1..MAX_CREDIT), or WireError."""
    n = message.body.get("n")
    if message.kind != "credit" or not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= MAX_CREDIT:
        raise WireError(f"not a credit grant: {message.kind} {n!r}")
    return n
