"""The GFNI bit transpose of bitshuffled blocks (`kernels.bit_transpose`) against bitshuffle.

The shuffle masks are checked on any CPU by a numpy emulation of the instructions (byte
shuffles and the GF(2) affine product); the compiled transpose, where the CPU has GFNI and
AVX-512, against bitshuffle's own encoder over pixel sizes, block sizes and values.
"""

from __future__ import annotations

import bitshuffle
import numpy as np
import pytest

from kernels import bit_transpose as bt

needs_gfni = pytest.mark.skipif(not bt.AVAILABLE, reason="the CPU has no GFNI with AVX-512")


def shuffled(x: np.ndarray) -> np.ndarray:
    """x (a multiple of 8 pixels) bitshuffled as one block, as bytes."""
    return bitshuffle.bitshuffle(x, block_size=x.size).view(np.uint8)


def shuffle(a: np.ndarray, b: np.ndarray, mask: list) -> np.ndarray:
    """LLVM's shufflevector of two 64-byte registers."""
    return np.concatenate([a, b])[np.asarray(mask)]


def affine(x: np.ndarray, a: np.ndarray) -> np.ndarray:
    """vgf2p8affineqb(x, A, 0): bit i of result byte p is the parity of (A's byte 7 - i of p's
    64-bit word) AND x[p]."""
    out = np.zeros(64, np.uint8)
    for p in range(64):
        word = a[8 * (p // 8):8 * (p // 8) + 8]
        for i in range(8):
            out[p] |= (bin(int(word[7 - i]) & int(x[p])).count("1") & 1) << i
    return out


def emulated_chunk(rows: np.ndarray, elem: int) -> np.ndarray:
    """The kernel's rounds, in numpy, on the 64 row bytes of 8 * elem rows: 512 pixels' bytes."""
    single_bits = np.array([1 << (i % 8) for i in range(64)], np.uint8)
    squares = []
    for b in range(elem):
        r = rows[8 * b:8 * b + 8]
        a = [[shuffle(r[2 * i], r[2 * i + 1], bt._PAIRS[h]) for h in range(2)] for i in range(4)]
        q = [None] * 8
        for h in range(2):
            quads = [[shuffle(a[2 * p][h], a[2 * p + 1][h], bt._QUADS[g]) for g in range(2)] for p in range(2)]
            for g in range(2):
                for f in range(2):
                    q[4 * h + 2 * g + f] = shuffle(quads[0][g], quads[1][g], bt._OCTETS[f])
        squares.append([affine(single_bits, v) for v in q])
    out = []
    for m in range(8):
        low = [shuffle(squares[0][m], squares[1][m], bt._HALVES[half]) for half in range(2)]
        if elem == 2:
            out += low
            continue
        high = [shuffle(squares[2][m], squares[3][m], bt._HALVES[half]) for half in range(2)]
        out += [shuffle(low[q // 2], high[q // 2], bt._QUARTERS[q]) for q in range(4)]
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", ["<u2", "<u4"])
def test_the_masks_untranspose_512_pixels(dtype):
    rng = np.random.default_rng(5)
    x = rng.integers(0, np.iinfo(dtype).max, 512, dtype=np.uint64, endpoint=True).astype(dtype)
    rows = shuffled(x).reshape(8 * x.itemsize, 64)
    np.testing.assert_array_equal(emulated_chunk(rows, x.itemsize).view(dtype), x)


@needs_gfni
@pytest.mark.parametrize("dtype,n", [("<u4", 512), ("<u4", 2048), ("<u4", 4096), ("<u2", 512), ("<u2", 4096),
                                     ("<i4", 2048), ("<u2", 1536)])
def test_untranspose_equals_bitshuffle(dtype, n):
    rng = np.random.default_rng(n)
    info = np.iinfo(dtype)
    for x in (rng.integers(info.min, info.max, n, dtype=np.int64, endpoint=True).astype(dtype),
              rng.poisson(0.3, n).astype(dtype), np.full(n, info.max, dtype), np.zeros(n, dtype)):
        x[rng.integers(0, n, 7)] = info.max  # overloads or gap pixels among the counts
        out = np.full(n, 3, dtype)
        assert bt.untranspose_array(shuffled(x).copy(), out.view(np.uint8), x.itemsize)
        np.testing.assert_array_equal(out, x)


@needs_gfni
@pytest.mark.parametrize("dtype,n", [("<u4", 520), ("<u4", 8), ("u1", 2048), ("<u8", 1024)])
def test_blocks_it_does_not_cover_are_left_to_the_library(dtype, n):
    x = np.arange(n, dtype=dtype)
    out = np.zeros(n, dtype)
    assert not bt.untranspose_array(shuffled(x).copy(), out.view(np.uint8), x.itemsize)
    assert not out.any()

