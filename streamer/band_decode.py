"""bslz4 frames as band sources for the threshold pass (`kernels.bslz4_native`).

A worker's threshold pass decodes a bslz4 frame band by band, just ahead of the rows it
reads, by calling the C block decoders of the installed codec libraries from compiled code:
this module finds their addresses and checks a frame's header before the pass (its blocks
are checked as the pass reaches them).
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import os

import bitshuffle
import numpy as np

from kernels import bit_transpose
from kernels.bslz4_native import BITSHUFFLE, DECTRIS, band_source
from streamer.codecs import HEADER, as_bytes_array, bslz4_layout, expected_bytes
from streamer.series import EncodedFrame

log = logging.getLogger(__name__)


def _address(library: str, name: str) -> int:
    """Address of an exported C function of a loaded library (an extension module)."""
    return int(ctypes.cast(getattr(ctypes.CDLL(library), name), ctypes.c_void_p).value)


def _exported(module: str, name: str) -> int | None:
    """Address of `name` in an installed extension module, None if it is not importable or has none."""
    try:
        return _address(importlib.import_module(module).__file__, name)
    except (ImportError, OSError, AttributeError):
        return None


def _own_transpose_agrees() -> bool:
    """Whether `kernels.bit_transpose` gives bitshuffle's pixels back on this CPU (16- and
    32-bit blocks of random values): a check of the compiled code before any frame trusts it."""
    rng = np.random.default_rng(0)
    for dtype, n in (("<u4", 2048), ("<u2", 4096)):
        pixels = rng.integers(0, np.iinfo(dtype).max, n, dtype=np.uint64, endpoint=True).astype(dtype)
        block = bitshuffle.bitshuffle(pixels, block_size=n).view(np.uint8)
        out = np.zeros(pixels.nbytes, np.uint8)
        if not bit_transpose.untranspose_array(block, out, pixels.itemsize) or not np.array_equal(
                out.view(dtype), pixels):
            log.warning("the GFNI bit transpose does not reproduce bitshuffle's %s pixels on this CPU: "
                        "the library's transpose decodes every block", dtype)
            return False
    return True


def _block_decoders() -> np.ndarray | None:
    """[LZ4, bit transpose, its kind, own] for `kernels.bslz4_native`: bitshuffle's LZ4 (1.05
    ms per 4M uint32 frame here, against dectris-compression's 1.24), dectris-compression's
    transpose (1.2 ms against bitshuffle's 2.7), else the other library's of each; own: 1 where
    `kernels.bit_transpose` (0.5 ms) takes the blocks it covers, unless the environment sets
    XTALSTREAM_BIT_TRANSPOSE=library (to compare, or to rule it out) or it fails its check."""
    lz4 = _exported("bitshuffle.ext", "LZ4_decompress_safe") or _exported("dectris.compression", "LZ4_decompress_safe")
    transpose, kind = _exported("dectris.compression", "bitshuf_decode_block"), DECTRIS
    if transpose is None:
        transpose, kind = _exported("bitshuffle.ext", "bshuf_untrans_bit_elem"), BITSHUFFLE
    if lz4 is None or transpose is None:  # pragma: no cover - depends on the build
        return None
    own = (bit_transpose.AVAILABLE and os.environ.get("XTALSTREAM_BIT_TRANSPOSE", "") != "library"
           and _own_transpose_agrees())
    return np.array([lz4, transpose, kind, int(own)], dtype=np.int64)


@functools.cache
def block_decoder_functions() -> np.ndarray | None:
    """The functions that decode one bslz4 block, for `kernels.bslz4_native`: int64 [LZ4_decompress_safe,
    bit transpose (addresses), the transpose's kind, own] (`_block_decoders`, on the first call:
    its check compiles the GFNI transpose); None if the installed libraries export neither."""
    return _block_decoders()


def transpose_name() -> str:
    """Which bit transpose decodes the 8 kB blocks of 16- and 32-bit frames (for benchmark reports)."""
    functions = block_decoder_functions()
    if functions is None:
        return "none"
    if functions[3]:
        return "gfni (kernels.bit_transpose)"
    return "dectris-compression" if functions[2] == DECTRIS else "bitshuffle"


def bslz4_band_source(frame: EncodedFrame, out: np.ndarray, scratch: np.ndarray | None = None) -> tuple:
    """A bslz4 frame as a band source (`kernels.bslz4_native`) filling `out` (a
    writeable C-contiguous array of the frame's shape and dtype): the threshold pass decodes it
    band by band, just ahead of the rows it reads. BadFrame as `decode` would raise it for a
    frame whose header is wrong; the blocks are checked as they are decoded
    (`kernels.bslz4_native.DecodeError`)."""
    dt = np.dtype(frame.dtype)
    shape = tuple(int(n) for n in frame.shape)
    expected = expected_bytes(shape, dt)
    if out.shape != shape or out.dtype != dt or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"output buffer {out.shape} {out.dtype} does not fit a {shape} {dt} frame")
    functions = block_decoder_functions()
    if functions is None:
        raise RuntimeError("no bitshuffle-LZ4 block decoder is exported by the installed codecs")
    src = as_bytes_array(frame.data)
    block, n_full, last = bslz4_layout(frame.data, src, dt.itemsize, expected)
    n, b = expected // dt.itemsize, dt.itemsize
    return band_source(src, HEADER.size, n_full, block * b, last * b, (n % 8) * b, b,
                       out.reshape(-1).view(np.uint8), functions, scratch)
