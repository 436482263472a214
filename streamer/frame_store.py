"""The bounded store of compressed frames kept for re-integration once a crystal model exists.

Frames are copied into one ring buffer of `max_bytes` (anonymous memory, mapped once) and the
oldest are overwritten first. Holding on to each received buffer instead makes every frame's
memory fresh: first-time page faults cost ~7 us per 4 KB page on the 2-core test VM, ~2.5 ms of
the receiver thread per 4M frame (1.5 MB), against ~0.15 ms for the copy into memory already
mapped. The ring's memory is mapped on first use, so the first lap would still pay those faults:
`start_mapping()` maps it ahead of the write position on a low-priority thread instead, which
uses the idle time before and between frames (a processor mostly waits for its detector).
"""

from __future__ import annotations

import ctypes
import dataclasses
import mmap
import os
import threading
from collections import OrderedDict

from streamer.series import EncodedFrame

MAP_CHUNK_BYTES = 1 << 20  # mapped per lock hold: a frame waits at most ~3 ms for it
MAP_AHEAD_BYTES = 512 << 20  # how far ahead of the write position the mapping thread goes


@dataclasses.dataclass(frozen=True)
class _Slot:
    offset: int
    size: int
    frame: EncodedFrame  # the frame's record without its data (which is in the ring)


class FrameStore:
    """Compressed frames by (series, image) in a ring of `max_bytes`; the newest stay."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0  # bytes of the frames held
        self.frames: OrderedDict[tuple[str, int], _Slot] = OrderedDict()  # oldest first
        self._ring = mmap.mmap(-1, self.max_bytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) \
            if self.max_bytes > 0 else None
        self._head = 0  # where the next frame goes
        self._written = 0  # the ring below this offset has been written (mapped) at least once
        self._lock = threading.Lock()  # the ring's bytes: add/get vs the mapping thread
        self._more = threading.Condition(self._lock)
        self._closing = False
        self._ahead = 0  # how far past the written part start_mapping() maps
        self.mapper: threading.Thread | None = None  # the thread of start_mapping()

    def add(self, frame: EncodedFrame) -> None:
        data = memoryview(frame.data).cast("B")
        size = data.nbytes
        if self._ring is None or size > self.max_bytes:
            return
        key = (frame.series_id, frame.image_number)
        if key in self.frames:
            self._pop(key)
        if self._head + size > self.max_bytes:  # wrap: the frames of the last lap past here go
            while self.frames and self._oldest().offset >= self._head:
                self._pop(next(iter(self.frames)))
            self._head = 0
        # Frames of the last lap are the oldest and lie at or after the head, in order.
        while self.frames and self._head <= self._oldest().offset < self._head + size:
            self._pop(next(iter(self.frames)))
        with self._lock:
            self._ring[self._head:self._head + size] = data
            self._written = max(self._written, self._head + size)
            self._more.notify()
        self.frames[key] = _Slot(self._head, size, dataclasses.replace(frame, data=b""))
        self._head += size
        self.nbytes += size

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
        if self._ring is not None:
            self._ring.close()
            self._ring = None

    def _map_ahead(self) -> None:
        try:  # Linux: a thread id is a process id for setpriority; let every other thread go first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        assert self._ring is not None
        base = ctypes.c_char.from_buffer(self._ring)  # an export: released before close()
        address = ctypes.addressof(base)
        mapped = 0
        try:
            while mapped < self.max_bytes:
                with self._lock:
                    while not self._closing and mapped >= min(self._written + self._ahead, self.max_bytes):
                        self._more.wait()
                    if self._closing:
                        return
                    start = max(mapped, self._written)  # never below what add() has written
                    if start >= self.max_bytes:
                        return
                    end = min(start + MAP_CHUNK_BYTES, self.max_bytes)
                    ctypes.memset(address + start, 0, end - start)  # releases the GIL
                    mapped = end
        finally:
            del base

    def _oldest(self) -> _Slot:
        return self.frames[next(iter(self.frames))]

    def _pop(self, key: tuple[str, int]) -> None:
        self.nbytes -= self.frames.pop(key).size
