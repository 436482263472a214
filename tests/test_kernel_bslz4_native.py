"""Band decoding of bslz4 frames inside the kernels (`kernels.bslz4_native`) and the threshold
pass that decodes its rows just ahead of reading them.

The reference is bitshuffle's own Python decoder (`bitshuffle.decompress_lz4`) and, for the
threshold, the same frame decoded first: indices, flags, counts and the decoded pixels must
be identical, over pixel types, shapes with partial last blocks and raw tails, kernel sizes,
both thresholds, both C transposes and `kernels.bit_transpose` where the CPU has it; a corrupt
block must be reported, never decoded past.
"""

from __future__ import annotations

import bitshuffle
import bitshuffle.ext
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernels import bit_transpose
from kernels import bslz4_native as bn
from kernels.dispersion import DispersionWorkspace, strong_pixels
from streamer import band_decode, codecs
from streamer.errors import BadFrame
from streamer.perimage import ImageAnalyser
from streamer.series import EncodedFrame, SeriesInfo

pytestmark = pytest.mark.skipif(band_decode.block_decoder_functions() is None, reason="no exported bslz4 block decoder")

SHAPES = [(1, 13), (7, 5), (9, 1000), (100, 77), (130, 2049)]
DTYPES = ["u1", "<u2", "<u4", "<i4"]


def reference(blob: bytes, image: np.ndarray) -> np.ndarray:
    """bitshuffle's Python decoder of the same buffer (its 12-byte header skipped)."""
    block = int.from_bytes(blob[8:12], "big") // image.itemsize
    flat = bitshuffle.decompress_lz4(np.frombuffer(blob, np.uint8)[12:], (image.size,),
                                     np.dtype(f"u{image.itemsize}"), block)
    return flat.view(image.dtype).reshape(image.shape)


def transposes() -> list[np.ndarray]:
    """The function tables to test: the default one; where it uses `kernels.bit_transpose`, the
    same with the library's C transpose alone; and bitshuffle's (when the default is dectris's)."""
    default = band_decode.block_decoder_functions()
    tables = [default]
    if default[3]:
        tables.append(np.array([*default[:3], 0], dtype=np.int64))
    if default[2] == bn.DECTRIS:
        path = bitshuffle.ext.__file__
        tables.append(np.array([band_decode._address(path, "LZ4_decompress_safe"),
                                band_decode._address(path, "bshuf_untrans_bit_elem"), bn.BITSHUFFLE, 0],
                               dtype=np.int64))
    return tables


def test_the_environment_can_leave_every_block_to_the_library_transpose(monkeypatch):
    assert band_decode._block_decoders()[3] == int(bit_transpose.AVAILABLE)
    monkeypatch.setenv("XTALSTREAM_BIT_TRANSPOSE", "library")
    assert band_decode._block_decoders()[3] == 0
    assert band_decode.block_decoder_functions()[3] == int(bit_transpose.AVAILABLE)  # read once, on first use


def test_a_transpose_that_fails_its_check_is_not_used(monkeypatch, caplog):
    def wrong(block, out, elem):
        out[:] = block  # not transposed
        return True

    monkeypatch.setattr(bit_transpose, "untranspose_array", wrong)
    monkeypatch.setattr(bit_transpose, "AVAILABLE", True)
    assert band_decode._block_decoders()[3] == 0
    assert "does not reproduce bitshuffle's <u4 pixels" in caplog.text


def source_of(image: np.ndarray, blob: bytes, out: np.ndarray, functions: np.ndarray | None = None) -> tuple:
    frame = EncodedFrame("t", 0, image.shape, image.dtype.str, "bslz4", blob)
    source = band_decode.bslz4_band_source(frame, out)
    return source if functions is None else source[:3] + (functions,) + source[4:]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_all_matches_bitshuffle(shape, dtype):
    rng = np.random.default_rng(hash((shape, dtype)) % 2**32)
    image = rng.poisson(3.0, shape).astype(dtype)
    image.flat[rng.integers(0, image.size, 5)] = np.iinfo(image.dtype).max
    blob = codecs.encode(image, "bslz4")
    for functions in transposes():
        out = np.full(shape, 7, dtype=dtype)
        source = source_of(image, blob, out, functions)
        assert bn.decode_all(source)
        np.testing.assert_array_equal(out, reference(blob, image))
        assert source[-1][bn.DECODED] == image.nbytes and source[-1][bn.STATUS] == bn.OK


def test_decode_upto_fills_whole_blocks_in_order():
    rng = np.random.default_rng(3)
    image = rng.poisson(1.0, (64, 300)).astype("<u4")  # 76800 bytes: 9 blocks of 8192 and a partial one
    blob = codecs.encode(image, "bslz4")
    out = np.zeros(image.shape, dtype=image.dtype)
    src, dst, scratch, functions, state = source_of(image, blob, out)
    expected = image.reshape(-1).view(np.uint8)
    for want in (1, 8192, 8193, 50000, image.nbytes):
        assert bn.decode_upto(src, dst, scratch, functions, state, want)
        done = state[bn.DECODED]
        assert want <= done <= min(want + 8191, image.nbytes) or done == image.nbytes
        np.testing.assert_array_equal(dst[:done], expected[:done])
        assert not dst[done:].any()


def corrupt(blob: bytes, block: int, itemsize: int, nbytes: int) -> bytes:
    """The buffer with block `block`'s LZ4 data zeroed: its first match has offset 0, which LZ4 refuses."""
    _, offsets = codecs.bslz4_block_offsets(blob, itemsize, nbytes)
    pos = int(offsets[block])
    length = int.from_bytes(blob[pos:pos + 4], "big")
    return blob[:pos + 4] + bytes(length) + blob[pos + 4 + length:]


def test_a_corrupt_block_stops_the_decoder_and_names_the_block():
    rng = np.random.default_rng(4)
    image = rng.poisson(1.0, (64, 300)).astype("<u4")
    blob = corrupt(codecs.encode(image, "bslz4"), 3, 4, image.nbytes)
    for functions in transposes():
        out = np.zeros(image.shape, dtype=image.dtype)
        source = source_of(image, blob, out, functions)
        assert not bn.decode_all(source)
        assert source[-1][bn.STATUS] == bn.BAD_BLOCK and source[-1][bn.NEXT_BLOCK] == 3
        assert source[-1][bn.DECODED] == 3 * 8192  # nothing written past the blocks before it
        assert bn.problem(source[-1]) == "bslz4 block 3 does not decode"
        assert not bn.decode_all(source)  # and it stays failed


def spotty(shape, dtype, seed, background=0.4):
    rng = np.random.default_rng(seed)
    image = rng.poisson(background, shape).astype(dtype)
    for _ in range(max(1, shape[0] * shape[1] // 15000)):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        image[max(0, y - 1):y + 2, max(0, x - 1):x + 2] += rng.integers(5, 200, dtype=image.dtype)
    return image


@pytest.mark.parametrize("algorithm", ["dispersion", "dispersion_extended"])
@pytest.mark.parametrize("kernel_size", [(1, 1), (3, 3), (2, 3)])
@pytest.mark.parametrize("shape,dtype", [((300, 257), "<u2"), ((120, 2068), "<u4"), ((9, 1000), "<u2"),
                                         ((70, 61), "u1"), ((50, 40), "<i4")])
def test_threshold_decoding_its_bands_equals_decoding_first(algorithm, kernel_size, shape, dtype):
    image = spotty(shape, dtype, seed=shape[0])
    mask = np.ones(shape, dtype=np.uint8)
    mask[:, 17:19] = 0
    mask.setflags(write=False)
    blob = codecs.encode(image, "bslz4")
    decoded = image.copy()
    decoded.setflags(write=False)
    kw = dict(algorithm=algorithm, kernel_size=kernel_size, trusted_range=(-1.0, 60000.0))
    ref_ws = DispersionWorkspace(shape)
    ref = strong_pixels(decoded, mask, workspace=ref_ws, path="packed", **kw).copy()
    out = np.zeros(shape, dtype=dtype)
    view = out.view()
    view.setflags(write=False)
    ws = DispersionWorkspace(shape)
    n_fused = 0
    for path in ("auto", "auto", "packed"):  # auto: fused once the last frame was quiet in the packed pass
        out[:] = 0
        fused = path == "packed" or ws.fuses(algorithm == "dispersion_extended")
        got = strong_pixels(view, mask, workspace=ws, path=path, source=source_of(image, blob, out), **kw)
        assert ws.last_fused == fused
        n_fused += fused
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(out, image)
        np.testing.assert_array_equal(ws.flag, ref_ws.flag)
        assert (ws.n_overloads, ws.n_valid, ws.n_valid_nonzero) == (
            ref_ws.n_overloads, ref_ws.n_valid, ref_ws.n_valid_nonzero)
        assert ws.last_path == "packed" or (path == "auto" and not fused)
    if shape == (120, 2068):  # sparse enough for the auto path to fuse
        assert n_fused == 2


def test_threshold_reports_a_corrupt_band():
    image = spotty((200, 300), "<u4", seed=5)
    mask = np.ones(image.shape, dtype=np.uint8)
    blob = corrupt(codecs.encode(image, "bslz4"), 20, 4, image.nbytes)
    out = np.zeros(image.shape, dtype=image.dtype)
    view = out.view()
    view.setflags(write=False)
    for path in ("packed", "auto"):  # inside the pass, and before it
        with pytest.raises(bn.DecodeError, match="block 20"):
            strong_pixels(view, mask, path=path, source=source_of(image, blob, out))


def test_a_corrupt_band_leaves_no_flags_behind():
    """The extended variant flags dispersed pixels as its pass goes down the frame
    (`kernels.extended_trailing`): a block found corrupt at row 136 stops it with the rows
    above flagged, and the next frame on the same workspace must not see those flags."""
    image = spotty((200, 300), "<u4", seed=5)
    mask = np.ones(image.shape, dtype=np.uint8)
    ws = DispersionWorkspace(image.shape)
    out = np.zeros(image.shape, dtype=image.dtype)
    view = out.view()
    view.setflags(write=False)
    blob = corrupt(codecs.encode(image, "bslz4"), 20, 4, image.nbytes)  # block 20: rows 136-143
    with pytest.raises(bn.DecodeError, match="block 20"):
        strong_pixels(view, mask, path="packed", workspace=ws, source=source_of(image, blob, out))
    assert ws.flag.any()  # the rows above were flagged
    other = spotty((200, 300), "<u4", seed=6)
    other.setflags(write=False)
    ref_ws = DispersionWorkspace(image.shape)
    want = strong_pixels(other, mask, workspace=ref_ws).copy()
    got = strong_pixels(view, mask, path="packed", workspace=ws, source=source_of(other, codecs.encode(other, "bslz4"),
                                                                                   out))
    assert ws.last_final == "trailing"
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ws.flag, ref_ws.flag)


def test_noisy_frames_decode_before_the_pass_they_need():
    """A quiet frame lets the next one fuse; after a noisy one (exact in the packed pass too, only
    slower), the next is decoded first and its sampled rows choose the banded pass."""
    shape = (200, 300)
    mask = np.ones(shape, dtype=np.uint8)
    ws = DispersionWorkspace(shape)
    out = np.zeros(shape, dtype="<u4")
    view = out.view()
    view.setflags(write=False)
    fused_now = False
    steps = ((0.3, "packed", True), (0.3, "packed", True), (60.0, "packed", False), (60.0, "banded", False),
             (0.3, "packed", True), (0.3, "packed", True))  # the first noisy frame is known as such afterwards
    for background, path_after, fuses in steps:
        image = spotty(shape, "<u4", seed=int(background * 10), background=background)
        decoded = image.copy()
        decoded.setflags(write=False)
        ref = strong_pixels(decoded, mask).copy()
        got = strong_pixels(view, mask, workspace=ws, source=source_of(image, codecs.encode(image, "bslz4"), out))
        np.testing.assert_array_equal(got, ref)
        assert ws.last_path == path_after and ws.fuses(True) == fuses
        assert ws.last_fused == fused_now
        fused_now = fuses


def test_analyser_prepare_gives_the_same_result_as_decoding_first():
    shape = (180, 220)
    series = SeriesInfo("t", "simulator", shape, "<u4", n_images=3, pixel_size_mm=(0.172, 0.172),
                        beam_centre_px=(110.0, 90.0), distance_mm=60.0, wavelength_A=1.0, saturation_value=60000)
    analyser = ImageAnalyser(series)
    decoding_first = ImageAnalyser(series)
    out = np.empty(shape, dtype="<u4")
    for number in range(3):
        image = spotty(shape, "<u4", seed=number + 10)
        frame = EncodedFrame("t", number, shape, "<u4", "bslz4", codecs.encode(image, "bslz4"))
        prepared, source = analyser.prepare(frame, out)
        assert source is not None and prepared.base is out or prepared.base is out.base
        got = analyser.analyse(prepared, number, source)
        assert analyser.workspace.last_fused == (number > 0)
        want = decoding_first.analyse(image, number)
        assert got.n_spots == want.n_spots and got.strong_pixels == want.strong_pixels
        np.testing.assert_array_equal(got.spots.pixel_index, want.spots.pixel_index)
        np.testing.assert_array_equal(got.spots.x_px, want.spots.x_px)
        np.testing.assert_array_equal(got.radial_profile, want.radial_profile)
        assert got.background == want.background and got.estimated_d_min == want.estimated_d_min
    bad = EncodedFrame("t", 3, shape, "<u4", "bslz4", corrupt(codecs.encode(image, "bslz4"), 2, 4, image.nbytes))
    with pytest.raises(BadFrame) as info:
        prepared, source = analyser.prepare(bad, out)
        analyser.analyse(prepared, 3, source)
    assert info.value.reason == "corrupt_compression"
    lz4 = EncodedFrame("t", 4, shape, "<u4", "lz4", codecs.encode(image, "lz4"))
    prepared, source = analyser.prepare(lz4, out)  # other encodings are decoded before the analysis
    assert source is None
    np.testing.assert_array_equal(prepared, image)


def damaged(blob: bytes, kind: str, itemsize: int, nbytes: int) -> bytes:
    _, offsets = codecs.bslz4_block_offsets(blob, itemsize, nbytes)
    pos = int(offsets[2])
    if kind == "truncated_header":
        return blob[:pos + 2]
    if kind == "bad_length":  # block 2 claims more than the LZ4 bound of 8192 bytes
        return blob[:pos] + (9000).to_bytes(4, "big") + blob[pos + 4:]
    if kind == "cut_block":  # the buffer ends inside block 2's data
        return blob[:pos + 10]
    return blob + b"\0\0\0"  # "bad_tail": bytes after the raw tail


@pytest.mark.parametrize("kind,status", [("truncated_header", bn.TRUNCATED_HEADER), ("bad_length", bn.BAD_LENGTH),
                                         ("cut_block", bn.BAD_LENGTH), ("bad_tail", bn.BAD_TAIL)])
def test_damaged_lengths_and_tails_are_caught_as_the_blocks_are_reached(kind, status):
    image = spotty((63, 301), "<u4", seed=6)  # 63 * 301 elements: a raw tail of 3
    blob = damaged(codecs.encode(image, "bslz4"), kind, 4, image.nbytes)
    out = np.zeros(image.shape, dtype=image.dtype)
    source = source_of(image, blob, out)
    assert not bn.decode_all(source)
    assert source[-1][bn.STATUS] == status
    assert source[-1][bn.NEXT_BLOCK] == (2 if kind != "bad_tail" else source[-1][bn.N_BLOCKS])
    view = out.view()
    view.setflags(write=False)
    mask = np.ones(image.shape, dtype=np.uint8)
    with pytest.raises(bn.DecodeError):
        strong_pixels(view, mask, path="packed", source=source_of(image, blob, out))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(0, 10**6))
def test_mutated_frames_through_the_band_decoder_only_fail_as_bad_frames(edits, cut):
    """As a worker calls it: either a BadFrame, or the pixels the whole-frame decoder gives."""
    shape = (40, 300)
    image = spotty(shape, "<u2", seed=7)
    series = SeriesInfo("t", "simulator", shape, "<u2", n_images=1, pixel_size_mm=(0.172, 0.172),
                        beam_centre_px=(150.0, 20.0), distance_mm=60.0, wavelength_A=1.0, saturation_value=60000)
    analyser = _ANALYSERS.setdefault(shape, ImageAnalyser(series))
    data = bytearray(codecs.encode(image, "bslz4"))
    for pos, value in edits:
        data[pos % len(data)] = value
    data = bytes(data[: cut % (len(data) + 1)]) if cut % 3 == 0 else bytes(data)
    try:
        expected = codecs.decode_buffer(data, shape, "<u2", "bslz4", backend="bitshuffle")
    except BadFrame:
        expected = None
    out = np.zeros(shape, dtype="<u2")
    for _ in range(2):  # decoded before the pass, then (a quiet frame before it) inside it
        try:
            analyser.analyse(*analyser.prepare(EncodedFrame("t", 0, shape, "<u2", "bslz4", data), out)[:1], 0)
            got = analyser.prepare(EncodedFrame("t", 0, shape, "<u2", "bslz4", data), out)
            analyser.analyse(got[0], 0, got[1])
        except BadFrame as exc:
            assert exc.reason in ("corrupt_compression", "wrong_size", "all_zero", "all_saturated",
                                  "too_many_strong_pixels")
            continue
        if expected is not None:
            np.testing.assert_array_equal(out, expected)


_ANALYSERS: dict = {}


@pytest.mark.parametrize("block_bytes", [64, 4096, 16384, 65536])
def test_other_block_sizes_decode_in_the_pass(block_bytes):
    """Detectors and files may use other block sizes than 8192 bytes: the scratch grows to fit."""
    image = spotty((150, 301), "<u2", seed=8)
    blob = codecs.encode(image, "bslz4", block_bytes=block_bytes)
    out = np.zeros(image.shape, dtype=image.dtype)
    frame = EncodedFrame("t", 0, image.shape, image.dtype.str, "bslz4", blob)
    source = band_decode.bslz4_band_source(frame, out, np.empty(16, np.uint8))
    assert source[2].shape[0] >= 2 * block_bytes
    view = out.view()
    view.setflags(write=False)
    mask = np.ones(image.shape, dtype=np.uint8)
    decoded = image.copy()
    decoded.setflags(write=False)
    want = strong_pixels(decoded, mask).copy()
    np.testing.assert_array_equal(strong_pixels(view, mask, path="packed", source=source), want)
    np.testing.assert_array_equal(out, image)
