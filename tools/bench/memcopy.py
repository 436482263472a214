"""The memory-bandwidth copy the benchmarks compare with (memcpy_ratio).

A copy repeated between the same two buffers is served partly from the last-level cache when
they fit it (a 4M uint32 frame is 17.9 MB, two of them against a 32 MB L3), which is not what
"a memory copy of the frame" means. Here each copy takes the next pair from a pool of sources
and destinations of twice the cache's size, so that it reads and writes main memory.
"""

from __future__ import annotations

import os

import numpy as np

from tools.bench.timing import best_rate

DEFAULT_LLC_BYTES = 32 << 20


def last_level_cache_bytes() -> int:
    """The largest CPU cache of cpu0 (sysfs), or 32 MB when it cannot be read."""
    sizes = []
    root = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(root):
            if entry.startswith("index"):
                with open(os.path.join(root, entry, "size")) as f:
                    text = f.read().strip()
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                sizes.append(int(text.rstrip("KMG")) * scale)
    except (OSError, ValueError):
        pass
    return max(sizes, default=DEFAULT_LLC_BYTES)


def copy_pool_pairs(frame_bytes: int, cache_bytes: int) -> int:
    """Source/destination pairs whose bytes are at least twice the cache (and at least 2)."""
    return max(2, -(-cache_bytes // frame_bytes))


def memory_copy_rate(frame: np.ndarray, n: int) -> tuple[float, float]:
    """(copies/s, median s) of `frame`-sized copies between buffers taken in turn from a pool
    of twice the last-level cache, so that every copy reads and writes main memory."""
    pairs = copy_pool_pairs(frame.nbytes, last_level_cache_bytes())
    sources = [frame.copy() for _ in range(pairs)]
    targets = [np.empty_like(frame) for _ in range(pairs)]
    for target in targets:
        target.fill(0)  # faulted in before timing
    turn = iter(range(1 << 62))

    def copy() -> None:
        i = next(turn) % pairs
        np.copyto(targets[i], sources[i])

    return best_rate(copy, max(n, 2 * pairs))


