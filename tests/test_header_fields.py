"""Every field of a stream header or image message replaced by a value no detector should send
(NaN, infinity, a number past 64 bits, text, a list, a lone surrogate, 100 kB of text, nothing):
the series or frame is refused with a counted reason, or it is usable everywhere after the
receiver (the wire to the workers, the per-image set-up and analysis). Never an exception out
of the receiver."""

from __future__ import annotations

import datetime
import json

import cbor2
import numpy as np
import pytest
from receiver_fakes import encoded_frames, small_series

from streamer import codecs, pipeline_messages, stream_v1, stream_v1_encode, stream_v2_encode, wire
from streamer.config import Config
from streamer.errors import BadHeader
from streamer.header_corrections import geometry_problems
from streamer.perimage import ImageAnalyser
from streamer.receiver import Receiver
from streamer.series import MAX_TEXT, Dropped, EncodedFrame, SeriesInfo, header_text

NOT_SENT = [float("nan"), float("inf"), -float("inf"), 0, -1, -0.5, 1e300, 2**64, -(2**70), "abc", "", None, True,
            [], {}, [1.0, 2.0], 1e-300, "\ud800", "x" * 100_000]
DELETE = object()
SERIES = small_series(n=2)
ARRAYS, FRAMES = encoded_frames(SERIES)


def _with(mapping: dict, key: str, value) -> dict:
    out = dict(mapping)
    if value is DELETE:
        out.pop(key, None)
    else:
        out[key] = value
    return out


def _usable_everywhere(events: list, frame_events: list) -> None:
    """What the receiver announced goes over the wire and through the per-image analysis."""
    reasons = [e.reason for e in events + frame_events if hasattr(e, "reason") and not hasattr(e, "n_images_received")]
    assert "receiver_error" not in reasons, reasons
    announced = [e for e in events + frame_events if isinstance(e, SeriesInfo)]
    if not announced:
        assert reasons, "a series neither announced nor refused"
        return
    series = announced[0]
    again = pipeline_messages.series_from(wire.decode(pipeline_messages.encode_series(series)))
    assert again == series
    analyser = ImageAnalyser(series, Config(), warm_up=False)
    frames = [e for e in frame_events if isinstance(e, EncodedFrame)]
    for frame in frames:  # what the receiver let through matches the series and analyses
        analyser.analyse(codecs.decode(frame), frame.image_number)


V1_CONFIG = json.loads(stream_v1_encode.encode_header(SERIES, 7, "basic")[1])


@pytest.mark.parametrize("key", sorted(V1_CONFIG))
def test_any_value_in_a_v1_configuration_field_is_refused_or_usable(ctx, key):
    header = stream_v1_encode.encode_header(SERIES, 7, "basic")
    image = stream_v1_encode.encode_image(FRAMES[0], 7, (0, 1, 1))
    for value in NOT_SENT + [DELETE]:
        receiver = Receiver(ctx, "inproc://unused")
        try:
            header[1] = json.dumps(_with(V1_CONFIG, key, value)).encode()
            events = receiver.handle(header)
            _usable_everywhere(events, receiver.handle(image))
        finally:
            receiver.close()


def _v2_start_fields() -> dict:
    message = cbor2.loads(stream_v2_encode.encode_start(SERIES, 7, "01HQ", "basic"))
    return dict(message.value if isinstance(message, cbor2.CBORTag) else message)


V2_START = _v2_start_fields()
V2_KEYS = [(k, None) for k in sorted(V2_START) if k != "type"] + [
    ("goniometer", axis) for axis in sorted(V2_START.get("goniometer", {}))]


@pytest.mark.parametrize("key,axis", V2_KEYS)
def test_any_value_in_a_v2_start_field_is_refused_or_usable(ctx, key, axis):
    date = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    for value in [v for v in NOT_SENT if v != "\ud800"] + [DELETE]:  # CBOR text is UTF-8: no lone surrogate
        fields = dict(V2_START)
        if axis is None:
            fields = _with(fields, key, value)
        else:
            fields[key] = _with(fields[key], axis, value if value is DELETE else {"start": value, "increment": 0.5})
        unique = fields.get("series_unique_id") if isinstance(fields.get("series_unique_id"), str) else "01HQ"
        series_id = fields.get("series_id") if type(fields.get("series_id")) is int and fields["series_id"] >= 0 else 7
        image = stream_v2_encode.encode_image([FRAMES[0]], series_id, unique, date, (0.0, 0.1, 0.1))
        receiver = Receiver(ctx, "inproc://unused")
        try:
            events = receiver.handle([cbor2.dumps(cbor2.CBORTag(55799, fields))])
            _usable_everywhere(events, receiver.handle([image]))
        finally:
            receiver.close()


def _frames_go_over_the_wire(events: list) -> None:
    """Frames and drops go on as the fan-out sends them (msgpack: 64-bit numbers at most)."""
    assert "receiver_error" not in [getattr(e, "reason", None) for e in events]
    for drop in (e for e in events if isinstance(e, Dropped)):
        wire.decode(wire.encode("received_drop", {"reason": drop.reason, "series_id": drop.series_id,
                                                  "image_number": drop.image_number}))
    for frame in (e for e in events if isinstance(e, EncodedFrame)):
        again = pipeline_messages.frame_from(wire.decode(pipeline_messages.encode_frame(frame, 0)))
        assert again.frame.image_number == frame.image_number


V1_ALL = stream_v1_encode.encode_header(small_series(n=2, mask=True), 7, "all")
V1_HEADER_FIELDS = [(part, key) for part in range(len(V1_ALL)) if part != 1 and V1_ALL[part][:1] == b"{"
                    for key in sorted(json.loads(V1_ALL[part]))]


@pytest.mark.parametrize("part,key", V1_HEADER_FIELDS)
def test_any_value_in_the_other_parts_of_a_v1_header_is_refused_or_usable(ctx, part, key):
    for value in NOT_SENT + [[2**64, 1], [1, 10**30], DELETE]:
        receiver = Receiver(ctx, "inproc://unused")
        try:
            header = list(V1_ALL)
            header[part] = json.dumps(_with(json.loads(header[part]), key, value)).encode()
            events = receiver.handle(header)
            _usable_everywhere(events, receiver.handle(stream_v1_encode.encode_image(FRAMES[0], 7, (0, 1, 1))))
        finally:
            receiver.close()


V1_IMAGE = stream_v1_encode.encode_image(FRAMES[1], 7, (0, 1, 1))
V1_IMAGE_FIELDS = [(part, key) for part in (0, 1, 3) for key in sorted(json.loads(V1_IMAGE[part]))]


@pytest.mark.parametrize("part,key", V1_IMAGE_FIELDS)
def test_any_value_in_a_v1_image_field_is_dropped_or_usable(ctx, part, key):
    for header_detail in ("basic", "none"):  # "none": the first image gives the series its shape
        for value in NOT_SENT + [2**63, DELETE]:
            receiver = Receiver(ctx, "inproc://unused")
            try:
                receiver.handle(stream_v1_encode.encode_header(SERIES, 7, header_detail))
                image = list(V1_IMAGE)
                image[part] = json.dumps(_with(json.loads(image[part]), key, value)).encode()
                _frames_go_over_the_wire(receiver.handle(image))
                _frames_go_over_the_wire(receiver.handle(stream_v1_encode.encode_image(FRAMES[0], 7, (0, 1, 1))))
            finally:
                receiver.close()


def _v2_image_fields() -> dict:
    date = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    message = cbor2.loads(stream_v2_encode.encode_image([FRAMES[1]], 7, "01HQ", date, (0.0, 0.1, 0.1)))
    return dict(message.value if isinstance(message, cbor2.CBORTag) else message)


V2_IMAGE = _v2_image_fields()


@pytest.mark.parametrize("key", sorted(k for k in V2_IMAGE if k not in ("type", "data")))
def test_any_value_in_a_v2_image_field_is_dropped_or_usable(ctx, key):
    start = stream_v2_encode.encode_start(SERIES, 7, "01HQ", "basic")
    for value in [v for v in NOT_SENT if v != "\ud800"] + [2**63, [10**400, 1], [1, 10**-300], DELETE]:
        receiver = Receiver(ctx, "inproc://unused")
        try:
            receiver.handle([start])
            image = cbor2.dumps(cbor2.CBORTag(55799, _with(V2_IMAGE, key, value)))
            _frames_go_over_the_wire(receiver.handle([image]))
        finally:
            receiver.close()


def test_a_bit_depth_that_names_no_pixel_type_takes_the_type_of_the_first_image(ctx):
    for value in (12, 0, 16.0, "16", [16], float("nan")):
        receiver = Receiver(ctx, "inproc://unused")
        header = stream_v1_encode.encode_header(SERIES, 7, "basic")
        header[1] = json.dumps(_with(V1_CONFIG, "bit_depth_image", value)).encode()
        assert receiver.handle(header) == []  # announced with its first image
        events = receiver.handle(stream_v1_encode.encode_image(FRAMES[0], 7, (0, 1, 1)))
        assert isinstance(events[0], SeriesInfo) and (events[0].dtype, events[0].bit_depth_image) == ("<u2", 16)
        assert isinstance(events[1], EncodedFrame)
        receiver.close()


def test_a_v2_pixel_type_that_names_none_takes_the_type_of_the_first_image(ctx):
    for value in ("uint12", 16.0, [16], None):
        fields = _with(_with(V2_START, "image_dtype", value), "bit_depth_image", value)
        receiver = Receiver(ctx, "inproc://unused")
        assert receiver.handle([cbor2.dumps(cbor2.CBORTag(55799, fields))]) == []  # announced with its first image
        date = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
        events = receiver.handle([stream_v2_encode.encode_image([FRAMES[0]], 7, "01HQ", date, (0.0, 0.1, 0.1))])
        assert isinstance(events[0], SeriesInfo) and events[0].dtype == "<u2" and isinstance(events[1], EncodedFrame)
        receiver.close()


def test_a_receiver_bug_is_counted_and_the_receiver_goes_on(ctx, monkeypatch, caplog):
    receiver = Receiver(ctx, "inproc://unused")

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(stream_v1, "series_info", broken)
        with caplog.at_level("ERROR", logger="streamer.receiver"):
            events = receiver.handle(stream_v1_encode.encode_header(SERIES, 7, "basic"))
    assert [e.reason for e in events] == ["receiver_error"] and receiver.counters["receiver_error"] == 1
    assert any(r.exc_info for r in caplog.records)  # with its traceback
    events = receiver.handle(stream_v1_encode.encode_header(SERIES, 8, "basic"))
    assert isinstance(events[0], SeriesInfo)
    receiver.close()


@pytest.mark.parametrize("change,says", [
    ({"image_shape": (16, 1 << 20)}, "image shape"),
    ({"image_shape": (16.0, 20)}, "image shape"),
    ({"n_images": 2**64}, "n_images"),
    ({"saturation_value": -(2**70)}, "saturation_value"),
    ({"bit_depth_image": 16.5}, "bit_depth_image"),
    ({"beam_centre_px": (1.0, "a")}, "beam_centre_px"),
    ({"distance_mm": None}, "distance_mm"),
    ({"detector_description": "\ud800"}, "not text"),
    ({"detector_serial": "x" * (MAX_TEXT + 1)}, "not text"),
    ({"channels": ("a", 3)}, "not text"),
])
def test_a_series_that_outputs_could_not_carry_is_a_bad_header(change, says):
    with pytest.raises(BadHeader, match=says):
        SeriesInfo(**{**{"series_id": "1", "source": "simulator", "image_shape": (16, 20), "dtype": "<u2"}, **change})


def test_header_text_is_what_every_output_can_carry():
    assert header_text("EIGER2 XE 16M") == "EIGER2 XE 16M"
    assert header_text("a\ud800b") == "a?b"
    assert header_text(3.5) == "3.5"
    assert len(header_text("x" * 5000)) == MAX_TEXT


def test_a_beam_centre_distance_or_wavelength_out_of_all_reason_gives_no_resolutions():
    assert geometry_problems(SERIES) == []
    for change in ({"beam_centre_px": (1e300, 8.5)}, {"beam_centre_px": (10.5, -(2.0**64))}, {"distance_mm": 1e300},
                   {"wavelength_A": 1e300}, {"wavelength_A": 1e-300}):
        problems = geometry_problems(SeriesInfo(**{**SERIES.__dict__, **change}))
        assert len(problems) == 1, problems
    problems = geometry_problems(SeriesInfo(**{**SERIES.__dict__, "pixel_size_mm": (0.075, 1e300)}))
    assert len(problems) == 1 and problems[0].startswith("pixel size")  # not the beam centre as well


def test_an_image_of_a_series_with_a_beam_centre_of_1e300_has_no_resolutions():
    series = SeriesInfo(**{**SERIES.__dict__, "beam_centre_px": (1e300, 8.5)})
    result = ImageAnalyser(series, Config(), warm_up=False).analyse(ARRAYS[0], 0)
    assert result.estimated_d_min == -1.0 and np.all(np.isnan(result.radial_profile))
