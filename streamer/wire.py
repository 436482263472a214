"""Internal messages between receiver, workers and collector (never the detector protocol).

A message is a ZeroMQ multipart: part 0 is a msgpack map (the header), parts 1..n are raw
array buffers sent without copying (`send_multipart(copy=False)`) and read back with
`np.frombuffer` (no copy either). Pixels never go inside the msgpack map.

Header map (wire version 1)::

    {"v": 1, "kind": KIND, "body": {...}, "arrays": [[name, dtype, [dims...]], ...]}

`dtype` always carries an explicit byte order ("<u4", "|u1"); `arrays[i]` describes part i+1.
Sizes are bounded (header, number of parts, bytes per array) and every violation, an unknown
version or an unknown kind raises `WireError` (a `BadMessage`, so it is counted, never a crash).
Never pickle.

Kinds:
    series       SeriesInfo (pixel_mask/flatfield as arrays), collector -> worker on request
    frame        EncodedFrame + dispatch sequence number, receiver -> workers (one data part,
                 or none and its store_offset/store_size in the shared frame store)
    result       per-image result of one frame (scalars in body, spot columns as arrays)
    dropped      a frame a worker could not use, with its reason
    hello        worker -> collector: "which endpoints?"; reply `endpoints`
    endpoints    collector -> worker: frames / results / model URLs, the shared frame store
    joining      worker -> collector: about to connect for frames, and whether it mapped the
                 store (if not, frames are sent as bytes from then on); reply `welcome`
    series_request  worker -> collector: "send me the header of series X"
    unknown_series  collector -> worker: no such series
    model        collector -> workers: the current crystal model (indexing), by series
    dispatched / received_drop / series_start / series_end / stop: receiver -> collector
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from streamer.errors import BadMessage
from streamer.series import EncodedFrame, SeriesInfo

WIRE_VERSION = 1
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_PARTS = 256
MAX_ARRAY_BYTES = 1 << 30  # a 16M uint32 frame is 72 MB; 1 GiB bounds any one buffer
MAX_NDIM = 4
_NUMERIC_KINDS = "uifb"

KINDS = frozenset(
    {
        "series",
        "frame",
        "result",
        "dropped",
        "hello",
        "endpoints",
        "joining",
        "welcome",
        "series_request",
        "unknown_series",
        "model",
        "dispatched",
        "received_drop",
        "series_start",
        "series_end",
        "stop",
    }
)


class WireError(BadMessage):
    """An internal message that cannot be read (version, layout, size)."""

    reason = "wire_malformed"


@dataclass(frozen=True)
class Message:
    """A decoded internal message: its kind, scalar body and named arrays (read-only views)."""

    kind: str
    body: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)


_CHECKED_DTYPES: dict[str, np.dtype] = {}  # dtype strings already checked (a handful per run)


def _check_dtype(text: Any) -> np.dtype:
    dtype = _CHECKED_DTYPES.get(text) if isinstance(text, str) else None
    if dtype is not None:  # every result message has a dozen arrays: parse each dtype string once
        return dtype
    if not isinstance(text, str) or len(text) < 2 or text[0] not in "<>|":
        raise WireError(f"dtype {text!r} lacks an explicit byte order")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise WireError(f"unknown dtype {text!r}") from exc
    if dtype.kind not in _NUMERIC_KINDS:
        raise WireError(f"dtype {text!r} is not numeric")
    if len(_CHECKED_DTYPES) < 256:
        _CHECKED_DTYPES[text] = dtype
    return dtype


def explicit_dtype(dtype: Any) -> str:
    """numpy dtype -> string with explicit byte order ("<u4"; "|u1" for single bytes)."""
    dt = np.dtype(dtype)
    if dt.byteorder == "=":
        dt = dt.newbyteorder("<" if np.little_endian else ">")
    return dt.str


def encode(kind: str, body: Mapping[str, Any] | None = None, arrays: Mapping[str, Any] | None = None) -> list[Any]:
    """Build the parts of one message; send them with `send_multipart(parts, copy=False)`.

    `arrays` values are numpy arrays (made C-contiguous) or raw buffers (bytes, memoryview),
    which travel as "|u1". No array is copied unless it was not contiguous.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}")
    specs: list[list[Any]] = []
    parts: list[Any] = [b""]
    for name, value in (arrays or {}).items():
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            specs.append([name, explicit_dtype(arr.dtype), list(arr.shape)])
            parts.append(memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b"")
        else:
            view = memoryview(value).cast("B")
            specs.append([name, "|u1", [view.nbytes]])
            parts.append(view)
    header = msgpack.packb({"v": WIRE_VERSION, "kind": kind, "body": dict(body or {}), "arrays": specs}, use_bin_type=True)
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"message header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    parts[0] = header
    return parts


def _buffer(part: Any) -> memoryview:
    buf = getattr(part, "buffer", None)  # zmq.Frame received with copy=False
    return memoryview(part if buf is None else buf).cast("B")


def decode(parts: Sequence[Any]) -> Message:
    """Parse received parts (zmq.Frame or bytes) into a `Message`; arrays view the buffers."""
    if not parts:
        raise WireError("empty message")
    if len(parts) > MAX_PARTS:
        raise WireError(f"{len(parts)} parts exceed the bound of {MAX_PARTS}", reason="wire_too_large")
    head = _buffer(parts[0])
    if head.nbytes > MAX_HEADER_BYTES:
        raise WireError(f"header of {head.nbytes} bytes exceeds {MAX_HEADER_BYTES}", reason="wire_too_large")
    try:
        header = msgpack.unpackb(head, raw=False, strict_map_key=True, max_bin_len=MAX_HEADER_BYTES)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as exc:
        raise WireError(f"header does not parse as msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise WireError("header is not a map")
    version = header.get("v")
    if version != WIRE_VERSION:
        raise WireError(f"unknown wire version {version!r} (this build reads {WIRE_VERSION})", reason="wire_version")
    kind, body, specs = header.get("kind"), header.get("body"), header.get("arrays")
    if kind not in KINDS:
        raise WireError(f"unknown message kind {kind!r}", reason="wire_unknown_kind")
    if not isinstance(body, dict) or not isinstance(specs, list):
        raise WireError("header lacks a body map or an arrays list")
    if len(specs) != len(parts) - 1:
        raise WireError(f"header describes {len(specs)} arrays but {len(parts) - 1} buffers arrived")
    arrays: dict[str, np.ndarray] = {}
    for spec, part in zip(specs, parts[1:]):
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[2], list)):
            raise WireError(f"bad array description {spec!r}")
        name, dtype, shape = spec[0], _check_dtype(spec[1]), spec[2]
        if len(shape) > MAX_NDIM or not all(isinstance(n, int) and 0 <= n <= MAX_ARRAY_BYTES for n in shape):
            raise WireError(f"bad shape {shape!r} for array {name!r}")
        nbytes = math.prod(shape) * dtype.itemsize  # exact (Python ints), and ~10x faster than np.prod
        if nbytes > MAX_ARRAY_BYTES:
            raise WireError(f"array {name!r} of {nbytes} bytes exceeds the bound", reason="wire_too_large")
        buf = _buffer(part)
        if buf.nbytes != nbytes:
            raise WireError(f"array {name!r}: {buf.nbytes} bytes arrived, {nbytes} described")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
        if arr.flags.writeable:
            arr.setflags(write=False)
        arrays[name] = arr
    return Message(kind, body, arrays)


# ---------------------------------------------------------------- typed conversions

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


def encode_frame(frame: EncodedFrame, seq: int, stored_at: int | None = None) -> list[Any]:
    """EncodedFrame -> parts: timing and layout in the header, compressed bytes as one part.

    `seq` is the dispatch sequence number within the series (0, 1, 2, ... without gaps),
    which the collector uses to restore frame order. With `stored_at`, the bytes stay in the
    shared frame store (`streamer.frame_store`) at that offset and only the header is sent.
    """
    body = {
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


def frame_from(message: Message) -> WorkFrame:
    b = message.body
    try:
        shape = tuple(int(n) for n in b["shape"])
        _check_dtype(b["dtype"])
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
    return WorkFrame(frame, seq, stored)


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
    items = ((f.name, getattr(result, f.name)) for f in dataclasses.fields(result)) if dataclasses.is_dataclass(result) \
        else dict(result).items()
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
