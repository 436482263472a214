"""Byte flags gathered into bits and the bit scan, against numpy's packbits and a plain search."""

import numpy as np
import pytest

from kernels.bit_flags import gather_flags, lowest_bit
from kernels.jit import njit


@njit
def _scan(words):
    """Indices of the set bits of words, lowest first, by `lowest_bit`."""
    out = np.empty(words.shape[0] * 64, np.int64)
    n = 0
    for q in range(words.shape[0]):
        word = words[q]
        while word != 0:
            out[n] = q * 64 + lowest_bit(word)
            word &= word - np.uint64(1)
            n += 1
    return out[:n]


@njit
def _gather(flags, bits):
    gather_flags(flags.view(np.uint64), bits)


@pytest.mark.parametrize("density", [0.0, 0.003, 0.3, 1.0])
def test_gathered_flags_are_numpys_packbits_and_the_scan_finds_every_set_one(density):
    rng = np.random.default_rng(7)
    flags = (rng.random(64 * 37) < density).astype(np.uint8)
    bits = np.zeros(flags.size // 8, np.uint8)
    _gather(flags, bits)
    assert np.array_equal(bits, np.packbits(flags, bitorder="little"))
    assert np.array_equal(_scan(bits.view(np.uint64)), np.flatnonzero(flags))


def test_lowest_bit_of_every_single_bit_and_of_words_with_higher_bits_set():
    for k in range(64):
        single = np.array([np.uint64(1) << np.uint64(k)])
        assert _scan(single).tolist() == [k]
        topped = np.array([single[0] | np.uint64(0xFFFFFFFFFFFFFFFF) << np.uint64(k)])
        assert _scan(topped).tolist() == list(range(k, 64))
