"""SIMPLON stream v1: real headers normalised, [width, height] shapes, times, encoders, bad messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamer import captures, codecs, stream_v1, stream_v1_encode
from streamer.errors import BadInput
from streamer.series import EncodedFrame, SeriesInfo


@pytest.fixture(scope="module")
def eiger2_1m(shared_data):
    return captures.read_capture(shared_data / "streams" / "eiger2-1m-v1")


@pytest.fixture(scope="module")
def eiger_4m(shared_data):
    return captures.read_capture(shared_data / "streams" / "eiger4m-v1-dls")


def test_eiger2_header_normalised(eiger2_1m):
    header = stream_v1.parse_message(eiger2_1m[0])
    info = stream_v1.series_info(header)
    assert header.header_detail == "all" and header.flatfield is None and header.pixel_mask is None
    assert info.series_id == "71" and info.source == "stream-v1"
    assert info.image_shape == (1062, 1028) and info.dtype == "<u4" and info.bit_depth_image == 32
    assert info.pixel_size_mm == pytest.approx((0.075, 0.075))
    assert info.sensor_thickness_mm == pytest.approx(0.45) and info.sensor_material == "Si"
    assert info.wavelength_A == pytest.approx(1.5418000685586377)
    assert info.count_time_s == pytest.approx(0.9999999) and info.frame_time_s == 1.0
    assert info.saturation_value == 1702012 and info.n_images == 10
    assert info.countrate_correction_applied is True and info.flatfield_applied is True
    assert info.detector_description == "Dectris EIGER2 Si 1M" and info.detector_serial == "E-02-0XXX"
    assert header.countrate_table.shape == (1001, 2)


def test_eiger1_header_booleans_bit_depth_and_arrays(eiger_4m):
    header = stream_v1.parse_message(eiger_4m[0])
    assert "bit_depth_image" not in header.config and header.config["countrate_correction_applied"] == 1
    info = stream_v1.series_info(header, dtype="<u2")
    assert info.dtype == "<u2" and info.bit_depth_image == 16
    assert info.countrate_correction_applied is True
    assert info.image_shape == (2167, 2070)
    assert info.pixel_mask.shape == (2167, 2070) and info.flatfield.shape == (2167, 2070)
    assert not info.pixel_mask.flags.writeable
    assert info.wavelength_A == pytest.approx(1.5406012535095215)
    assert info.raw["appendix"] == {"acqID": "test_1"}


def test_image_shape_is_width_height_on_the_wire(eiger2_1m):
    image = stream_v1.parse_message(eiger2_1m[1])
    desc = json.loads(eiger2_1m[1][1])
    assert desc["shape"] == [1028, 1062]
    assert image.shape == (1062, 1028) and image.encoding == "lz4" and image.dtype == "<u4"
    # and a non-square synthetic frame keeps its orientation through encode -> parse -> decode
    arr = np.arange(15, dtype="<u2").reshape(3, 5)
    frame = EncodedFrame("1", 4, (3, 5), "<u2", "raw", arr.tobytes())
    parts = stream_v1_encode.encode_image(frame, 1, (1, 2, 1))
    assert json.loads(parts[1])["shape"] == [5, 3]
    back = stream_v1.parse_message(parts)
    np.testing.assert_array_equal(codecs.decode_buffer(back.data, back.shape, back.dtype, back.encoding), arr)


def test_times_eiger2_nanoseconds_eiger1_20ns_ticks(eiger2_1m, eiger_4m):
    for messages, tick in ((eiger2_1m, 1e-9), (eiger_4m, 20e-9)):
        header = stream_v1.parse_message(messages[0])
        assert stream_v1.time_tick_s(header.config) == tick
        info = stream_v1.series_info(header, dtype="<u2")
        frames = [stream_v1.encoded_frame(stream_v1.parse_message(m), info) for m in messages[1:3]]
        assert frames[0].real_time_s == pytest.approx(info.count_time_s, rel=0.01)
        assert frames[1].start_time_s - frames[0].start_time_s == pytest.approx(info.frame_time_s, rel=0.01)
        assert frames[0].start_time_s > 0  # not 0 for the first image on real detectors


@pytest.mark.parametrize("detail", ["none", "basic", "all"])
def test_header_encode_parse_round_trip(detail):
    mask = np.zeros((4, 6), dtype="<u4")
    mask[1, 2] = 1 << 31
    series = SeriesInfo(series_id="9", source="simulator", image_shape=(4, 6), dtype="<u2", n_images=7,
                        beam_centre_px=(2.5, 1.5), distance_mm=150.0, wavelength_A=0.9793, pixel_size_mm=(0.075, 0.075),
                        omega_start_deg=10.0, omega_increment_deg=0.1, count_time_s=0.01, frame_time_s=0.01,
                        saturation_value=65000, bit_depth_image=16, sensor_material="CdTe", sensor_thickness_mm=0.75,
                        pixel_mask=mask, flatfield=np.ones((4, 6), "<f4"))
    parts = stream_v1_encode.encode_header(series, 9, detail, appendix={"user": 1})
    assert len(parts) == stream_v1.HEADER_PARTS[detail] + 1
    header = stream_v1.parse_message(parts)
    assert header.appendix == {"user": 1}
    if detail == "none":
        return
    info = stream_v1.series_info(header)
    for name in ("image_shape", "dtype", "n_images", "beam_centre_px", "omega_start_deg", "omega_increment_deg",
                 "saturation_value", "sensor_material", "bit_depth_image"):
        assert getattr(info, name) == getattr(series, name), name
    for name in ("distance_mm", "wavelength_A", "sensor_thickness_mm", "count_time_s"):
        assert getattr(info, name) == pytest.approx(getattr(series, name)), name
    if detail == "all":
        np.testing.assert_array_equal(info.pixel_mask, mask)
        np.testing.assert_array_equal(info.flatfield, series.flatfield)


@pytest.mark.parametrize("name, dtype, expected", [
    ("bs32-lz4<", "<u4", ("bslz4", "<u4")), ("bs16-lz4<", "<u2", ("bslz4", "<u2")),
    ("bs8-lz4<", "|u1", ("bslz4", "|u1")), ("lz4<", "<u4", ("lz4", "<u4")), ("<", "<u2", ("raw", "<u2")),
    ("lz4>", "<u2", ("lz4", ">u2")),
])
def test_encoding_names(name, dtype, expected):
    assert stream_v1.encoding_of(name, dtype) == expected
    assert stream_v1_encode.v1_encoding_name(*expected) == name


def _image_parts(eiger2_1m):
    return [bytes(p) for p in eiger2_1m[1]]


def _bad_cases(parts):
    desc = json.loads(parts[1])
    cases = {
        "truncated_message": parts[:3],
        "wrong_part_count": parts + [b"{}", b"{}"],
        "unknown_type": [json.dumps({"htype": "dimage-2.0", "series": 1}).encode()] + parts[1:],
        "malformed_json": [b"{not json"] + parts[1:],
        "blob_size": parts[:2] + [parts[2][:-10]] + parts[3:],
        "unknown_encoding": [parts[0], json.dumps({**desc, "encoding": "bszstd<"}).encode()] + parts[2:],
    }
    return cases


def test_bad_messages_raise_with_their_reason(eiger2_1m):
    for reason, parts in _bad_cases(_image_parts(eiger2_1m)).items():
        with pytest.raises(BadInput) as err:
            stream_v1.parse_message(parts)
        assert err.value.reason == reason, reason
    for parts in ([], [b"[1, 2]"], [b'{"htype": 5}'], [b'{"htype": "dseries_end-1.0", "series": -1}']):
        with pytest.raises(BadInput):
            stream_v1.parse_message(parts)


def test_header_blob_size_disagreeing_with_its_part_header(eiger_4m):
    parts = list(eiger_4m[0])
    parts[5] = parts[5][:-4]
    with pytest.raises(BadInput) as err:
        stream_v1.parse_message(parts)
    assert err.value.reason == "blob_size"


@pytest.mark.parametrize("value", ["NaN", "Infinity", '"ten"', "true"])
def test_non_finite_or_non_numeric_configuration_is_a_bad_header(value):
    series = SeriesInfo(series_id="1", source="simulator", image_shape=(4, 6), dtype="<u2")
    parts = stream_v1_encode.encode_header(series, 1, "basic")
    config = json.loads(parts[1])
    parts[1] = json.dumps(config).replace('"nimages": 0', f'"nimages": {value}').encode()
    assert f'"nimages": {value}' in parts[1].decode()
    header = stream_v1.parse_message(parts)
    with pytest.raises(BadInput) as err:
        stream_v1.series_info(header)
    assert err.value.reason == "bad_header"


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_count_cutoff_that_is_no_finite_number_is_a_bad_header(value):
    """The count cut-off sets the trusted range: NaN or infinity there was a ValueError or
    OverflowError out of `series_info`, past the receiver's handling of bad input."""
    series = SeriesInfo(series_id="1", source="simulator", image_shape=(4, 6), dtype="<u2", saturation_value=60000)
    parts = stream_v1_encode.encode_header(series, 1, "basic")
    parts[1] = parts[1].replace(b'"countrate_correction_count_cutoff":60000',
                                f'"countrate_correction_count_cutoff":{value}'.encode())
    assert value.encode() in parts[1]
    with pytest.raises(BadInput) as err:
        stream_v1.series_info(stream_v1.parse_message(parts))
    assert err.value.reason == "bad_header"


def test_a_phi_scan_is_a_rotation_not_stills():
    """A kappa goniometer scanning phi: omega's increment is 0, phi's is not. The series was
    taken for stills (no rotation indexing); the scan is now phi's. A value that is no number
    on a seldom-scanned axis does not refuse the header."""
    import json

    series = SeriesInfo(series_id="4", source="simulator", image_shape=(4, 6), dtype="<u2", n_images=3,
                        beam_centre_px=(2.5, 1.5), distance_mm=150.0, wavelength_A=0.98, omega_start_deg=12.0,
                        omega_increment_deg=0.0, count_time_s=0.01, frame_time_s=0.01, bit_depth_image=16)
    parts = stream_v1_encode.encode_header(series, 4, "basic")
    config = json.loads(bytes(parts[1]))
    assert "omega_increment" in config
    config.update(phi_start=30.0, phi_increment=0.2, chi_start=None, kappa_increment="n/a")
    info = stream_v1.series_info(stream_v1.parse_message([parts[0], json.dumps(config).encode(), *parts[2:]]))
    assert (info.omega_start_deg, info.omega_increment_deg, info.raw["scan_axis"]) == (30.0, 0.2, "phi")
    assert not info.is_still
    assert info.two_theta_deg == 0.0
    config.update(phi_increment=0.0, two_theta_start=20.0)
    info = stream_v1.series_info(stream_v1.parse_message([parts[0], json.dumps(config).encode(), *parts[2:]]))
    assert (info.omega_start_deg, info.omega_increment_deg, info.raw["scan_axis"]) == (12.0, 0.0, "omega")
    assert info.two_theta_deg == 20.0  # a swung detector: `geometry_problems` says it is not modelled


def test_rotations_not_about_omegas_axis_are_stills():
    """Headers give angles, not axis vectors: phi turns about omega's axis only with kappa and
    chi at 0. A chi or kappa scan, or phi with kappa off 0, would have been modelled as a
    rotation about omega's axis (wrong spots joined, a wrong lattice): stills, with the reason."""
    from streamer.series import rotation_scan

    assert rotation_scan({"omega": (5.0, 0.0), "phi": (30.0, 0.1)}) == ("phi", 30.0, 0.1)
    assert rotation_scan({"omega": (5.0, 0.0), "phi": (30.0, 0.1), "kappa": (0.0, 0.0), "chi": (0.0, 0.0)})[2] == 0.1
    for angles in ({"omega": (5.0, 0.0), "phi": (30.0, 0.1), "kappa": (45.0, 0.0)},
                   {"omega": (5.0, 0.0), "chi": (10.0, 0.1)}, {"omega": (5.0, 0.0), "kappa": (0.0, 0.2)}):
        axis, start, increment = rotation_scan(angles)
        assert (start, increment) == (5.0, 0.0) and axis.endswith("(not modelled: stills)"), angles
    assert rotation_scan({"omega": (5.0, 0.5), "chi": (10.0, 0.1)}) == ("omega", 5.0, 0.5)
