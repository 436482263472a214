"""numpy's summation order, compiled: sums that equal numpy's `np.sum` / `np.mean` bit for bit.

numpy's add.reduce of a contiguous float64 array starts from 0.0 and adds a pairwise sum
(numpy/_core/src/umath/loops_utils.h.src `pairwise_sum`): blocks of up to 128 values are
summed with 8 interleaved accumulators, longer ranges are split in two. Kernels that must
reproduce numpy results exactly (the per-image statistics) sum with `sum_like_numpy`.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit

@njit
def _block_sum(a, lo, n):
    """numpy's pairwise_sum leaf, for n <= 128 (numpy's PW_BLOCKSIZE): 8-way unrolled from n >= 8."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        j = lo + i
        r0 += a[j]
        r1 += a[j + 1]
        r2 += a[j + 2]
        r3 += a[j + 3]
        r4 += a[j + 4]
        r5 += a[j + 5]
        r6 += a[j + 6]
        r7 += a[j + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@njit
def _split(n):
    n2 = n // 2
    return n2 - n2 % 8


@njit
def _pairwise_sum(a, lo, n):
    """Sum of a[lo:lo + n] in numpy's order: blocks of up to 128 (`_block_sum`), larger
    ranges split in two (at n/2 rounded down to a multiple of 8) and the halves added. The
    recursion runs on an explicit stack (numba's cache does not handle recursive functions)."""
    if n <= 128:
        return _block_sum(a, lo, n)
    depth = 64  # halving from n < 2**63 reaches a block of <= 128 within 64 levels
    s_lo = np.empty(depth, dtype=np.int64)
    s_n = np.empty(depth, dtype=np.int64)
    s_left = np.empty(depth)  # the left half's sum, once known
    s_stage = np.zeros(depth, dtype=np.int8)  # 0 new, 1 left half pending, 2 right half pending
    top = 0
    s_lo[0], s_n[0] = lo, n
    while True:
        if s_n[top] > 128:  # descend into the left half
            s_stage[top] = 1
            s_lo[top + 1], s_n[top + 1], s_stage[top + 1] = s_lo[top], _split(s_n[top]), 0
            top += 1
            continue
        value = _block_sum(a, s_lo[top], s_n[top])
        while True:  # hand the value up until a right half is still to do
            if top == 0:
                return value
            top -= 1
            if s_stage[top] == 1:
                s_left[top] = value
                s_stage[top] = 2
                n2 = _split(s_n[top])
                s_lo[top + 1], s_n[top + 1], s_stage[top + 1] = s_lo[top] + n2, s_n[top] - n2, 0
                top += 1
                break
            value = s_left[top] + value


@njit
def sum_like_numpy(a, n):
    """np.sum(a[:n]) of a float64 array: the identity 0.0 plus the pairwise sum."""
    return 0.0 + _pairwise_sum(a, 0, n)


def pairwise_sum(a: np.ndarray) -> float:
    """np.sum of a 1D float64 array, computed by the compiled kernel (for tests and checks)."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError("a must be 1D")
    return float(sum_like_numpy(a, a.size))
