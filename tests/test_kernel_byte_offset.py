"""CBF byte_offset decoding against a slow pure-Python reference, fabio's encoder and real PILATUS CBFs."""

from __future__ import annotations

import bz2
import struct

import fabio
import numpy as np
import pytest
from fabio.compression.compression import compByteOffset
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.byte_offset import CorruptStream, decode_byte_offset

ESCAPES = ((1, "<b", -128), (2, "<h", -32768), (4, "<i", -(2**31)), (8, "<q", None))


def reference_encode(values) -> bytes:
    """CBFlib byte_offset: each difference in the narrowest width whose escape value it is not."""
    out = bytearray()
    previous = 0
    for v in (int(x) for x in values):
        delta = v - previous
        previous = v
        for width, fmt, escape in ESCAPES:
            lo, hi = -(2 ** (8 * width - 1)), 2 ** (8 * width - 1) - 1
            if escape is None or (lo < delta <= hi):
                out += struct.pack(fmt, delta)
                break
            out += struct.pack(fmt, escape)
    return bytes(out)


def reference_decode(stream: bytes, n: int) -> tuple[np.ndarray, int] | None:
    """(n values as int32, modulo 2**32; bytes used), or None when the stream ends first."""
    values, pos, value = [], 0, 0
    for _ in range(n):
        for width, fmt, escape in ESCAPES:
            if pos + width > len(stream):
                return None
            (delta,) = struct.unpack_from(fmt, stream, pos)
            pos += width
            if delta != escape:
                break
        value += delta
        values.append((value + 2**31) % 2**32 - 2**31)
    return np.array(values, dtype=np.int32), pos


def mixed_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """int32 values whose differences need every width: Poisson counts, gaps (-1), hot pixels, extremes."""
    values = rng.poisson(0.5, n).astype(np.int64)
    kind = rng.random(n)
    values[kind < 0.05] = -1
    values[(kind >= 0.05) & (kind < 0.08)] = rng.integers(128, 40000, np.count_nonzero((kind >= 0.05) & (kind < 0.08)))
    values[(kind >= 0.08) & (kind < 0.09)] = rng.integers(-(2**31), 2**31, np.count_nonzero((kind >= 0.08) & (kind < 0.09)))
    return values.astype(np.int32)


def test_reference_encoder_writes_the_bytes_fabio_writes():
    values = mixed_values(np.random.default_rng(1), 5000)
    assert reference_encode(values) == compByteOffset(values.astype(np.int64))


@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 13), (64, 65), (301, 487)])
@pytest.mark.parametrize("dtype", ["<i4", "<u4"])
def test_matches_reference_over_shapes_and_dtypes(shape, dtype):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    values = mixed_values(rng, shape[0] * shape[1])
    stream = reference_encode(values)
    out = np.full(shape, 7, dtype=dtype)
    used = decode_byte_offset(stream + b"trailing bytes are left alone", out)
    expected, expected_used = reference_decode(stream, values.size)
    assert used == expected_used == len(stream)
    np.testing.assert_array_equal(out.reshape(-1).view(np.int32), expected)
    np.testing.assert_array_equal(out.reshape(-1).view(np.int32), values)


def test_every_width_and_the_extremes():
    values = np.array([0, 127, -1, -129, 32767, -32768, 2**31 - 1, -(2**31), 2**31 - 1, 5, -(2**31)], dtype=np.int32)
    stream = reference_encode(values)
    assert stream.count(b"\x80\x00\x80\x00\x00\x00\x80") == 4  # escapes to an 8-byte difference
    out = np.empty(values.size, dtype=np.int32)
    assert decode_byte_offset(stream, out) == len(stream)
    np.testing.assert_array_equal(out, values)
    unsigned = np.array([0, 2**32 - 1, 2**31, 1, 2**32 - 2], dtype=np.uint32)  # an "unsigned 32-bit integer" CBF
    stream = reference_encode(unsigned.astype(np.int64))
    out = np.empty(unsigned.size, dtype="<u4")
    decode_byte_offset(np.frombuffer(stream, np.uint8), out)
    np.testing.assert_array_equal(out, unsigned)


def test_values_wrap_modulo_2_32_as_cbflib_and_fabio_store_them():
    stream = reference_encode([2**31 - 1]) + bytes([1, 1])  # two steps of +1 past the int32 maximum
    out = np.empty(3, dtype=np.int32)
    decode_byte_offset(stream, out)
    assert list(out) == [2**31 - 1, -(2**31), -(2**31) + 1]
    np.testing.assert_array_equal(out, reference_decode(stream, 3)[0])


def test_empty_output_and_empty_stream():
    assert decode_byte_offset(b"", np.empty((0, 4), np.int32)) == 0
    with pytest.raises(CorruptStream, match="after 0 of 1"):
        decode_byte_offset(b"", np.empty(1, np.int32))


def test_every_truncation_raises_and_never_reads_past_the_end():
    values = mixed_values(np.random.default_rng(3), 2000)
    stream = reference_encode(values)
    out = np.empty(values.size, dtype=np.int32)
    for cut in range(0, len(stream), 7):
        with pytest.raises(CorruptStream):
            decode_byte_offset(stream[:cut], out)
    for cut in range(len(stream) - 40, len(stream)):  # inside the last multi-byte differences
        with pytest.raises(CorruptStream):
            decode_byte_offset(np.frombuffer(stream[:cut], np.uint8).copy(), out)
    extremes = np.tile(np.array([2**31 - 1, -(2**31)], dtype=np.int32), 200)  # 15 bytes per element
    stream = reference_encode(extremes)
    assert len(stream) == 15 * extremes.size - 8  # the first difference fits 4 bytes (7 with escapes)
    out = np.empty(extremes.size, dtype=np.int32)
    for cut in range(0, len(stream)):
        with pytest.raises(CorruptStream):
            decode_byte_offset(stream[:cut], out)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(0, 300))
def test_arbitrary_bytes_decode_as_the_reference_or_raise(stream, n):
    expected = reference_decode(stream, n)
    out = np.empty(n, dtype=np.int32)
    if expected is None:
        with pytest.raises(CorruptStream):
            decode_byte_offset(stream, out)
    else:
        assert decode_byte_offset(stream, out) == expected[1]
        np.testing.assert_array_equal(out, expected[0])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=0, max_size=3000))
def test_round_trip(values):
    out = np.empty(len(values), dtype=np.int32)
    stream = reference_encode(values)
    assert decode_byte_offset(stream, out) == len(stream)
    np.testing.assert_array_equal(out, np.array(values, dtype=np.int32))


def test_bad_arguments_raise_value_error():
    stream = reference_encode([1, 2, 3])
    for out in (np.empty(3, np.int16), np.empty(3, np.float32), np.empty(3, ">i4"), np.empty(3, np.int64)):
        with pytest.raises(ValueError, match="<i4 or <u4"):
            decode_byte_offset(stream, out)
    with pytest.raises(ValueError, match="C-contiguous"):
        decode_byte_offset(stream, np.empty(6, np.int32)[::2])
    readonly = np.empty(3, np.int32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        decode_byte_offset(stream, readonly)
    with pytest.raises(ValueError, match="uint8"):
        decode_byte_offset(np.frombuffer(stream, np.int8), np.empty(3, np.int32))
    with pytest.raises(ValueError, match="bytes-like"):
        decode_byte_offset("not bytes", np.empty(3, np.int32))
    with pytest.raises(CorruptStream):  # a CorruptStream is a ValueError, but more specific
        decode_byte_offset(stream[:2], np.empty(3, np.int32))


@pytest.mark.parametrize("number", ["0003", "0016"])  # 1313 spots; blank
def test_real_pilatus_cbfs_decode_as_fabio_does(shared_data, number):
    path = shared_data / "real-images" / "thaumatin_grid" / f"thau_3_2_{number}.cbf.bz2"
    raw = bz2.decompress(path.read_bytes())
    start = raw.index(b"\x0c\x1a\x04\xd5") + 4
    size = int(raw[raw.index(b"X-Binary-Size:") + 14:].split(b"\r\n", 1)[0])
    truth = fabio.open(str(path)).data
    out = np.empty(truth.shape, dtype=np.int32)
    assert decode_byte_offset(np.frombuffer(raw, np.uint8, offset=start), out) == size
    np.testing.assert_array_equal(out, truth)
    assert np.count_nonzero(out == -2) > 0 and np.count_nonzero(out == -1) > 0  # bad pixels and gaps
