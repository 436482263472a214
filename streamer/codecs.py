"""Pixel codecs of DECTRIS detectors: decode an `EncodedFrame` into a numpy array, encode for the sender.

Encodings (`EncodedFrame.encoding`):

- "bslz4": bitshuffle + LZ4 in the HDF5 filter 32008 chunk layout (Masui et al. 2015,
  Astron. Comput. 12, 181): BE uint64 decoded bytes, BE uint32 block size in bytes, then per
  block a BE uint32 compressed length and an LZ4 block of the bit-transposed elements; the last
  `n mod 8` elements are stored raw. Stream v1 `bs32-lz4<`/`bs16-lz4<`/`bs8-lz4<` blobs and the
  stream v2 tag-56500 "bslz4" payloads use exactly this layout.
- "lz4": one bare LZ4 block of the whole image (stream v1 `lz4<`).
- "lz4-h5": the HDF5 LZ4 filter 32004 framing: BE uint64 decoded bytes, BE uint32 block size,
  then per block a BE uint32 length and an LZ4 block; a block whose length equals its decoded
  size is stored uncompressed. Stream v2 tag-56500 "lz4" payloads use this framing.
- "raw": the pixels as they are.

Decoders: dectris-compression and bitshuffle + lz4 (`streamer.codec_backends`: which are
here, which runs by default, their OpenMP threads). Both are checked bit-exact against each
other in the tests. Untrusted input is validated before any decoder
runs: the declared size must equal shape * itemsize and every block must lie inside the buffer,
so nothing allocates more than the expected frame and no C decoder reads past the input.
Corrupt input raises `BadFrame` with reason "corrupt_compression", a size mismatch reason
"wrong_size", an unknown encoding reason "unknown_encoding". Workers decode bslz4 frames band
by band inside the threshold pass instead (`streamer.band_decode`); LZ4 frames change stream
framing without recompression in `streamer.lz4_framing`.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from typing import Any

import bitshuffle
import lz4.block
import numpy as np

from kernels.bslz4_blocks import BAD_LENGTH, BAD_TAIL, TRUNCATED_HEADER, walk_blocks
from streamer.codec_backends import (BSHUF_DECOMPRESS, DECTRIS_DECOMPRESS, VIEW_MAX_BYTES, available_backends,
                                     fastest_backend, use_decode_threads, use_encode_threads)
from streamer.errors import BadFrame
from streamer.series import EncodedFrame

log = logging.getLogger(__name__)

ENCODINGS = ("bslz4", "lz4", "lz4-h5", "raw")
MAX_DECODED_BYTES = 1 << 31  # 2 GiB: a 16M uint32 frame is 72 MB; anything bigger is not a frame
BSLZ4_BLOCK_BYTES = 8192  # what DECTRIS detectors and the HDF5 bitshuffle filter use
LZ4_H5_BLOCK_BYTES = 8192  # DECTRIS stream v2 "lz4" block size, seen in the real captures
HEADER = struct.Struct(">QI")
U32 = struct.Struct(">I")

def lz4_compress_bound(n: int) -> int:
    """Largest LZ4 block for `n` input bytes (LZ4_COMPRESSBOUND of lz4.h)."""
    return n + n // 255 + 16


def decode(frame: EncodedFrame, out: np.ndarray | None = None, backend: str | None = None,
           allow_view: bool = False) -> np.ndarray:
    """Pixels of `frame` as an array of `frame.shape` (numpy order) and `frame.dtype`.

    `out`, when given, must be a writeable C-contiguous array of exactly that shape and dtype;
    it is filled and returned (reuse it across frames: a fresh 72 MB buffer per frame costs
    page faults). `backend` picks the decoder ("dectris" or "bitshuffle"; default
    `fastest_backend(encoding)`). `allow_view`: when the decoder allocates its own output (the
    dectris back-end does), return a read-only array over it instead of copying it into `out`
    (a copy of a 4M frame costs 0.7 ms). Raises BadFrame on corrupt or mis-sized input,
    ValueError on a bad `out`.
    """
    return decode_buffer(frame.data, frame.shape, frame.dtype, frame.encoding, out=out, backend=backend,
                         allow_view=allow_view)


def decode_buffer(
    data: Any,
    shape: Sequence[int],
    dtype: str | np.dtype,
    encoding: str,
    out: np.ndarray | None = None,
    backend: str | None = None,
    allow_view: bool = False,
) -> np.ndarray:
    """`decode` for a bare buffer: the same checks and conventions."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise BadFrame(f"unknown pixel type {dtype!r}", reason="wrong_size") from exc
    shape = tuple(int(n) for n in shape)
    expected = expected_bytes(shape, dt)
    if out is not None and (out.shape != shape or out.dtype != dt or not out.flags.c_contiguous
                            or not out.flags.writeable):
        raise ValueError(f"output buffer {out.shape} {out.dtype} does not fit a {shape} {dt} frame")
    if backend is None and allow_view and encoding == "bslz4" and DECTRIS_DECOMPRESS is not None \
            and expected <= VIEW_MAX_BYTES:
        backend = "dectris"  # its own output, reused from the heap, beats decoding into `out`
    backend = backend or fastest_backend(encoding)
    if backend not in available_backends():
        raise ValueError(f"decoder back-end {backend!r} is not available here ({available_backends()})")
    src = as_bytes_array(data)
    if encoding == "bslz4" and backend == "dectris" and allow_view:
        return np.frombuffer(_dectris_bslz4(data, dt.itemsize, expected), dtype=dt).reshape(shape)
    if out is None:
        out = np.empty(shape, dtype=dt)
    dst = out.reshape(-1).view(np.uint8)
    if encoding == "bslz4":
        _decode_bslz4(data, src, dst, dt.itemsize, expected, backend)
    elif encoding == "lz4-h5":
        _decode_lz4_h5(data, src, dst, expected, backend)
    elif encoding == "lz4":
        _decode_lz4_block(data, dst, expected)
    elif encoding == "raw":
        if src.size != expected:
            raise BadFrame(f"raw frame has {src.size} bytes, expected {expected}", reason="wrong_size")
        dst[:] = src
    else:
        raise BadFrame(f"unknown encoding {encoding!r}", reason="unknown_encoding")
    return out


def as_bytes_array(data: Any) -> np.ndarray:
    """A read-only uint8 view of any buffer (bytes, memoryview, zmq frame buffer), never a copy."""
    view = memoryview(data)
    if view.nbytes == 0:
        return np.empty(0, np.uint8)
    return np.frombuffer(view.cast("B") if view.format != "B" or view.ndim != 1 else view, dtype=np.uint8)


def expected_bytes(shape: tuple[int, ...], dt: np.dtype) -> int:
    if dt.kind not in "uif" or dt.itemsize not in (1, 2, 4, 8):
        raise BadFrame(f"unsupported pixel type {dt.str}", reason="wrong_size")
    if not shape or any(n <= 0 for n in shape):
        raise BadFrame(f"bad frame shape {shape}", reason="wrong_size")
    expected = math.prod(int(n) for n in shape) * dt.itemsize  # exact: Python integers
    if expected > MAX_DECODED_BYTES:
        raise BadFrame(f"frame of {expected} bytes exceeds the {MAX_DECODED_BYTES}-byte bound", reason="wrong_size")
    return expected


def _read_header(data: Any, src: np.ndarray, expected: int, name: str) -> int:
    """Declared size and block size of a 12-byte HDF5-filter header, checked before decoding."""
    if src.size < HEADER.size:
        raise BadFrame(f"{name} buffer of {src.size} bytes is shorter than its header", reason="corrupt_compression")
    total, block = HEADER.unpack_from(data, 0)
    if total != expected:
        raise BadFrame(f"{name} header declares {total} bytes, the frame needs {expected}", reason="wrong_size")
    if block == 0:
        raise BadFrame(f"{name} header declares a zero block size", reason="corrupt_compression")
    return block


def bslz4_layout(data: Any, src: np.ndarray, itemsize: int, expected: int) -> tuple[int, int, int]:
    """(block size in elements, full blocks, elements of the last partial block) from a checked header."""
    block_bytes = _read_header(data, src, expected, "bslz4")
    if block_bytes % (8 * itemsize) or block_bytes > (1 << 24):
        raise BadFrame(f"bslz4 block size {block_bytes} is not a multiple of 8 elements", reason="corrupt_compression")
    block = block_bytes // itemsize
    n = expected // itemsize
    return block, n // block, (n % block) - (n % block) % 8


def bslz4_block_offsets(data: Any, itemsize: int, expected: int) -> tuple[int, np.ndarray]:
    """Validate a bslz4 buffer; return (block size in elements, offset of each block's length word).

    Walks the block lengths only (no decompression): every block must fit inside the buffer and
    within the LZ4 bound of its decoded size, and the raw tail of `n mod 8` elements must end
    the buffer exactly.
    """
    src = as_bytes_array(data)
    block, n_full, last = bslz4_layout(data, src, itemsize, expected)
    n = expected // itemsize
    offsets = np.empty(n_full + (1 if last else 0), dtype=np.int64)
    status, pos = walk_blocks(src, HEADER.size, block * itemsize, n_full, last * itemsize, (n % 8) * itemsize,
                              offsets)
    if status == TRUNCATED_HEADER:
        raise BadFrame("bslz4 buffer ends inside a block header", reason="corrupt_compression")
    if status == BAD_LENGTH:
        (length,) = U32.unpack_from(data, pos)
        raise BadFrame(f"bslz4 block at byte {pos} declares {length} bytes", reason="corrupt_compression")
    if status == BAD_TAIL:
        raise BadFrame(f"bslz4 buffer has {src.size - pos} trailing bytes, expected {(n % 8) * itemsize}",
                       reason="corrupt_compression")
    return block, offsets


def _dectris_bslz4(data: Any, itemsize: int, expected: int) -> bytes:
    """The dectris decoder's own output buffer for a validated bslz4 frame."""
    bslz4_block_offsets(data, itemsize, expected)
    try:
        decoded = DECTRIS_DECOMPRESS(data, "bslz4", elem_size=itemsize)
    except Exception as exc:  # the C decoder reports corrupt LZ4 as various errors
        raise BadFrame(f"bslz4 decode failed: {exc}", reason="corrupt_compression") from exc
    if len(decoded) != expected:
        raise BadFrame(f"bslz4 decoded {len(decoded)} bytes, expected {expected}", reason="wrong_size")
    return decoded


def _decode_bslz4(data: Any, src: np.ndarray, dst: np.ndarray, itemsize: int, expected: int, backend: str) -> None:
    if backend == "dectris":
        dst[:] = np.frombuffer(_dectris_bslz4(data, itemsize, expected), dtype=np.uint8)
        return
    block, _ = bslz4_block_offsets(data, itemsize, expected)
    n = expected // itemsize
    if BSHUF_DECOMPRESS is not None:
        use_decode_threads()
        used = BSHUF_DECOMPRESS(src.ctypes.data + HEADER.size, dst.ctypes.data, n, itemsize, block)
        if used != src.size - HEADER.size:
            raise BadFrame(f"bslz4 decode failed (bitshuffle status {used})", reason="corrupt_compression")
        return
    try:  # pragma: no cover - only without the C entry point
        arr = bitshuffle.decompress_lz4(src[HEADER.size:], (n,), np.dtype(f"u{itemsize}"), block)
    except (ValueError, RuntimeError) as exc:  # pragma: no cover
        raise BadFrame(f"bslz4 decode failed: {exc}", reason="corrupt_compression") from exc
    dst[:] = arr.view(np.uint8)  # pragma: no cover


def lz4_h5_blocks(data: Any, expected: int) -> list[tuple[int, int, int]]:
    """Validate an HDF5-LZ4-framed buffer; return (offset, compressed length, decoded length) per block."""
    src = as_bytes_array(data)
    block_bytes = _read_header(data, src, expected, "lz4-h5")
    blocks = []
    pos, end, done = HEADER.size, src.size, 0
    unpack = U32.unpack_from
    while done < expected:
        size = min(block_bytes, expected - done)
        if pos + 4 > end:
            raise BadFrame("lz4-h5 buffer ends inside a block header", reason="corrupt_compression")
        (length,) = unpack(data, pos)
        if length > lz4_compress_bound(size) or pos + 4 + length > end:
            raise BadFrame(f"lz4-h5 block at byte {pos} declares {length} bytes", reason="corrupt_compression")
        blocks.append((pos + 4, length, size))
        pos += 4 + length
        done += size
    if pos != end:
        raise BadFrame(f"lz4-h5 buffer has {end - pos} bytes after its last block", reason="corrupt_compression")
    return blocks


def _decode_lz4_h5(data: Any, src: np.ndarray, dst: np.ndarray, expected: int, backend: str) -> None:
    blocks = lz4_h5_blocks(data, expected)
    if backend == "dectris":
        try:
            decoded = DECTRIS_DECOMPRESS(data, "lz4")
        except Exception as exc:
            raise BadFrame(f"lz4 decode failed: {exc}", reason="corrupt_compression") from exc
        if len(decoded) != expected:
            raise BadFrame(f"lz4 decoded {len(decoded)} bytes, expected {expected}", reason="wrong_size")
        dst[:] = np.frombuffer(decoded, dtype=np.uint8)
        return
    view = memoryview(src)
    at = 0
    for offset, length, size in blocks:
        if length == size:  # stored uncompressed (the filter's rule for incompressible blocks)
            dst[at:at + size] = src[offset:offset + size]
        else:
            dst[at:at + size] = np.frombuffer(_lz4_block(view[offset:offset + length], size), dtype=np.uint8)
        at += size


def _lz4_block(data: Any, size: int) -> bytes:
    try:
        decoded = lz4.block.decompress(data, uncompressed_size=size)
    except lz4.block.LZ4BlockError as exc:
        raise BadFrame(f"corrupt LZ4 block: {exc}", reason="corrupt_compression") from exc
    if len(decoded) != size:
        raise BadFrame(f"LZ4 block decoded to {len(decoded)} bytes, expected {size}", reason="wrong_size")
    return decoded


def _decode_lz4_block(data: Any, dst: np.ndarray, expected: int) -> None:
    if memoryview(data).nbytes > lz4_compress_bound(expected):
        raise BadFrame("LZ4 block is larger than any encoding of the frame", reason="corrupt_compression")
    dst[:] = np.frombuffer(_lz4_block(data, expected), dtype=np.uint8)


def encode(array: np.ndarray, encoding: str, block_bytes: int | None = None) -> bytes:
    """Compress `array` (C order, its own dtype) as a detector would; see the module docstring.

    `block_bytes`: bslz4 block size (default 8192, a multiple of 8 elements) or lz4-h5 block
    size (default 8192). Used by the simulator and the sender; replay passes compressed bytes on.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; one of {ENCODINGS}")
    arr = np.ascontiguousarray(array)
    flat = arr.reshape(-1)
    if encoding == "raw":
        return arr.tobytes()
    if encoding == "lz4":
        return lz4.block.compress(arr.tobytes(), store_size=False)
    if encoding == "bslz4":
        itemsize = arr.dtype.itemsize
        block = (block_bytes or BSLZ4_BLOCK_BYTES) // itemsize
        if block <= 0 or block % 8:
            raise ValueError(f"bslz4 block of {block_bytes} bytes is not a multiple of 8 elements")
        use_encode_threads()
        body = bitshuffle.compress_lz4(flat.view(f"u{itemsize}") if arr.dtype.kind != "u" else flat, block)
        return HEADER.pack(arr.nbytes, block * itemsize) + body.tobytes()
    block = block_bytes or LZ4_H5_BLOCK_BYTES
    raw = memoryview(arr.tobytes())
    pieces = [HEADER.pack(arr.nbytes, block)]
    for start in range(0, arr.nbytes, block):
        chunk = raw[start:start + block]
        packed = lz4.block.compress(chunk, store_size=False)
        if len(packed) >= len(chunk):
            packed = bytes(chunk)
        pieces += [U32.pack(len(packed)), packed]
    return b"".join(pieces)
