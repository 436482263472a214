"""The decoder back-ends behind `streamer.codecs`, found once at import, and their threads.

- "dectris": dectris-compression (`dectris.compression.decompress`, the "fast" extra), when
  importable: one C call per frame, into an output it allocates itself.
- "bitshuffle": bitshuffle's C entry point, which writes straight into the caller's buffer,
  and the lz4 package; always here.

`fastest_backend` says which one runs by default for each encoding. bitshuffle runs on OpenMP
threads: one per decode and per encode by default (`set_decode_threads`, `set_encode_threads`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from typing import Any

import bitshuffle

try:  # optional ("fast" extra): one C call per frame, but it allocates its own output
    from dectris.compression import decompress as DECTRIS_DECOMPRESS
except ImportError:  # pragma: no cover - depends on the installation
    DECTRIS_DECOMPRESS = None


def _bshuf_c_entry() -> Any:
    """bitshuffle's C `bshuf_decompress_lz4(in, out, size, elem_size, block_size)` (bitshuffle.h),
    exported by its extension module; None if absent. ctypes releases the GIL during the call."""
    try:
        import bitshuffle.ext

        func = ctypes.CDLL(bitshuffle.ext.__file__).bshuf_decompress_lz4
    except (ImportError, OSError, AttributeError):  # pragma: no cover - depends on the build
        return None
    func.restype = ctypes.c_int64
    func.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
    return func


def _omp_thread_setter() -> Any:
    """`omp_set_num_threads` of the OpenMP runtime bitshuffle's extension runs on, or None.

    bitshuffle decodes blocks on OpenMP threads. With one worker process per core, those
    threads spin-wait against each other: measured on 2 busy cores, 4M frames dropped from
    256 to 65 frames/s. So decoding uses `decode_threads` OpenMP threads (default 1).
    """
    folder = os.path.dirname(bitshuffle.__file__) + ".libs"  # the wheel's bundled libgomp
    candidates = sorted(glob.glob(os.path.join(folder, "libgomp*.so*"))) + [ctypes.util.find_library("gomp")]
    for path in candidates:
        if path:
            try:
                func = ctypes.CDLL(path).omp_set_num_threads
            except (OSError, AttributeError):  # pragma: no cover - depends on the build
                continue
            func.argtypes = [ctypes.c_int]
            return func
    return None  # pragma: no cover


BSHUF_DECOMPRESS = _bshuf_c_entry()
_OMP_SET_NUM_THREADS = _omp_thread_setter() if BSHUF_DECOMPRESS is not None else None
_decode_threads = 1
_encode_threads = 1


def set_encode_threads(n: int) -> None:
    """OpenMP threads bitshuffle may use per encode (default 1: the simulator and replay share
    the machine with the processor's workers, and spinning OpenMP threads slow everyone)."""
    global _encode_threads
    if n < 1:
        raise ValueError("encode threads must be at least 1")
    _encode_threads = int(n)


def set_decode_threads(n: int) -> None:
    """OpenMP threads bitshuffle may use per decode (default 1: one per worker process is best
    when workers fill the cores; a lone receiver on an idle machine gains from 2-4)."""
    global _decode_threads
    if n < 1:
        raise ValueError("decode threads must be at least 1")
    _decode_threads = int(n)


def use_decode_threads() -> None:
    """Give bitshuffle's next decode on this thread `set_decode_threads` OpenMP threads (the
    count is an OpenMP per-thread setting, so it is set before each call)."""
    if _OMP_SET_NUM_THREADS is not None:
        _OMP_SET_NUM_THREADS(_decode_threads)


def use_encode_threads() -> None:
    """As `use_decode_threads`, for an encode (`set_encode_threads`)."""
    if _OMP_SET_NUM_THREADS is not None:
        _OMP_SET_NUM_THREADS(_encode_threads)


def available_backends() -> tuple[str, ...]:
    """Decoder back-ends usable here ("dectris" when importable, "bitshuffle" always)."""
    return (("dectris",) if DECTRIS_DECOMPRESS is not None else ()) + ("bitshuffle",)


# Frames up to this size decode fastest with dectris-compression's own output when the caller
# can take it (`allow_view`): with `streamer.allocator.keep_freed_memory` such blocks come from
# the heap and are reused, no page faults (4M uint32 in this session: 1.6 ms vs 2.8 ms for
# bitshuffle into a reused buffer); larger ones are mapped afresh by glibc, fault, and lose.
VIEW_MAX_BYTES = 32 * 1024 * 1024


def fastest_backend(encoding: str) -> str:
    """The decoder used when none is asked for.

    bslz4: bitshuffle's C entry point decoding straight into the caller's buffer. Measured with
    `xtalstream bench decode` (decode only, one thread, same run): 4M uint32 235 vs 226
    frames/s for dectris-compression, 16M 40 vs 19 frames/s: dectris-compression cannot write
    into a given buffer, and its fresh 72 MB output per frame costs page faults. Otherwise
    dectris-compression when importable (one C call for all lz4-h5 blocks), else bitshuffle/lz4.
    """
    if encoding == "bslz4" and BSHUF_DECOMPRESS is not None:
        return "bitshuffle"
    return available_backends()[0]
