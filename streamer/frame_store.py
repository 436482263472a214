"""The bounded store of compressed frames kept for re-integration once a crystal model exists.

Frames are copied into one ring buffer of `max_bytes` (anonymous memory, mapped once) and the
oldest are overwritten first. Holding on to each received buffer instead makes every frame's
memory fresh: first-time page faults cost ~7 us per 4 KB page on the 2-core test VM, ~2.5 ms of
the receiver thread per 4M frame (1.5 MB), against ~0.15 ms for the copy into memory already
mapped. The ring's memory is mapped on first use, so the first lap would still pay those faults:
`start_mapping()` maps it ahead of the write position on a low-priority thread instead, which
uses the idle time before and between frames (a processor mostly waits for its detector). It
faults pages in with MADV_POPULATE_WRITE outside the lock, so frames never wait for it (kernels
before Linux 5.14: zeroes chunks under the lock, only where no frame has been written).

Shared (`shared=True`, Linux): the ring is a memfd that local workers map read-only
(`StoreReader`), so the fan-out sends them a frame's place in the ring instead of its bytes.
That saves the ipc send: ~0.3 ms of the main process's CPU per 4M frame at 150 frames/s on the
2-core VM (the worker reading the ring costs about what its receive did). A frame sent that
way is pinned (`add(frame, pin=...)`) until `release(pin)`: the ring never overwrites a frame
a worker may still be reading; a frame that would is not stored.
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable

from streamer.series import EncodedFrame

MAP_CHUNK_BYTES = 1 << 20  # mapped per step (a page multiple); zeroed under the lock where populate is missing
MAP_AHEAD_BYTES = 512 << 20  # how far ahead of the write position the mapping thread goes
HEADER_BYTES = mmap.ALLOCATIONGRANULARITY  # a shared ring's first page: its token, then the ring
TOKEN_BYTES = 16  # random: a worker that reads them back has mapped this very store


@dataclasses.dataclass(frozen=True)
class _Slot:
    offset: int
    size: int
    frame: EncodedFrame  # the frame's record without its data (which is in the ring)


class FrameStore:
    """Compressed frames by (series, image) in a ring of `max_bytes`; the newest stay."""

    def __init__(self, max_bytes: int, shared: bool = False):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0  # bytes of the frames held
        self.frames: OrderedDict[tuple[str, int], _Slot] = OrderedDict()  # oldest first
        self._fd = -1
        self.token = b""
        if self.max_bytes > 0 and shared and hasattr(os, "memfd_create"):
            self._fd = os.memfd_create("xtalstream-frames", os.MFD_CLOEXEC)
            os.ftruncate(self._fd, HEADER_BYTES + self.max_bytes)
            self.token = os.urandom(TOKEN_BYTES)
            os.pwrite(self._fd, self.token, 0)
            self._ring = mmap.mmap(self._fd, self.max_bytes, flags=mmap.MAP_SHARED, offset=HEADER_BYTES)
        else:
            self._ring = mmap.mmap(-1, self.max_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) \
                if self.max_bytes > 0 else None
        self._head = 0  # where the next frame goes
        self._lap = 0  # times the head went back to 0: lap * max_bytes + offset only grows
        self._pins: dict[Hashable, int] = {}  # pinned frames' slots, oldest first: pin -> lap position
        self._released: deque[Hashable] = deque()  # release() from other threads
        self._written = 0  # the ring below this offset has been written (mapped) at least once
        self._lock = threading.Lock()  # the ring's bytes: add/get vs the mapping thread
        self._more = threading.Condition(self._lock)
        self._closing = False
        self._ahead = 0  # how far past the written part start_mapping() maps
        self.mapper: threading.Thread | None = None  # the thread of start_mapping()

    @property
    def shared(self) -> bool:
        return self._fd >= 0

    def share(self) -> dict[str, str] | None:
        """Where a worker on this host maps the ring (`StoreReader.attach`), or None if not shared."""
        if self._fd < 0:
            return None
        return {"store_path": f"/proc/{os.getpid()}/fd/{self._fd}", "store_token": self.token.hex(),
                "store_bytes": str(self.max_bytes)}

    def add(self, frame: EncodedFrame, pin: Hashable | None = None) -> int | None:
        """Keep a copy of the frame; its offset in the ring, or None if it was not stored.

        With `pin`, the slot is not overwritten until `release(pin)`. A frame whose slot would
        overwrite a pinned one is not stored (the ring is too small for the frames in flight).
        """
        data = memoryview(frame.data).cast("B")
        size = data.nbytes
        if self._ring is None or size > self.max_bytes:
            return None
        while self._released:
            self._pins.pop(self._released.popleft(), None)
        wrap = self._head + size > self.max_bytes
        start = 0 if wrap else self._head
        lap = self._lap + wrap
        oldest_pinned = next(iter(self._pins.values()), None)
        if oldest_pinned is not None and (lap - 1) * self.max_bytes + start + size > oldest_pinned:
            return None  # it would overwrite a frame a worker may still be reading
        key = (frame.series_id, frame.image_number)
        if key in self.frames:
            self._pop(key)
        if wrap:  # the frames of the last lap past the head go
            while self.frames and self._oldest().offset >= self._head:
                self._pop(next(iter(self.frames)))
            self._head = 0
            self._lap += 1
        # Frames of the last lap are the oldest and lie at or after the head, in order.
        while self.frames and self._head <= self._oldest().offset < self._head + size:
            self._pop(next(iter(self.frames)))
        with self._lock:
            self._ring[self._head:self._head + size] = data
            self._written = max(self._written, self._head + size)
            self._more.notify()
        self.frames[key] = _Slot(self._head, size, dataclasses.replace(frame, data=b""))
        if pin is not None:
            self._pins[pin] = self._lap * self.max_bytes + self._head
        offset = self._head
        self._head += size
        self.nbytes += size
        return offset

    def release(self, pin: Hashable) -> None:
        """A pinned frame's slot may be overwritten again (any thread; unknown pins are ignored)."""
        self._released.append(pin)

    def get(self, series_id: str, image_number: int) -> EncodedFrame | None:
        """The frame with a copy of its bytes (the ring slot is overwritten later), or None."""
        slot = self.frames.get((series_id, image_number))
        if slot is None or self._ring is None:
            return None
        with self._lock:
            data = self._ring[slot.offset:slot.offset + slot.size]
        return dataclasses.replace(slot.frame, data=data)

    def start_mapping(self, ahead_bytes: int = MAP_AHEAD_BYTES) -> None:
        """Map the ring up to `ahead_bytes` past the write position on a background thread (nice 19).

        Calling it again raises the distance (`max_bytes`: map the whole ring now).
        """
        if self._ring is None:
            return
        with self._lock:
            self._ahead = max(self._ahead, int(ahead_bytes))
            self._more.notify()
        if self.mapper is None:
            self.mapper = threading.Thread(target=self._map_ahead, name="frame-store-map", daemon=True)
            self.mapper.start()

    def wait_mapped(self, timeout: float | None = None) -> bool:
        """Block until the whole ring is mapped (`start_mapping(max_bytes)` first); False on timeout."""
        if self.mapper is not None:
            self.mapper.join(timeout)
            return not self.mapper.is_alive()
        return self._ring is None

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._more.notify()
        if self.mapper is not None:
            self.mapper.join()
        self.frames.clear()
        self.nbytes = 0
        self._pins.clear()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._fd >= 0:  # the memory goes when the workers unmap it too
            os.close(self._fd)
            self._fd = -1

    def _map_ahead(self) -> None:
        try:  # Linux: a thread id is a process id for setpriority; let every other thread go first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        assert self._ring is not None
        base = ctypes.c_char.from_buffer(self._ring)  # an export: released before close()
        address = ctypes.addressof(base)
        populate = _populate_write()
        mapped = 0
        try:
            while mapped < self.max_bytes:
                with self._lock:
                    while not self._closing and mapped >= min(self._written + self._ahead, self.max_bytes):
                        self._more.wait()
                    if self._closing:
                        return
                    written = self._written
                    if populate is not None:  # from the page add() is in: madvise takes page addresses
                        written -= written % mmap.PAGESIZE
                    start = max(mapped, written)  # never below what add() has written (or its page)
                    if start >= self.max_bytes:
                        return
                    end = min(start + MAP_CHUNK_BYTES, self.max_bytes)
                    if populate is None:  # zeroes: only where add() cannot be writing
                        ctypes.memset(address + start, 0, end - start)  # releases the GIL
                        mapped = end
                        continue
                # Faulting pages in leaves their bytes alone (the page add() is writing in too):
                # add() need not wait for it (holding the lock here kept frames waiting up to 0.3 s
                # while the ring was first mapped).
                if populate(ctypes.c_void_p(address + start), end - start, MADV_POPULATE_WRITE) != 0:
                    populate = None  # a kernel without it (before Linux 5.14): memset the chunk
                    continue
                mapped = end
        finally:
            del base

    def _oldest(self) -> _Slot:
        return self.frames[next(iter(self.frames))]

    def _pop(self, key: tuple[str, int]) -> None:
        self.nbytes -= self.frames.pop(key).size


MADV_POPULATE_WRITE = 23  # Linux 5.14: fault pages in writable without writing them


def _populate_write():
    """libc's madvise (called without the GIL), or None where it cannot populate pages."""
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    madvise.restype = ctypes.c_int
    return madvise


class StoreReader:
    """A worker's read-only mapping of a shared `FrameStore` on the same host."""

    def __init__(self, fd: int, nbytes: int):
        self._map = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=HEADER_BYTES)
        self.nbytes = nbytes

    @classmethod
    def attach(cls, path: str, token_hex: str, nbytes: int) -> StoreReader | None:
        """Map the store the collector offered; None when this process cannot (another host,
        another user, a store since closed): it then gets every frame's bytes instead."""
        try:
            token = bytes.fromhex(token_hex)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except (OSError, ValueError):
            return None
        try:
            if len(token) != TOKEN_BYTES or os.pread(fd, TOKEN_BYTES, 0) != token \
                    or os.fstat(fd).st_size != HEADER_BYTES + nbytes:
                return None
            return cls(fd, nbytes)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)  # the mapping keeps the memory

    def view(self, offset: int, size: int) -> memoryview:
        """The bytes of the frame at `offset` (valid until its result is sent)."""
        if offset < 0 or size < 0 or offset + size > self.nbytes:
            raise ValueError(f"frame at {offset}+{size} outside the store's {self.nbytes} bytes")
        return memoryview(self._map)[offset:offset + size]

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a frame's view is still held: the mapping goes with the process
            pass
