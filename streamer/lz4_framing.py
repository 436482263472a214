"""Recompression-free conversions of LZ4 frames between the stream formats: a bare LZ4 block
(stream v1 `lz4<`) and the HDF5 LZ4 filter framing (stream v2 "lz4")."""

from __future__ import annotations

from typing import Any

from streamer.codecs import HEADER, U32, lz4_h5_blocks


def lz4_block_as_h5(data: Any, decoded_bytes: int) -> bytes:
    """Wrap one bare LZ4 block (v1 `lz4<`) in the HDF5 LZ4 framing (v2 "lz4") without recompressing."""
    if decoded_bytes >= 1 << 32:
        raise ValueError("an image over 4 GiB does not fit one LZ4 block")
    block = bytes(data)
    if len(block) == decoded_bytes:  # would read as a stored block: never produced by LZ4 for real frames
        raise ValueError("an LZ4 block as long as its decoded size cannot be framed unambiguously")
    return HEADER.pack(decoded_bytes, max(decoded_bytes, 1)) + U32.pack(len(block)) + block


def lz4_h5_as_block(data: Any, decoded_bytes: int) -> bytes | None:
    """The bare LZ4 block inside a one-block HDF5-LZ4 buffer (for v1 `lz4<`), or None if it has more blocks."""
    blocks = lz4_h5_blocks(data, decoded_bytes)
    if len(blocks) != 1 or blocks[0][1] == blocks[0][2]:
        return None
    offset, length, _ = blocks[0]
    return bytes(memoryview(data)[offset:offset + length])
