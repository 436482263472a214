"""Recorded detector stream captures: files -> ZeroMQ messages (lists of parts), for replay and tests.

Layouts (see ../shared/data/streams/README.md):
- stream v1: one file per ZeroMQ message part, in arrival order (`streamData.000001`,
  `streamfile_1`, ...). Parts are grouped into messages by the SIMPLON part structure
  (`stream_v1` layouts; an extra part that does not start a message is an appendix). Header
  blobs missing from a capture (empty file where the part header declares an array) are
  replaced by zero arrays of the declared size.
- stream v2: one file per message (`000001.cbor`, ...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from streamer import stream_v1, stream_v2
from streamer.errors import BadInput

_STARTS = (stream_v1.HEADER, stream_v1.IMAGE, stream_v1.END)


def _number(path: Path) -> tuple[int, str]:
    digits = re.findall(r"\d+", path.name)
    return (int(digits[-1]) if digits else -1, path.name)


def capture_files(folder: str | Path) -> list[Path]:
    """The part/message files of a capture folder in arrival order (numeric, not lexical)."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith((".", "README"))]
    return sorted(files, key=_number)


def capture_format(folder: str | Path) -> str:
    """"v1" or "v2", from the first file."""
    files = capture_files(folder)
    if not files:
        raise BadInput(f"capture folder {folder} is empty", reason="bad_capture")
    return "v2" if stream_v2.looks_like_v2(files[0].read_bytes()[:3]) else "v1"


def read_capture(folder: str | Path) -> list[list[bytes]]:
    """All messages of a capture, each a list of parts (v2: one part)."""
    if capture_format(folder) == "v2":
        return [[p.read_bytes()] for p in capture_files(folder)]
    return group_v1_parts([p.read_bytes() for p in capture_files(folder)])


def _htype(part: bytes) -> str | None:
    if not part.startswith(b"{") or len(part) > stream_v1.MAX_JSON_BYTES:
        return None
    try:
        obj = json.loads(part)
    except ValueError:
        return None
    return obj.get("htype") if isinstance(obj, dict) else None


def _fill_missing_blob(header_part: bytes, blob: bytes) -> bytes:
    """The blob, or zeros of the size its part header declares if the capture lacks it."""
    if blob:
        return blob
    desc = json.loads(header_part)
    shape, type_name = desc.get("shape") or [], desc.get("type")
    if not shape or type_name == "undefined":
        return blob
    return bytes(int(np.prod(shape)) * np.dtype(stream_v1.dtype_of(type_name)).itemsize)


def group_v1_parts(parts: list[bytes]) -> list[list[bytes]]:
    """Group a flat list of v1 parts into messages using the htype/part structure."""
    messages: list[list[bytes]] = []
    i = 0
    while i < len(parts):
        htype = _htype(parts[i])
        if htype == stream_v1.HEADER:
            detail = json.loads(parts[i]).get("header_detail", "basic")
            n = stream_v1.HEADER_PARTS.get(detail, 1)
        elif htype == stream_v1.IMAGE:
            n = stream_v1.IMAGE_PARTS
        elif htype == stream_v1.END:
            n = stream_v1.END_PARTS
        else:
            raise BadInput(f"capture part {i} does not start a v1 message", reason="bad_capture")
        message = list(parts[i:i + n])
        if htype == stream_v1.HEADER and len(message) == 8:
            for k in (3, 5, 7):
                message[k] = _fill_missing_blob(message[k - 1], message[k])
        i += n
        if i < len(parts) and _htype(parts[i]) not in _STARTS:
            message.append(parts[i])  # appendix part
            i += 1
        messages.append(message)
    return messages
