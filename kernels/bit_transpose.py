"""The bit transpose of bitshuffle-LZ4 blocks of 16- and 32-bit pixels, by AVX-512 GFNI.

Decoding a bslz4 block is LZ4 (the codec library's C, `kernels.bslz4_native`) and then a
bit transpose: the block holds, for each bit of the pixel type, a row of n/8 bytes with that
bit of every pixel (bit c of row byte k is pixel 8k + c's). The libraries' C transposes use
128/256-bit shifts and movemasks: 1.1-1.3 ms of the 2.6 ms a 4M uint32 frame takes to decode
(measured here, Zen 4). This one takes 0.5: per 64 row bytes it regroups the rows' bytes by
pixel octet with two-input byte shuffles (three rounds, eight rows to eight registers), turns
each octet's 8 x 8 bit square with one GF(2) affine instruction (`vgf2p8affineqb`, whose matrix
operand is the square itself), and interleaves the pixel bytes back with two more rounds.

It is compiled only where the host CPU has GFNI, AVX-512F and AVX-512BW (`AVAILABLE`), as
numba targets the host; elsewhere `untranspose` declines and the library's transpose runs.
`streamer.band_decode` checks it on random blocks against bitshuffle before it trusts it.
It covers blocks of a multiple of 512 pixels (8192-byte blocks, as DECTRIS detectors and the
HDF5 filter write: 2048 uint32 or 4096 uint16 pixels); other blocks (a frame's shorter last
block, mostly) and 1- and 8-byte pixels take the library's transpose, as every block does
with XTALSTREAM_BIT_TRANSPOSE=library in the environment (`streamer.band_decode`). The
reference is bitshuffle's own encoder (tests/test_kernel_bit_transpose.py).
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import config
from numba.core.extending import intrinsic

from kernels.jit import njit

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V64 = ir.VectorType(_I8, 64)  # one 512-bit register of bytes
CHUNK_ROW_BYTES = 64  # row bytes per call: 512 pixels


def _host_has_gfni() -> bool:
    """GFNI with AVX-512F/BW on the CPU numba compiles for (the host, unless NUMBA_CPU_NAME names another)."""
    if config.CPU_NAME not in (None, "host"):
        return False
    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # pragma: no cover - llvmlite cannot read them on this platform
        return False
    return all(features.get(name, False) for name in ("gfni", "avx512f", "avx512bw"))


AVAILABLE = _host_has_gfni()


def _octet_masks() -> tuple[list, list, list]:
    """The three byte-shuffle rounds that regroup eight rows R_0..R_7 (64 bytes each: row bytes
    k = 0..63) into eight registers Q_m, m = 0..7, whose byte 8t + 7 - j is R_j[8m + t]: the
    bit square of pixels 8k..8k+7 (k = 8m + t) in one 64-bit word, rows in reverse so that the
    affine instruction gives pixel bytes with bit j from row j. Shuffle indices below 64 take
    the first operand's byte, the others the second's."""
    # round 1, (R_2i, R_2i+1) -> A_i[h]: byte 2(k - 32h) + s is R_2i+s[k], k in [32h, 32h + 32)
    pairs = [[32 * h + kk + 64 * s for kk in range(32) for s in range(2)] for h in range(2)]
    # round 2, (A_2p[h], A_2p+1[h]) -> B_p[g]: byte 4k' + u is row 4p + u at k = 32h + 16g + k'
    quads = [[2 * (16 * g + kk) + u % 2 + 64 * (u // 2) for kk in range(16) for u in range(4)] for g in range(2)]
    # round 3, (B_0[g], B_1[g]) -> Q: byte 8k'' + 7 - j is row j at k = 32h + 16g + 8f + k''
    octets = []
    for f in range(2):
        mask = [0] * 64
        for kk in range(8):
            for j in range(8):
                mask[8 * kk + 7 - j] = 4 * (8 * f + kk) + j % 4 + 64 * (j // 4)
        octets.append(mask)
    return pairs, quads, octets


def _interleave_masks() -> tuple[list, list]:
    """The rounds that put the pixel bytes back in order. T_b (byte b of the pixels, for the 64
    pixels of one Q): byte 8t + c is byte b of pixel 8t + c. Round 1, (T_b, T_b+1) -> S[half]:
    byte 2(p - 32 half) + s is byte b + s of pixel p, p in [32 half, 32 half + 32) (for 16-bit
    pixels these are the output). Round 2, (S from T_0, T_1 and S from T_2, T_3) -> O_q: byte
    4(p - 16q) + b of pixel p in [16q, 16q + 16)."""
    halves = [[p + 64 * s for p in range(32 * half, 32 * half + 32) for s in range(2)] for half in range(2)]
    quarters = [[2 * (p - 32 * (q // 2)) + b % 2 + 64 * (b // 2) for p in range(16 * q, 16 * q + 16) for b in range(4)]
                for q in range(4)]
    return halves, quarters


_PAIRS, _QUADS, _OCTETS = _octet_masks()
_HALVES, _QUARTERS = _interleave_masks()


def _mask(indices: list) -> ir.Constant:
    return ir.Constant(ir.VectorType(_I32, len(indices)), [ir.Constant(_I32, i) for i in indices])


def _chunk_codegen(elem: int):
    """LLVM IR of one chunk: 64 row bytes of each of the 8 * elem rows -> 512 pixels."""

    def codegen(context, builder, signature, args):
        src, dst, row = args
        affine_type = ir.FunctionType(_V64, [_V64, _V64, _I8])
        name = "llvm.x86.vgf2p8affineqb.512"
        affine = builder.module.globals.get(name) or ir.Function(builder.module, affine_type, name)
        single_bits = ir.Constant(_V64, [ir.Constant(_I8, 1 << (i % 8)) for i in range(64)])
        pointer = _V64.as_pointer()
        shuffle = builder.shuffle_vector

        def load(r):
            address = builder.add(src, builder.mul(row, ir.Constant(_I64, r)))
            return builder.load(builder.inttoptr(address, pointer), align=1)

        def store(value, offset):
            builder.store(value, builder.inttoptr(builder.add(dst, ir.Constant(_I64, offset)), pointer), align=1)

        squares = []  # squares[b][m]: byte b of pixels 64m .. 64m + 63
        for b in range(elem):
            rows = [load(8 * b + j) for j in range(8)]
            a = [[shuffle(rows[2 * i], rows[2 * i + 1], _mask(_PAIRS[h])) for h in range(2)] for i in range(4)]
            q = [None] * 8
            for h in range(2):
                quads = [[shuffle(a[2 * p][h], a[2 * p + 1][h], _mask(_QUADS[g])) for g in range(2)] for p in range(2)]
                for g in range(2):
                    for f in range(2):
                        q[4 * h + 2 * g + f] = shuffle(quads[0][g], quads[1][g], _mask(_OCTETS[f]))
            squares.append([builder.call(affine, [single_bits, v, ir.Constant(_I8, 0)]) for v in q])
        for m in range(8):
            low = [shuffle(squares[0][m], squares[1][m], _mask(_HALVES[half])) for half in range(2)]
            if elem == 2:
                for half in range(2):
                    store(low[half], 128 * m + 64 * half)
                continue
            high = [shuffle(squares[2][m], squares[3][m], _mask(_HALVES[half])) for half in range(2)]
            for q in range(4):
                store(shuffle(low[q // 2], high[q // 2], _mask(_QUARTERS[q])), 256 * m + 64 * q)
        return context.get_dummy_value()

    return codegen


@intrinsic
def _chunk_u4(typingctx, src, dst, row):
    """512 uint32 pixels to dst from the 32 rows (row bytes apart) of a block, src at their byte k0."""
    return types.void(types.int64, types.int64, types.int64), _chunk_codegen(4)


@intrinsic
def _chunk_u2(typingctx, src, dst, row):
    """512 uint16 pixels to dst from the 16 rows (row bytes apart) of a block, src at their byte k0."""
    return types.void(types.int64, types.int64, types.int64), _chunk_codegen(2)


if AVAILABLE:

    @njit(boundscheck=False, inline="always")
    def untranspose(src, dst, n, elem):
        """Bit-transposed block at address src (n pixels of elem bytes) -> pixels at address dst.
        False (nothing written) when this transpose does not cover the block."""
        row = n // 8
        if n % 512 != 0 or (elem != 4 and elem != 2):
            return False
        for k0 in range(0, row, CHUNK_ROW_BYTES):
            if elem == 4:
                _chunk_u4(src + k0, dst + 32 * k0, row)
            else:
                _chunk_u2(src + k0, dst + 16 * k0, row)
        return True

else:

    @njit(inline="always")
    def untranspose(src, dst, n, elem):
        """Without GFNI and AVX-512 on this CPU: always declines (the library's transpose runs)."""
        return False


@njit(boundscheck=False)
def untranspose_array(block, out, elem):
    """`untranspose` of one bit-transposed block (uint8 array) into out (uint8, as many bytes)."""
    if out.shape[0] != block.shape[0] or block.shape[0] % elem != 0:
        return False
    return untranspose(block.ctypes.data, out.ctypes.data, block.shape[0] // elem, elem)
