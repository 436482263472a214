"""The frame store (a ring of compressed frames) and the allocator setting for frame-sized blocks."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from streamer import frame_store
from streamer.frame_store import FrameStore
from streamer.series import EncodedFrame


def _frame(i: int, size: int, series: str = "s") -> EncodedFrame:
    data = np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8).tobytes()
    return EncodedFrame(series, i, (10, 10), "<u1", "raw", data, received_at=float(i))


def _check(store: FrameStore, added: list[EncodedFrame]) -> None:
    """Invariants: within the bound, the newest frames in order, each with its exact bytes."""
    assert store.nbytes == sum(len(added[k[1]].data) for k in store.frames) <= store.max_bytes
    held = [k[1] for k in store.frames]
    assert held == [f.image_number for f in added[len(added) - len(held):]]  # a suffix: the newest
    for i in held:
        got = store.get("s", i)
        assert bytes(got.data) == added[i].data and got.received_at == added[i].received_at


def test_ring_keeps_the_newest_frames_intact_over_many_laps():
    rng = np.random.default_rng(7)
    store = FrameStore(max_bytes=10_000)
    added = []
    for i in range(400):
        frame = _frame(i, int(rng.integers(1, 3000)))
        added.append(frame)
        store.add(frame)
        _check(store, added)
        # a ring loses at most one frame's worth at its end and one at the write position
        assert store.nbytes >= min(sum(len(f.data) for f in added), store.max_bytes - 2 * 3000)
    store.close()


def test_oversized_frames_are_not_stored_and_a_repeated_key_replaces():
    store = FrameStore(max_bytes=1000)
    store.add(_frame(0, 1001))
    assert store.get("s", 0) is None and store.nbytes == 0
    store.add(_frame(1, 400))
    again = _frame(2, 300)
    store.add(EncodedFrame("s", 1, again.shape, again.dtype, "raw", again.data))
    assert len(store.frames) == 1 and store.nbytes == 300 and bytes(store.get("s", 1).data) == again.data
    store.close()


def test_mapping_thread_never_overwrites_stored_frames(monkeypatch):
    monkeypatch.setattr(frame_store, "MAP_CHUNK_BYTES", 64)  # many small steps racing with add()
    store = FrameStore(max_bytes=200_000)
    store.start_mapping(ahead_bytes=5_000)
    added = []
    for i in range(300):
        added.append(_frame(i, 1000 + 7 * i))
        store.add(added[-1])
    _check(store, added)
    store.close()
    assert store.frames == {} and store.get("s", 299) is None


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_stops_page_faults_on_frame_sized_copies():
    # cbor2 copying a 1.5 MB byte string out of a fresh buffer, as the receiver does per v2 frame:
    # with glibc's defaults ~1100 minor faults per message (measured), none once memory is kept.
    code = textwrap.dedent("""
        import os, resource, cbor2
        from streamer.allocator import keep_freed_memory
        assert keep_freed_memory() and keep_freed_memory()
        payload = cbor2.dumps({"data": os.urandom(1_500_000)})
        for _ in range(5):
            cbor2.loads(bytearray(payload))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(50):
            cbor2.loads(bytearray(payload))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) < 20  # 1.5 MB is ~370 pages: any return to the kernel shows as hundreds


def test_whole_ring_mapped_on_request_then_frames_still_stored():
    store = FrameStore(max_bytes=3 << 20)
    store.start_mapping(ahead_bytes=1 << 20)
    store.start_mapping(ahead_bytes=store.max_bytes)  # raises the distance: the whole ring
    assert store.wait_mapped(30.0)
    added = [_frame(i, 100_000) for i in range(50)]
    for frame in added:
        store.add(frame)
    _check(store, added)
    store.close()
