"""Real DECTRIS captures: grouping of parts into messages, and every frame decoded by both back-ends."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamer import captures, codec_backends, codecs, stream_v1, stream_v2
from streamer.config import Config
from streamer.perimage import ImageAnalyser

V2_FOLDERS = ["r500k_bm_bslz4_8bit", "r500k_bm_bslz4_16bit", "r500k_bm_bslz4_32bit",
              "r500k_bm_lz4_8bit", "r500k_bm_lz4_16bit", "r500k_bm_lz4_32bit"]


def _htypes(messages):
    return [json.loads(m[0])["htype"] for m in messages]


def test_eiger2_1m_capture_holds_two_series(shared_data):
    messages = captures.read_capture(shared_data / "streams" / "eiger2-1m-v1")
    one = ["dheader-1.0"] + ["dimage-1.0"] * 10 + ["dseries_end-1.0"]
    assert _htypes(messages) == one + one
    assert [len(m) for m in messages[:2]] == [8, 4]
    assert captures.capture_format(shared_data / "streams" / "eiger2-1m-v1") == "v1"


def test_eiger2_1m_flagged_pixels_are_not_reported_as_saturated(shared_data):
    """The real EIGER2 1M stream comes without its pixel mask (empty mask blob): its gaps and
    dead pixels arrive at the all-ones value on every frame, 39,084 to 39,086 of them. They are
    invalid pixels, not saturated ones (the count cutoff is 1,702,012)."""
    messages = captures.read_capture(shared_data / "streams" / "eiger2-1m-v1")
    series = stream_v1.series_info(stream_v1.parse_message(messages[0]))
    assert series.pixel_mask is None and series.saturation_value == 1702012
    analyser = ImageAnalyser(series, Config())
    for message in messages[1:11]:
        image = codecs.decode(stream_v1.encoded_frame(stream_v1.parse_message(message), series))
        assert 39084 <= np.count_nonzero(image == 0xFFFFFFFF) <= 39086
        assert analyser.analyse(image, 0).n_overloads == 0


def test_dls_4m_capture_gets_its_missing_blobs_and_appendix(shared_data):
    messages = captures.read_capture(shared_data / "streams" / "eiger4m-v1-dls")
    assert _htypes(messages) == ["dheader-1.0"] + ["dimage-1.0"] * 3 + ["dseries_end-1.0"]
    header = messages[0]
    assert len(header) == 9  # 8 header parts + the appendix {"acqID": "test_1"}
    assert len(header[3]) == 2070 * 2167 * 4 and len(header[5]) == 2070 * 2167 * 4
    parsed = stream_v1.parse_message(header)
    assert parsed.appendix == {"acqID": "test_1"}
    assert parsed.flatfield.shape == (2167, 2070) and parsed.pixel_mask.dtype == np.dtype("<u4")
    assert parsed.countrate_table.shape == (4000, 2)  # [2, 4000] is [width, height]: (count, corrected) pairs
    assert parsed.countrate_table[0].tolist() == [0.0, 0.0] and parsed.countrate_table[1, 0] == 1125.0


@pytest.mark.parametrize("folder", V2_FOLDERS)
def test_v2_captures_are_one_message_per_file(shared_data, folder):
    path = shared_data / "streams" / "eiger2-r500k-v2" / folder
    messages = captures.read_capture(path)
    assert captures.capture_format(path) == "v2"
    assert all(len(m) == 1 and m[0][:3] == stream_v2.SELF_DESCRIBE for m in messages)
    assert isinstance(stream_v2.parse_message(messages[-1][0]), stream_v2.V2End)


def _all_capture_arrays(shared_data):
    root = shared_data / "streams"
    for folder in ["eiger2-1m-v1", "eiger4m-v1-dls"]:
        for msg in captures.read_capture(root / folder):
            parsed = stream_v1.parse_message(msg)
            if isinstance(parsed, stream_v1.V1Image):
                yield folder, parsed.shape, parsed.dtype, parsed.encoding, parsed.data
    for folder in V2_FOLDERS:
        for (msg,) in captures.read_capture(root / "eiger2-r500k-v2" / folder):
            parsed = stream_v2.parse_message(msg)
            if isinstance(parsed, stream_v2.V2Image):
                for arr in parsed.data.values():
                    encoding, data = arr.encoded()
                    yield folder, arr.shape, arr.array.dtype, encoding, data


def test_every_capture_frame_decodes_bit_exact_with_both_backends(shared_data):
    seen = {}
    backends = codec_backends.available_backends()
    for folder, shape, dtype, encoding, data in _all_capture_arrays(shared_data):
        results = [codecs.decode_buffer(data, shape, dtype, encoding, backend=b) for b in backends]
        for other in results[1:]:
            np.testing.assert_array_equal(results[0], other)
        if encoding == "lz4":  # a second, independent path for bare blocks: the lz4 frame-less API
            import lz4.block

            raw = lz4.block.decompress(bytes(data), uncompressed_size=results[0].nbytes)
            assert raw == results[0].tobytes()
        seen.setdefault((folder, encoding, dtype), 0)
        seen[(folder, encoding, dtype)] += 1
    assert seen[("eiger2-1m-v1", "lz4", "<u4")] == 20
    assert seen[("eiger4m-v1-dls", "bslz4", "<u2")] == 3
    assert {k[1:] for k in seen if k[0].startswith("r500k")} == {
        ("bslz4", "|u1"), ("bslz4", "<u2"), ("bslz4", "<u4"), ("lz4-h5", "|u1"), ("lz4-h5", "<u2")}
    assert sum(v for k, v in seen.items() if k[0].startswith("r500k")) == 3 * 3 * 5 + 3 * 2 * 2
    assert len(backends) == 2 or pytest.skip("dectris-compression missing: one back-end only")


def test_eiger4m_pixels_are_plausible_counts(shared_data):
    """Orientation/shape sanity on real data: the EIGER 4M gap rows are at the EIGER module pitch."""
    msgs = captures.read_capture(shared_data / "streams" / "eiger4m-v1-dls")
    image = stream_v1.parse_message(msgs[1])
    pixels = codecs.decode_buffer(image.data, image.shape, image.dtype, image.encoding)
    assert pixels.shape == (2167, 2070)
    gap_rows = np.flatnonzero((pixels == np.iinfo(np.uint16).max).all(axis=1))
    gap_cols = np.flatnonzero((pixels == np.iinfo(np.uint16).max).all(axis=0))
    # modules are 1030 x 514 pixels with 10- and 37-pixel gaps: rows gap first at 514, columns at 1030
    assert gap_rows.min() == 514 and gap_cols.min() == 1030
    assert (pixels[:514, :1030] < 65535).any()


def test_every_bslz4_capture_frame_decodes_in_the_threshold_pass_as_in_full(shared_data):
    """The real DECTRIS bslz4 frames through the band decoder a worker uses: the same pixels as
    the whole-frame decoder, and the same strong pixels whether decoded first or in the pass."""
    from kernels.dispersion import DispersionWorkspace, strong_pixels
    from streamer import band_decode
    from streamer.series import EncodedFrame

    if band_decode.block_decoder_functions() is None:
        pytest.skip("no exported bslz4 block decoder")
    n = 0
    for folder, shape, dtype, encoding, data in _all_capture_arrays(shared_data):
        if encoding != "bslz4":
            continue
        dt = np.dtype(dtype)
        whole = codecs.decode_buffer(data, shape, dt, encoding)
        whole.setflags(write=False)
        mask = np.ones(shape, dtype=np.uint8)
        mask.setflags(write=False)
        trusted = (-1.0, float(np.iinfo(dt).max))  # the all-ones gap and saturation value left out
        want = strong_pixels(whole, mask, trusted_range=trusted, path="packed").copy()
        out = np.zeros(shape, dtype=dt)
        view = out.view()
        view.setflags(write=False)
        source = band_decode.bslz4_band_source(EncodedFrame("c", 0, tuple(shape), dt.str, "bslz4", data), out)
        got = strong_pixels(view, mask, trusted_range=trusted, workspace=DispersionWorkspace(tuple(shape)),
                            path="packed", source=source)
        np.testing.assert_array_equal(out, whole, err_msg=folder)
        np.testing.assert_array_equal(got, want, err_msg=folder)
        n += 1
    assert n == 3 + 3 * 3 * 5  # eiger4m-v1-dls, and the r500k v2 frames of three pixel types
