"""The frame store (a ring of compressed frames) and the allocator setting for frame-sized blocks."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer import frame_store
from streamer.frame_store import FrameStore, StoreReader
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


@pytest.mark.parametrize("shared", [False, True])
def test_ring_keeps_the_newest_frames_intact_over_many_laps(shared):
    rng = np.random.default_rng(7)
    store = FrameStore(max_bytes=10_000, shared=shared)
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


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("populate", [True, False], ids=["populate", "memset"])
def test_mapping_thread_never_overwrites_stored_frames(monkeypatch, shared, populate):
    """Frames added while the ring is mapped, past the mapper and at unaligned offsets, keep
    their bytes: pages faulted in (MADV_POPULATE_WRITE, which takes every chunk) or, on a kernel
    without it, zeroed only where nothing was written."""
    real = frame_store._populate_write()
    results = []

    def madvise(address, length, advice):
        results.append(real(address, length, advice) if populate else -1)  # -1: before Linux 5.14
        return results[-1]

    monkeypatch.setattr(frame_store, "_populate_write", lambda: madvise)
    monkeypatch.setattr(frame_store, "MAP_CHUNK_BYTES", 4096 if populate else 64)  # many steps racing with add()
    store = FrameStore(max_bytes=200_000, shared=shared)
    store.start_mapping(ahead_bytes=5_000)
    added = []
    for i in range(300):
        added.append(_frame(i, 1000 + 7 * i))
        store.add(added[-1])
    _check(store, added)
    store.start_mapping(ahead_bytes=store.max_bytes)
    assert store.wait_mapped(30)
    _check(store, added)
    assert results and all(r == 0 for r in results) == populate
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


def _reader(store: FrameStore) -> StoreReader:
    info = store.share()
    reader = StoreReader.attach(info["store_path"], info["store_token"], int(info["store_bytes"]))
    assert reader is not None
    return reader


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3000), st.sampled_from([0, 0, 0, 1, 1, 2])), min_size=1, max_size=120),
       st.randoms(use_true_random=False))
def test_pinned_frames_are_never_overwritten_and_room_is_never_refused(steps, rnd):
    """Frames pinned as in flight keep their bytes, released in any order, over many laps; a
    frame is refused only when its slot would overlap a pinned one."""
    store = FrameStore(max_bytes=10_000, shared=True)
    reader = _reader(store)
    pinned: dict[int, tuple[int, bytes]] = {}  # pin -> (offset, bytes)
    try:
        for i, (size, n_release) in enumerate(steps):
            for pin in rnd.sample(sorted(pinned), min(n_release, len(pinned))):
                store.release(pin)
                del pinned[pin]
            frame = _frame(i, size)
            before = store._head
            offset = store.add(frame, pin=i)
            start = 0 if before + size > store.max_bytes else before
            clash = any(start < o + len(d) and o < start + size for o, d in pinned.values())
            assert (offset is None) == clash
            if offset is not None:
                assert offset == start and bytes(reader.view(offset, size)) == frame.data
                pinned[i] = (offset, frame.data)
            else:
                assert ("s", i) not in store.frames and store._head == before
            for o, data in pinned.values():
                assert bytes(reader.view(o, len(data))) == data
    finally:
        reader.close()
        store.close()


def test_a_reader_maps_only_the_store_it_was_offered(tmp_path):
    store = FrameStore(max_bytes=1 << 16, shared=True)
    info = store.share()
    offset = store.add(_frame(0, 5000))
    reader = _reader(store)
    assert bytes(reader.view(offset, 5000)) == _frame(0, 5000).data
    with pytest.raises(ValueError):
        reader.view(store.max_bytes - 100, 101)
    with pytest.raises(ValueError):
        reader.view(-1, 10)
    reader.close()
    path, token, nbytes = info["store_path"], info["store_token"], int(info["store_bytes"])
    wrong = bytes(16).hex()
    assert StoreReader.attach(path, wrong, nbytes) is None  # another store at that place
    assert StoreReader.attach(path, token, nbytes + 4096) is None
    assert StoreReader.attach(path, "not hex", nbytes) is None
    assert StoreReader.attach(str(tmp_path / "nothing"), token, nbytes) is None  # another host
    store.close()
    assert StoreReader.attach(path, token, nbytes) is None  # closed: its descriptor is gone
    assert FrameStore(max_bytes=1000).share() is None and not FrameStore(max_bytes=1000).shared


def test_adding_frames_never_waits_for_the_mapping_thread(monkeypatch):
    """Pages are faulted in outside the lock (MADV_POPULATE_WRITE leaves bytes alone): a frame
    arriving while the ring is first mapped is stored at once, not after the mapping."""
    import threading

    inside, release = threading.Event(), threading.Event()
    real = frame_store._populate_write()
    assert real is not None

    def slow_populate(address, length, advice):
        inside.set()
        release.wait(10)
        return real(address, length, advice)

    monkeypatch.setattr(frame_store, "_populate_write", lambda: slow_populate)
    store = FrameStore(max_bytes=8 << 20, shared=True)
    store.start_mapping(ahead_bytes=store.max_bytes)
    assert inside.wait(10)  # the mapping thread is in the middle of a chunk
    frame = _frame(0, 100_000)
    done = threading.Thread(target=store.add, args=(frame,))
    done.start()
    done.join(5)
    assert not done.is_alive()  # stored while the chunk is still being mapped
    release.set()
    assert store.wait_mapped(30)
    assert bytes(store.get("s", 0).data) == frame.data
    store.close()
