"""Internal messages between receiver, workers and collector (never the detector protocol).

A message is a ZeroMQ multipart: part 0 is a msgpack map (the header), parts 1..n are raw
array buffers sent without copying (`send_multipart(copy=False)`) and read back with
`np.frombuffer` (no copy either). Pixels never go inside the msgpack map.

Header map (wire version 3)::

    {"v": 3, "kind": KIND, "body": {...}, "arrays": [[name, dtype, [dims...]], ...]}

`dtype` always carries an explicit byte order ("<u4", "|u1"); `arrays[i]` describes part i+1.
Sizes are bounded (header, number of parts, bytes per array) and every violation, an unknown
version or an unknown kind raises `WireError` (a `BadMessage`, so it is counted, never a crash).
Never pickle. The version changes whenever a build's messages would mislead an older one: version
2 added the workers' heartbeat (`alive`), without which a worker of version 1 would be given up as
silent; version 3 made frame dispatch credit-based (`credit`, on a DEALER/ROUTER pair where
PUSH/PULL was), which a worker of version 2 cannot grant. Builds of different versions refuse
each other's messages with reason wire_version.
The series, frame and result messages as Python objects: `streamer.pipeline_messages`.

Kinds:
    series       SeriesInfo (pixel_mask/flatfield as arrays), collector -> worker on request
    frame        EncodedFrame + dispatch sequence number, receiver -> workers (one data part,
                 or none and its store_offset/store_size in the shared frame store)
    credit       worker -> receiver, on the frames socket: `n` more frames may be sent to it
                 (its queue depth once connected, then one per frame whose result has gone)
    result       per-image result of one frame (scalars in body, spot columns as arrays)
    idle         worker -> collector: no frame for a while (and when this was sent)
    alive        worker -> collector, every second from its own thread: the heartbeat, with
                 the worker's count of messages it could not read, by reason
    dropped      a frame a worker could not use, with its reason
    hello        worker -> collector: "which endpoints?"; reply `endpoints`
    endpoints    collector -> worker: frames / results / model URLs, the shared frame store
    joining      worker -> collector: about to connect for frames, and whether it mapped the
                 store (if not, frames are sent as bytes from then on); reply `welcome`
    refused      collector -> worker: a control message it could not read, and why (a worker
                 of another wire version cannot read this either, and logs both versions)
    series_request  worker -> collector: "send me the header of series X"
    unknown_series  collector -> worker: no such series
    model        collector -> workers: the current crystal model (indexing), by series
    dispatched / received_drop / series_start / series_end / stop: receiver -> collector
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from streamer.errors import BadMessage

WIRE_VERSION = 3
MAX_HEADER_BYTES = 4 * 1024 * 1024
MAX_PARTS = 256
MAX_ARRAY_BYTES = 1 << 30  # a 16M uint32 frame is 72 MB; 1 GiB bounds any one buffer
MAX_NDIM = 4
_NUMERIC_KINDS = "uifb"

KINDS = frozenset(
    {
        "series",
        "frame",
        "credit",
        "result",
        "idle",
        "alive",
        "dropped",
        "hello",
        "endpoints",
        "joining",
        "welcome",
        "refused",
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


def check_dtype(text: Any) -> np.dtype:
    """The numeric dtype a header names with an explicit byte order, or WireError."""
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
    if not isinstance(kind, str) or kind not in KINDS:  # a list or map is unhashable: no set lookup
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
    header = msgpack.packb({"v": WIRE_VERSION, "kind": kind, "body": dict(body or {}), "arrays": specs},
                           use_bin_type=True)
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
    if not isinstance(kind, str) or kind not in KINDS:  # a list or map is unhashable: no set lookup
        raise WireError(f"unknown message kind {kind!r}", reason="wire_unknown_kind")
    if not isinstance(body, dict) or not isinstance(specs, list):
        raise WireError("header lacks a body map or an arrays list")
    if len(specs) != len(parts) - 1:
        raise WireError(f"header describes {len(specs)} arrays but {len(parts) - 1} buffers arrived")
    arrays: dict[str, np.ndarray] = {}
    for spec, part in zip(specs, parts[1:]):
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[2], list)):
            raise WireError(f"bad array description {spec!r}")
        name, dtype, shape = spec[0], check_dtype(spec[1]), spec[2]
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
