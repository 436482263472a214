"""Pixel codecs: round trips, both decoder back-ends bit-exact, real HDF5 chunks, bounded rejects."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from streamer import codec_backends, codecs, lz4_framing
from streamer.errors import BadFrame
from streamer.series import EncodedFrame

BACKENDS = codec_backends.available_backends()
DTYPES = ["|u1", "<u2", "<u4", "<i4", "<f4"]
SHAPES = [(1, 1), (3, 5), (7, 9), (17, 33), (100, 103), (257, 130)]


def _frame(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.poisson(2.0, size=shape).astype(dtype)
    arr.flat[:: max(1, arr.size // 7)] = np.iinfo(dtype).max if np.dtype(dtype).kind in "ui" else 1e9
    return arr


@pytest.mark.parametrize("encoding", codecs.ENCODINGS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_encoding_dtype_shape_and_backend(encoding, dtype):
    for shape in SHAPES:
        arr = _frame(shape, dtype)
        blob = codecs.encode(arr, encoding)
        for backend in BACKENDS:
            out = codecs.decode_buffer(blob, shape, dtype, encoding, backend=backend)
            assert out.dtype == np.dtype(dtype) and out.shape == shape
            np.testing.assert_array_equal(out, arr)


def test_decode_fills_and_returns_the_given_buffer():
    arr = _frame((64, 48), "<u4")
    frame = EncodedFrame("s", 0, arr.shape, "<u4", "bslz4", codecs.encode(arr, "bslz4"))
    out = np.full(arr.shape, 7, dtype="<u4")
    for backend in BACKENDS:
        out[:] = 7
        assert codecs.decode(frame, out=out, backend=backend) is out
        np.testing.assert_array_equal(out, arr)
    with pytest.raises(ValueError):
        codecs.decode(frame, out=np.empty((48, 64), "<u4"))
    with pytest.raises(ValueError):
        codecs.decode(frame, out=np.empty(arr.shape, "<u2"))


def test_allow_view_hands_back_the_decoders_own_output():
    """A worker may take the dectris decoder's output as it is (read-only, no copy into its
    buffer); the pixels are the same, and corrupt input is still refused."""
    arr = _frame((64, 48), "<u4")
    frame = EncodedFrame("s", 0, arr.shape, "<u4", "bslz4", codecs.encode(arr, "bslz4"))
    out = np.full(arr.shape, 7, dtype="<u4")
    got = codecs.decode(frame, out=out, allow_view=True)
    np.testing.assert_array_equal(got, arr)
    if "dectris" in BACKENDS:
        assert got is not out and not got.flags.writeable and (out == 7).all()
    else:
        assert got is out
    broken = bytearray(frame.data)
    broken[12:16] = b"\xff\xff\xff\xff"  # the first block declares an impossible length
    with pytest.raises(BadFrame):
        codecs.decode(EncodedFrame("s", 0, arr.shape, "<u4", "bslz4", bytes(broken)), out=out, allow_view=True)


def test_bslz4_layout_is_the_hdf5_filter_chunk():
    arr = _frame((33, 35), "<u2")  # 1155 elements: 3 elements stored raw after the blocks
    blob = codecs.encode(arr, "bslz4")
    total, block = struct.unpack(">QI", blob[:12])
    assert (total, block) == (arr.nbytes, 8192)
    assert blob[-6:] == arr.reshape(-1)[-3:].tobytes()


def test_incompressible_lz4_h5_blocks_are_stored_and_decoded():
    arr = np.random.default_rng(3).integers(0, 2**32, size=(64, 100), dtype=np.uint32)
    blob = codecs.encode(arr, "lz4-h5")
    (first_len,) = struct.unpack(">I", blob[12:16])
    assert first_len == 8192  # stored raw: the HDF5 LZ4 filter rule
    for backend in BACKENDS:
        np.testing.assert_array_equal(codecs.decode_buffer(blob, arr.shape, "<u4", "lz4-h5", backend=backend), arr)


def test_lz4_framings_convert_without_recompression():
    arr = _frame((120, 130), "<u2")
    bare = codecs.encode(arr, "lz4")
    framed = lz4_framing.lz4_block_as_h5(bare, arr.nbytes)
    assert bare in framed
    for backend in BACKENDS:
        np.testing.assert_array_equal(codecs.decode_buffer(framed, arr.shape, "<u2", "lz4-h5", backend=backend), arr)
    assert lz4_framing.lz4_h5_as_block(framed, arr.nbytes) == bare
    assert lz4_framing.lz4_h5_as_block(codecs.encode(arr, "lz4-h5", block_bytes=4096), arr.nbytes) is None


def test_declared_huge_size_is_rejected_before_allocation():
    huge = struct.pack(">QI", 1 << 60, 8192) + b"\x00" * 32
    for backend in BACKENDS:
        for encoding in ("bslz4", "lz4-h5"):
            with pytest.raises(BadFrame) as err:
                codecs.decode_buffer(huge, (10, 10), "<u4", encoding, backend=backend)
            assert err.value.reason == "wrong_size"
    with pytest.raises(BadFrame) as err:
        codecs.decode_buffer(b"", (1 << 20, 1 << 20), "<u4", "raw")
    assert err.value.reason == "wrong_size"


@pytest.mark.parametrize("encoding", ["bslz4", "lz4-h5", "lz4"])
def test_corrupt_and_truncated_input_is_a_counted_reason(encoding):
    arr = _frame((100, 100), "<u4")
    blob = codecs.encode(arr, encoding)
    cases = [blob[: len(blob) // 2], blob[:5], b"", blob + b"\x00" * 9]
    if encoding != "lz4":
        bad_len = bytearray(blob)
        bad_len[12:16] = struct.pack(">I", 0x7FFFFFFF)
        cases.append(bytes(bad_len))
    else:
        cases.append(b"\xff" * 64)
    for data in cases:
        for backend in BACKENDS:
            with pytest.raises(BadFrame) as err:
                codecs.decode_buffer(data, arr.shape, "<u4", encoding, backend=backend)
            assert err.value.reason in ("corrupt_compression", "wrong_size")


def test_unknown_encoding_and_wrong_raw_size():
    with pytest.raises(BadFrame) as err:
        codecs.decode_buffer(b"1234", (1, 1), "<u4", "zstd")
    assert err.value.reason == "unknown_encoding"
    with pytest.raises(BadFrame) as err:
        codecs.decode_buffer(b"123", (1, 1), "<u4", "raw")
    assert err.value.reason == "wrong_size"


def test_real_hdf5_chunks_decode_like_the_hdf5_filters(shared_data):
    """DECTRIS-written chunks (filters 32008 and 32004) through our decoders == h5py + hdf5plugin."""
    h5py = pytest.importorskip("h5py")
    import hdf5plugin  # noqa: F401  (registers the filters with HDF5)

    files = sorted((shared_data / "eiger-h5").glob("datasets_*_data_00000*.h5"))
    assert len(files) >= 12
    for path in files:
        with h5py.File(path, "r") as f:
            dset = f["/entry/data/data"]
            filters = dset._filters
            encoding = "bslz4" if "32008" in filters else "lz4-h5"
            for i in range(dset.shape[0]):
                _, chunk = dset.id.read_direct_chunk((i, 0, 0))
                truth = dset[i]
                for backend in BACKENDS:
                    got = codecs.decode_buffer(chunk, truth.shape, truth.dtype.str, encoding, backend=backend)
                    np.testing.assert_array_equal(got, truth, err_msg=f"{path.name} image {i} {backend}")


def test_decode_threads_setting_gives_the_same_pixels():
    arr = _frame((300, 257), "<u4")
    blob = codecs.encode(arr, "bslz4")
    try:
        for n in (1, 2, 3):
            codec_backends.set_decode_threads(n)
            np.testing.assert_array_equal(codecs.decode_buffer(blob, arr.shape, "<u4", "bslz4", backend="bitshuffle"),
                                          arr)
    finally:
        codec_backends.set_decode_threads(1)
    with pytest.raises(ValueError):
        codec_backends.set_decode_threads(0)
    assert codec_backends.fastest_backend("bslz4") in codec_backends.available_backends()
