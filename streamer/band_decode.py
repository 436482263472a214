"""bslz4 frames as band sources for the threshold pass (`kernels.bslz4_native`).

A worker's threshold pass decodes a bslz4 frame band by band, just ahead of the rows it
reads, by calling the C block decoders of the installed codec libraries from compiled code:
this module finds their addresses and checks a frame's header before the pass (its blocks
are checked as the pass reaches them).
"""

from __future__ import annotations

import ctypes

import numpy as np

from kernels.bslz4_native import BITSHUFFLE, DECTRIS, band_source
from streamer.codecs import HEADER, as_bytes_array, bslz4_layout, expected_bytes
from streamer.series import EncodedFrame


def _address(library: str, name: str) -> int:
    """Address of an exported C function of a loaded library (an extension module)."""
    return int(ctypes.cast(getattr(ctypes.CDLL(library), name), ctypes.c_void_p).value)


def _block_decoders() -> np.ndarray | None:
    """dectris-compression's LZ4 and bit transpose (the fastest), else bitshuffle's."""
    try:
        import dectris.compression as dectris

        return np.array([_address(dectris.__file__, "LZ4_decompress_safe"),
                         _address(dectris.__file__, "bitshuf_decode_block"), DECTRIS], dtype=np.int64)
    except (ImportError, OSError, AttributeError):
        pass
    try:
        import bitshuffle.ext

        return np.array([_address(bitshuffle.ext.__file__, "LZ4_decompress_safe"),
                         _address(bitshuffle.ext.__file__, "bshuf_untrans_bit_elem"), BITSHUFFLE], dtype=np.int64)
    except (ImportError, OSError, AttributeError):  # pragma: no cover - depends on the build
        return None


_BLOCK_DECODERS = _block_decoders()


def block_decoder_functions() -> np.ndarray | None:
    """The C functions that decode one bslz4 block, for `kernels.bslz4_native`: int64 addresses
    [LZ4_decompress_safe, bit transpose, its kind]: dectris-compression's (the fastest) when
    importable, else bitshuffle's; None if neither library exports them."""
    return _BLOCK_DECODERS


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
    if _BLOCK_DECODERS is None:
        raise RuntimeError("no bitshuffle-LZ4 block decoder is exported by the installed codecs")
    src = as_bytes_array(frame.data)
    block, n_full, last = bslz4_layout(frame.data, src, dt.itemsize, expected)
    n, b = expected // dt.itemsize, dt.itemsize
    return band_source(src, HEADER.size, n_full, block * b, last * b, (n % 8) * b, b,
                       out.reshape(-1).view(np.uint8), _BLOCK_DECODERS, scratch)
