"""glibc malloc settings for the processes that pass megabyte-sized messages (receiver, workers).

Every compressed frame arrives in a fresh ZeroMQ buffer (1.5 MB for a 4M detector, several MB
for a 16M), allocated by ZeroMQ's I/O thread, and is often copied once more (a stream v2
message by cbor2). With glibc's defaults such blocks go back to the kernel when freed (above the
sliding mmap threshold they are mmapped; a free heap top above the trim threshold is trimmed; a
thread arena's heap that empties is unmapped unless the top pad keeps it) and are page-faulted
in again for the next frame. Measured on the bench e2e sender (4M, stream v2): the receiver
thread took ~1080 minor faults and 2.3 ms of CPU per message, ZeroMQ's I/O thread ~250 faults
and ~3.9 ms; with the settings below, ~10-20 faults and 0.4 ms / 0.7 ms. The cost is that a
process keeps the memory of its largest backlog (bounded by the high-water marks) mapped.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameter numbers (malloc.h)
SETTINGS = (
    (M_MMAP_THRESHOLD, 32 * 1024 * 1024),  # blocks below this come from the heap (glibc's upper bound on 64-bit)
    (M_TRIM_THRESHOLD, 1024 * 1024 * 1024),  # free heap top kept up to this
    (M_TOP_PAD, 64 * 1024 * 1024),  # a thread arena's emptied heap (64 MB) is kept, not unmapped
)

_done = False


def keep_freed_memory() -> bool:
    """Keep freed blocks below 32 MB for reuse (glibc only); True if the settings took effect.

    Idempotent and cheap: call it in every process that receives frames.
    """
    global _done
    if _done:
        return True
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok = all([bool(libc.mallopt(param, value)) for param, value in SETTINGS])
    except (OSError, AttributeError) as exc:  # no mallopt in this C library
        log.debug("mallopt unavailable: %s", exc)
        return False
    _done = ok
    return ok
