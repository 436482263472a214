"""Bitshuffle-LZ4 blocks decoded from inside compiled kernels, by the codec libraries' own C code.

A threshold pass that decodes each band of rows just before it reads them finds the band in
L2; decoding the whole frame first leaves it in L3 or memory by the time the pass gets there
(measured: 1.0 ns per pixel when a 4M frame's rows are in L2, 1.5 from a decoded frame). So
the kernels call the C decoders per 8 kB block: LZ4 (`LZ4_decompress_safe`) and the bit
transpose (dectris-compression's `bitshuf_decode_block`, the fastest C one, else bitshuffle's
`bshuf_untrans_bit_elem`), both exported by the extension modules already installed; on CPUs
with GFNI and AVX-512, the blocks `kernels.bit_transpose` covers are transposed by it. The C
functions' addresses are passed in as integers (`streamer.band_decode.block_decoder_functions`)
and called through a pointer cast, not linked by name, so the compiled kernels are cached on
disk and run with either library. (llvmlite, numba's code generator, spells the cast.)

A band source is a tuple (src, dst, scratch, functions, state): the compressed buffer
(read-only uint8; its header checked beforehand, `streamer.codecs.bslz4_band_source`), the
frame's bytes to fill, a scratch of two blocks, the functions, and the int64 `state` below.
Each block's length word is checked before its block is decoded (inside the buffer, within
the LZ4 bound of its decoded size), as `kernels.bslz4_blocks.walk_blocks` checks a whole
buffer, so no C decoder reads past the input; the raw tail must end the buffer exactly.
`no_source()` stands for a frame already decoded.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core.extending import intrinsic

from kernels.bit_transpose import untranspose
from kernels.bslz4_blocks import BAD_LENGTH, BAD_TAIL, OK, TRUNCATED_HEADER, block_length
from kernels.jit import njit

# state fields
NEXT_BLOCK, N_BLOCKS, BLOCK_BYTES, LAST_BYTES, TAIL_BYTES, ELEM_SIZE, DECODED, STATUS, TOTAL, POS, DONE = range(11)
STATE_SIZE = 11
BAD_BLOCK = 4  # a block's LZ4 data did not give its decoded size, or the transpose failed (after
# `kernels.bslz4_blocks`'s OK, TRUNCATED_HEADER, BAD_LENGTH and BAD_TAIL)
PROBLEMS = {BAD_BLOCK: "does not decode", TRUNCATED_HEADER: "is cut inside its length word",
            BAD_LENGTH: "declares more bytes than it can hold or the buffer has", BAD_TAIL: "is followed by a bad tail"}

DECTRIS = 0  # bitshuf_decode_block(out, in, scratch, n_elements, elem_size) -> 0
BITSHUFFLE = 1  # bshuf_untrans_bit_elem(in, out, n_elements, elem_size) -> bytes done (< 0: error)


class DecodeError(ValueError):
    """A bslz4 buffer that does not decode (corrupt LZ4 data, lengths or tail)."""


def problem(state: np.ndarray) -> str:
    """What went wrong, in words, from a band source's failed state."""
    return f"bslz4 block {int(state[NEXT_BLOCK])} {PROBLEMS.get(int(state[STATUS]), 'fails')}"


_I8P = ir.IntType(8).as_pointer()


@intrinsic
def _lz4(typingctx, fn, src, dst, n_src, n_dst):
    """LZ4_decompress_safe(src, dst, n_src, n_dst) through the address fn -> bytes written (int32)."""
    sig = types.int32(types.int64, types.int64, types.int64, types.int32, types.int32)

    def codegen(context, builder, signature, args):
        f, s, d, ns, nd = args
        fnty = ir.FunctionType(ir.IntType(32), [_I8P, _I8P, ir.IntType(32), ir.IntType(32)])
        call = builder.inttoptr(f, fnty.as_pointer())
        return builder.call(call, [builder.inttoptr(s, _I8P), builder.inttoptr(d, _I8P), ns, nd])

    return sig, codegen


@intrinsic
def _decode_block(typingctx, fn, out, src, scratch, n, elem):
    """dectris-compression's bitshuf_decode_block(out, src, scratch, n, elem) -> 0 on success."""
    sig = types.int32(types.int64, types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        f, o, s, sc, n_, e = args
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.IntType(32), [_I8P, _I8P, _I8P, i64, i64])
        call = builder.inttoptr(f, fnty.as_pointer())
        return builder.call(call, [builder.inttoptr(o, _I8P), builder.inttoptr(s, _I8P),
                                   builder.inttoptr(sc, _I8P), n_, e])

    return sig, codegen


@intrinsic
def _untrans(typingctx, fn, src, out, n, elem):
    """bitshuffle's bshuf_untrans_bit_elem(src, out, n, elem) -> bytes processed (< 0 on error)."""
    sig = types.int64(types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        f, s, o, n_, e = args
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(i64, [_I8P, _I8P, i64, i64])
        call = builder.inttoptr(f, fnty.as_pointer())
        return builder.call(call, [builder.inttoptr(s, _I8P), builder.inttoptr(o, _I8P), n_, e])

    return sig, codegen


@njit(boundscheck=False)
def decode_upto(src, dst, scratch, functions, state, byte_end):
    """Decode blocks until the first byte_end bytes of the frame are in dst (the raw tail of
    the last n mod 8 elements too once the blocks are done). False if a block fails, with
    state[STATUS] saying how and state[NEXT_BLOCK] which (and every later call fails)."""
    if state[STATUS] != OK:
        return False
    nb = state[N_BLOCKS]
    bb = state[BLOCK_BYTES]
    elem = state[ELEM_SIZE]
    end = min(byte_end, state[TOTAL])
    n_src = src.shape[0]
    base_src = src.ctypes.data
    base_dst = dst.ctypes.data
    tmp = scratch.ctypes.data
    while state[DECODED] < end and state[NEXT_BLOCK] < nb:
        b = state[NEXT_BLOCK]
        size = bb if (b < nb - 1 or state[LAST_BYTES] == 0) else state[LAST_BYTES]
        pos = state[POS]
        status, length = block_length(src, pos, size)
        if status != OK:
            state[STATUS] = status
            return False
        out = base_dst + state[DECODED]
        ok = _lz4(functions[0], base_src + pos + 4, tmp, np.int32(length), np.int32(size)) == size
        if ok and functions[3] != 0 and untranspose(tmp, out, size // elem, elem):
            pass
        elif ok and functions[2] == DECTRIS:
            ok = _decode_block(functions[1], out, tmp, tmp + size, size // elem, elem) == 0
        elif ok:
            ok = _untrans(functions[1], tmp, out, size // elem, elem) == size
        if not ok:
            state[STATUS] = BAD_BLOCK
            return False
        state[DECODED] += size
        state[POS] = pos + 4 + length
        state[NEXT_BLOCK] = b + 1
    if state[NEXT_BLOCK] == nb and state[DONE] == 0:  # the raw tail ends the buffer
        tail = state[TAIL_BYTES]
        start = state[POS]
        if n_src - start != tail:
            state[STATUS] = BAD_TAIL
            return False
        done = state[DECODED]
        for k in range(tail):
            dst[done + k] = src[start + k]
        state[DECODED] = done + tail
        state[DONE] = 1
    return True


def band_source(src: np.ndarray, start: int, n_full: int, block_bytes: int, last_bytes: int, tail_bytes: int,
                elem_size: int, dst: np.ndarray, functions: np.ndarray, scratch: np.ndarray | None = None) -> tuple:
    """The band source of one bslz4 buffer (see the module docstring) whose first block's
    length word is at `start`: n_full blocks of block_bytes, a last one of last_bytes (0:
    none), tail_bytes raw, into dst (the frame's writable bytes, C-contiguous); functions:
    int64 [LZ4_decompress_safe, bit transpose, DECTRIS or BITSHUFFLE, own] (addresses, the
    transpose's kind, and 1 where `kernels.bit_transpose` may take the blocks it covers)."""
    src = src.view()
    src.flags.writeable = False  # one compiled variant, whatever buffer the frame came in
    state = np.zeros(STATE_SIZE, dtype=np.int64)
    state[N_BLOCKS] = n_full + (1 if last_bytes > 0 else 0)
    state[POS] = start
    state[BLOCK_BYTES] = block_bytes
    state[LAST_BYTES] = last_bytes
    state[TAIL_BYTES] = tail_bytes
    state[ELEM_SIZE] = elem_size
    state[TOTAL] = dst.shape[0]
    if scratch is None or scratch.shape[0] < 2 * block_bytes:
        scratch = np.empty(2 * block_bytes, dtype=np.uint8)
    return src, dst, scratch, functions, state


def no_source() -> tuple:
    """The band source of a frame that is already decoded: nothing to do."""
    src = np.zeros(0, dtype=np.uint8)
    src.flags.writeable = False
    state = np.zeros(STATE_SIZE, dtype=np.int64)
    state[DONE] = 1
    return src, np.zeros(0, np.uint8), np.zeros(0, np.uint8), np.zeros(4, np.int64), state


@njit(boundscheck=False)
def decode_all(source):
    """Decode every remaining block (and the raw tail) of a band source; False if one is corrupt."""
    src, dst, scratch, functions, state = source
    return decode_upto(src, dst, scratch, functions, state, state[TOTAL])
