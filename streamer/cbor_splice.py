"""CBOR messages around large byte strings, encoded with one copy of each, decoded with none.

A stream v2 image message is one CBOR map holding a megabyte-sized compressed frame.
`cbor2.dumps` of it copies the frame more than once on its way into the output (measured:
0.3-0.5 ms per 1.5 MB frame in a sender under load, against 0.03-0.07 ms for one join). Here
cbor2 encodes the message with a short placeholder byte string in place of each payload, and
the payloads are joined in at the placeholders: the bytes are exactly what cbor2 would write
for the whole message.

Decoding, cbor2 copies every byte string out of the message (0.21 ms for a 1.5 MB frame with
the data cached, against 0.04 ms for a plain copy: it reads long strings in chunks). `split`
walks the item heads to the large byte strings and gives the message with placeholders in
their place, for cbor2 to decode in microseconds, and the strings as views of the message's
buffer (0.02 ms for a 4M frame's message, walk and decode).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import cbor2

_MARK = b"xtalstream-splice" + os.urandom(12)  # random per process: never in a message by chance


def placeholder(index: int) -> bytes:
    """The byte string that stands for payload `index` in the object given to `dumps`."""
    return _MARK + index.to_bytes(4, "big")


def byte_string_head(n: int) -> bytes:
    """The CBOR head of a byte string of n bytes (major type 2, shortest length form)."""
    if n < 24:
        return bytes([0x40 + n])
    for code, size in ((0x58, 1), (0x59, 2), (0x5A, 4), (0x5B, 8)):
        if n < 1 << (8 * size):
            return bytes([code]) + n.to_bytes(size, "big")
    raise ValueError(f"byte string of {n} bytes is too long for CBOR")


def dumps(obj: Any, payloads: Sequence[Any]) -> bytes:
    """cbor2.dumps(obj) with `placeholder(i)` replaced by the byte string payloads[i] (any
    buffer), each copied once."""
    encoded = cbor2.dumps(obj)
    pieces: list[Any] = []
    at = 0
    spots = []
    for i, payload in enumerate(payloads):
        marker = cbor2.dumps(placeholder(i))
        pos = encoded.find(marker)
        if pos < 0 or encoded.find(marker, pos + 1) >= 0:
            raise ValueError(f"placeholder {i} is not in the encoded message exactly once")
        spots.append((pos, len(marker), memoryview(payload).cast("B")))
    for pos, length, view in sorted(spots, key=lambda spot: spot[0]):
        pieces += [encoded[at:pos], byte_string_head(view.nbytes), view]
        at = pos + length
    pieces.append(encoded[at:])
    return b"".join(pieces)


def byte_string_spans(buf: memoryview, min_bytes: int, max_depth: int, max_items: int = 100_000
                      ) -> list[tuple[int, int, int]] | None:
    """(head start, data start, data end) of each definite-length byte string of at least
    `min_bytes` in the CBOR item at the start of `buf` (a byte-format view), found by walking
    the item heads (RFC 8949: major type and argument; strings skipped, arrays, maps and tags
    counted), in order; None when the walk cannot tell: indefinite lengths, reserved heads, a
    string or head past the end, nesting over max_depth, more than max_items items. The walk
    checks no more than that: decoding the rest is cbor2's."""
    n = len(buf)
    pos = 0
    left = [1]  # items still to read at each open level
    spans = []
    for _ in range(max_items):
        if pos >= n:
            return None
        first = buf[pos]
        major, info = first >> 5, first & 31
        head = pos
        pos += 1
        if info < 24:
            arg = info
        elif info < 28:
            size = 1 << (info - 24)
            if pos + size > n:
                return None
            arg = int.from_bytes(buf[pos:pos + size], "big")
            pos += size
        else:  # 28-30 reserved, 31 indefinite length or break
            return None
        left[-1] -= 1
        if major in (2, 3):  # byte and text strings
            if arg > n - pos:
                return None
            if major == 2 and arg >= min_bytes:
                spans.append((head, pos, pos + arg))
            pos += arg
        elif major in (4, 5, 6) and (arg > 0 or major == 6):  # array, map: arg items (pairs); tag: one item
            if len(left) >= max_depth:
                return None
            left.append(1 if major == 6 else arg * (2 if major == 5 else 1))
        while left and left[-1] == 0:
            left.pop()
        if not left:
            return spans
    return None


def split(buf: memoryview, min_bytes: int, max_depth: int) -> tuple[bytes, dict[bytes, memoryview]] | None:
    """(the message with `placeholder(i)` in place of its i-th byte string of at least
    `min_bytes`, {placeholder: view of that string in buf}), or None when it has none or
    `byte_string_spans` cannot tell. Bytes after the message's item stay as they are."""
    spans = byte_string_spans(buf, min_bytes, max_depth)
    if not spans:
        return None
    pieces: list[Any] = []
    payloads = {}
    at = 0
    for i, (head, start, end) in enumerate(spans):
        mark = placeholder(i)
        pieces += [buf[at:head], cbor2.dumps(mark)]
        payloads[mark] = buf[start:end]
        at = end
    pieces.append(buf[at:])
    return b"".join(pieces), payloads

