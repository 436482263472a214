"""DECTRIS stream v2 (CBOR): real image/end messages, a start message per the docs, encoders, bad input."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest

from streamer import captures, codecs, stream_v2, stream_v2_encode
from streamer.errors import BadInput
from streamer.series import EncodedFrame, SeriesInfo

FOLDERS = {"r500k_bm_bslz4_8bit": "|u1", "r500k_bm_bslz4_16bit": "<u2", "r500k_bm_bslz4_32bit": "<u4",
           "r500k_bm_lz4_8bit": "|u1", "r500k_bm_lz4_16bit": "<u2"}


def r500k_series(dtype: str = "<u2", mask: bool = False) -> SeriesInfo:
    """An EIGER2 R 500K series (1030 x 514 pixels) as its start message would describe it."""
    pixel_mask = None
    if mask:
        pixel_mask = np.zeros((514, 1030), dtype="<u4")
        pixel_mask[255:259, :] = 1  # the chip gap row
    return SeriesInfo(series_id="1", source="simulator", image_shape=(514, 1030), dtype=dtype, n_images=10,
                      detector_description="Dectris EIGER2 R 500K", detector_serial="E-01-0000",
                      sensor_material="Si", sensor_thickness_mm=0.45, pixel_size_mm=(0.075, 0.075),
                      beam_centre_px=(515.0, 257.0), distance_mm=120.0, wavelength_A=1.0332,
                      omega_start_deg=5.0, omega_increment_deg=0.25, count_time_s=0.02, frame_time_s=0.02,
                      saturation_value=65534, bit_depth_image=8 * np.dtype(dtype).itemsize,
                      countrate_correction_applied=True, flatfield_applied=True, pixel_mask=pixel_mask,
                      channels=("threshold_1", "threshold_2", "difference"))


@pytest.mark.parametrize("folder, dtype", FOLDERS.items())
def test_real_image_and_end_messages(shared_data, folder, dtype):
    messages = captures.read_capture(shared_data / "streams" / "eiger2-r500k-v2" / folder)
    images = [stream_v2.parse_message(m[0]) for m in messages[:-1]]
    end = stream_v2.parse_message(messages[-1][0])
    assert [im.image_id for im in images] == list(range(len(images)))
    assert len(end.series_unique_id) == 26 and all(im.series_unique_id == end.series_unique_id for im in images)
    assert list(images[0].data) == ["threshold_1", "threshold_2", "difference"]
    frame_time = images[1].start_time_s - images[0].start_time_s
    assert frame_time > 0 and images[0].start_time_s == 0.0
    assert images[0].real_time_s == pytest.approx(frame_time, rel=1e-3)
    for im in images:
        frames = stream_v2.encoded_frames(im, end.series_unique_id, ["threshold_1", "difference"])
        assert [f.channel for f in frames] == ["threshold_1", "difference"]
        for f in frames:
            assert f.shape == (514, 1030) and f.dtype == dtype  # dims in numpy order
            assert codecs.decode(f).max() > 0
        assert [f.channel for f in stream_v2.encoded_frames(im, "x")] == ["threshold_1"]


def test_start_message_as_a_detector_sends_it_and_back():
    series = r500k_series(mask=True)
    msg = stream_v2_encode.encode_start(series, 3, stream_v2_encode.new_ulid(), "all", series.channels,
                                        user_data={"a": 1})
    assert msg[:3] == stream_v2.SELF_DESCRIBE
    assert msg[3] & 0xE0 == 0xA0  # a map ...
    key_at = 4 if msg[3] < 0xB8 else 5  # (more than 23 entries: one length byte follows)
    assert msg[key_at:key_at + 5] == b"\x64type"  # ... whose first key is "type"
    start = stream_v2.parse_message(msg)
    assert isinstance(start, stream_v2.V2Start) and start.series_id == 3
    info = stream_v2.series_info(start)
    assert info.series_id == start.series_unique_id and len(info.series_id) == 26
    assert info.channels == series.channels and info.source == "stream-v2"
    for name in ("image_shape", "dtype", "n_images", "beam_centre_px", "omega_start_deg", "omega_increment_deg",
                 "saturation_value", "bit_depth_image", "sensor_material", "detector_serial",
                 "countrate_correction_applied", "flatfield_applied"):
        assert getattr(info, name) == getattr(series, name), name
    for name in ("distance_mm", "wavelength_A", "sensor_thickness_mm", "count_time_s", "frame_time_s"):
        assert getattr(info, name) == pytest.approx(getattr(series, name)), name
    assert info.pixel_size_mm == pytest.approx(series.pixel_size_mm)
    np.testing.assert_array_equal(info.pixel_mask, series.pixel_mask)
    assert info.raw["user_data"] == {"a": 1}


def test_start_message_field_names_follow_the_documentation():
    fields = stream_v2.loads(stream_v2_encode.encode_start(r500k_series(), 1, stream_v2_encode.new_ulid()), 1 << 20)
    documented = {"type", "arm_date", "beam_center_x", "beam_center_y", "channels", "count_time",
                  "countrate_correction_enabled", "detector_description", "detector_serial_number",
                  "detector_translation", "flatfield_enabled", "frame_time", "goniometer", "image_size_x",
                  "image_size_y", "incident_energy", "incident_wavelength", "number_of_images",
                  "pixel_mask_enabled", "pixel_size_x", "pixel_size_y", "saturation_value", "sensor_material",
                  "sensor_thickness", "series_id", "series_unique_id", "virtual_pixel_interpolation_enabled"}
    assert documented <= set(fields)
    assert list(fields)[0] == "type"
    assert fields["goniometer"]["omega"] == {"increment": 0.25, "start": 5.0}
    assert fields["incident_energy"] == pytest.approx(12398.42 / 1.0332, rel=1e-5)


def test_image_message_encoding_keeps_the_compressed_bytes(shared_data):
    msg = captures.read_capture(shared_data / "streams" / "eiger2-r500k-v2" / "r500k_bm_bslz4_16bit")[1][0]
    image = stream_v2.parse_message(msg)
    frames = stream_v2.encoded_frames(image, image.series_unique_id, list(image.data))
    import datetime

    now = datetime.datetime.now(datetime.timezone.utc)
    again = stream_v2_encode.encode_image(frames, 1, image.series_unique_id, now,
                                          (image.start_time_s, image.stop_time_s, image.real_time_s))
    assert again[:3] == stream_v2.SELF_DESCRIBE
    back = stream_v2.parse_message(again)
    assert back.image_id == image.image_id and back.start_time_s == image.start_time_s
    for name in image.data:
        assert back.data[name].encoded()[1] == image.data[name].encoded()[1]


def test_ulids_are_26_crockford_characters_sorted_by_time():
    a, b = stream_v2_encode.new_ulid(1_700_000_000.0), stream_v2_encode.new_ulid(1_700_000_001.0)
    assert len(a) == 26 and set(a) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ") and a < b


def _image(payload):
    return stream_v2_encode.dumps({"type": "image", "series_id": 1, "series_unique_id": "U", "image_id": 0,
                                   "data": {"threshold_1": payload}})


@pytest.mark.parametrize("message, reason", [
    (b"\xd9\xd9\xf7\xff\xff", "malformed_cbor"),
    (cbor2.dumps([1, 2, 3]), "malformed_cbor"),
    (stream_v2_encode.dumps({"type": "calibration", "series_id": 1}), "unknown_type"),
    (stream_v2_encode.dumps({"type": "end"}), "malformed_cbor"),
    (_image(cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2]))])), "malformed_cbor"),
    (_image(cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, b"\x00" * 8)])), None),
    (_image(b"not an array"), "malformed_cbor"),
])
def test_bad_messages(message, reason):
    if reason is None:
        frame = stream_v2.encoded_frames(stream_v2.parse_message(message), "U")[0]
        assert frame.encoding == "raw" and frame.shape == (2, 2)
        return
    with pytest.raises(BadInput) as err:
        stream_v2.parse_message(message)
    assert err.value.reason == reason


def test_unknown_compression_and_oversized_messages():
    msg = _image(cbor2.CBORTag(40, [[2, 2], cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bszstd", 2, b"xx"]))]))
    image = stream_v2.parse_message(msg)
    with pytest.raises(BadInput) as err:
        stream_v2.encoded_frames(image, "U")
    assert err.value.reason == "unknown_encoding"
    with pytest.raises(BadInput) as err:
        stream_v2.parse_message(msg, max_bytes=16)
    assert err.value.reason == "oversized_message"


def test_raw_lz4_frames_are_reframed_for_v2_without_recompression():
    arr = np.arange(64, dtype="<u2").reshape(8, 8)
    bare = codecs.encode(arr, "lz4")
    from streamer.sender import _for_v2

    frame = _for_v2(EncodedFrame("s", 0, (8, 8), "<u2", "lz4", bare))
    assert frame.encoding == "lz4-h5" and bare in frame.data
    np.testing.assert_array_equal(codecs.decode(frame), arr)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "ten"])
def test_non_finite_start_fields_are_a_bad_header(value):
    fields = stream_v2.loads(stream_v2_encode.encode_start(r500k_series(), 1, stream_v2_encode.new_ulid()), 1 << 20)
    fields["number_of_images"] = value
    start = stream_v2.parse_message(stream_v2_encode.dumps(fields))
    with pytest.raises(BadInput) as err:
        stream_v2.series_info(start)
    assert err.value.reason == "bad_header"


def test_a_phi_scan_is_a_rotation_not_stills():
    """As for stream v1: omega still and phi moving is a phi scan, not stills."""
    import dataclasses

    series = dataclasses.replace(r500k_series(), omega_increment_deg=0.0)
    msg = stream_v2_encode.encode_start(series, 3, stream_v2_encode.new_ulid(), "basic", series.channels)
    fields = cbor2.loads(msg)
    fields = dict(fields.value if isinstance(fields, cbor2.CBORTag) else fields)
    fields["goniometer"] = dict(fields["goniometer"])
    fields["goniometer"]["phi"] = {"start": -40.0, "increment": 0.1}
    fields["goniometer"]["chi"] = {"start": "n/a", "increment": None}
    fields["goniometer"]["two_theta"] = {"start": 15.0, "increment": 0.0}
    info = stream_v2.series_info(stream_v2.parse_message(cbor2.dumps(cbor2.CBORTag(55799, fields))))
    assert (info.omega_start_deg, info.omega_increment_deg, info.raw["scan_axis"]) == (-40.0, 0.1, "phi")
    assert info.two_theta_deg == 15.0
    assert not info.is_still
