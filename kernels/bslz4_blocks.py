"""Walk the block headers of a bitshuffle-LZ4 buffer (the DECTRIS `bslz4` encoding) and
validate them, without decompressing: every block's big-endian length must lie within the
LZ4 bound of its decoded size and inside the buffer, and the raw tail of the last n mod 8
elements must end the buffer exactly. A Python loop over the ~2,200 blocks of a 4M frame
took 0.6 ms; compiled it is negligible.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit

OK = 0
TRUNCATED_HEADER = 1  # the buffer ends inside a block's length word
BAD_LENGTH = 2  # a block declares more bytes than LZ4 can produce or than the buffer holds
BAD_TAIL = 3  # the bytes after the last block are not the raw tail


@njit(boundscheck=False, inline="always")
def block_length(src, pos, size):
    """(status, length) of the block whose big-endian length word is at src[pos], for size
    decoded bytes: OK if the word and the block lie inside src and the length is within the
    LZ4 bound of size (`walk_blocks`, and the band decoder block by block)."""
    if pos + 4 > src.shape[0]:
        return TRUNCATED_HEADER, np.int64(0)
    length = (np.int64(src[pos]) << 24) | (np.int64(src[pos + 1]) << 16) | (np.int64(src[pos + 2]) << 8) \
        | np.int64(src[pos + 3])
    if length > size + size // 255 + 16 or pos + 4 + length > src.shape[0]:
        return BAD_LENGTH, length
    return OK, length


@njit(boundscheck=False)
def walk_blocks(src, start, block_bytes, n_full, last_bytes, tail_bytes, offsets):
    """(status, position) of the walk over a buffer `src` (uint8) whose first block header
    starts at `start`: n_full blocks of block_bytes decoded bytes, then one of last_bytes if
    nonzero, then tail_bytes raw bytes. The offset of each block's length word goes to
    offsets; position is where the walk stopped (the failing block, or the end)."""
    end = src.shape[0]
    pos = start
    n_blocks = n_full + (1 if last_bytes > 0 else 0)
    for b in range(n_blocks):
        size = block_bytes if b < n_full else last_bytes
        status, length = block_length(src, pos, size)
        if status != OK:
            return status, pos
        offsets[b] = pos
        pos += 4 + length
    if end - pos != tail_bytes:
        return BAD_TAIL, pos
    return OK, pos
