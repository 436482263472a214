"""Internal message format: round trips without copies, explicit byte order, bounded sizes,
unknown versions and malformed messages as typed errors (never a crash)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamer import pipeline_messages, wire
from streamer.errors import BadInput
from streamer.series import EncodedFrame, SeriesInfo


def series():
    mask = np.zeros((6, 5), dtype="<u4")
    mask[2, 3] = 1
    return SeriesInfo(series_id="abc", source="stream-v2", image_shape=(6, 5), dtype="<u2", n_images=7,
                      beam_centre_px=(2.5, 3.0), omega_increment_deg=0.1, pixel_mask=mask,
                      channels=("threshold_1",), raw={"not": "sent"})


def test_series_round_trip_keeps_fields_types_and_mask():
    s = series()
    back = pipeline_messages.series_from(wire.decode(pipeline_messages.encode_series(s)))
    assert back == s  # dataclass equality: every compared field, tuples as tuples
    assert isinstance(back.beam_centre_px, tuple) and back.channels == ("threshold_1",)
    np.testing.assert_array_equal(back.pixel_mask, s.pixel_mask)
    assert back.raw == {}


def test_frame_over_a_real_socket_is_not_copied_on_receive():
    ctx = zmq.Context.instance()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        pull.bind("inproc://wire-test")
        push.connect("inproc://wire-test")
        payload = bytes(range(256)) * 512  # above zmq's copy threshold: a real zero-copy frame
        frame = EncodedFrame("abc", 3, (6, 5), "<u2", "bslz4", payload, received_at=12.5)
        push.send_multipart(pipeline_messages.encode_frame(frame, seq=2), copy=False)
        parts = pull.recv_multipart(copy=False)
        work = pipeline_messages.frame_from(wire.decode(parts))
        assert work.seq == 2 and work.frame.image_number == 3 and work.frame.received_at == 12.5
        data = work.frame.data
        assert bytes(data) == payload
        assert not data.flags.owndata and not data.flags.writeable  # a view of the zmq buffer
        assert np.shares_memory(data, np.frombuffer(parts[1].buffer, np.uint8))
    finally:
        push.close(0)
        pull.close(0)


def test_result_round_trip_with_spot_columns_and_profiles():
    r = pipeline_messages.FrameResult("abc", 4, 9, "w1", 0.001, 0.002,
                                      stats={"n_spots": 2, "estimated_d_min": 1.8, "ice_rings": [3.9, 3.67]},
                                      profiles={"radial_profile": np.arange(4, dtype=">f8")},
                                      spots={"x_px": np.array([1.5, 2.5], "<f4"),
                                             "n_pixels": np.array([3, 4], "<i4")})
    back = pipeline_messages.result_from(wire.decode(pipeline_messages.encode_result(r)))
    assert back.stats == r.stats and back.seq == 4 and not back.dropped
    assert back.profiles["radial_profile"].dtype == np.dtype(">f8")
    np.testing.assert_array_equal(back.profiles["radial_profile"], np.arange(4))
    np.testing.assert_array_equal(back.spots["n_pixels"], [3, 4])


def test_dropped_result_keeps_its_reason():
    r = pipeline_messages.FrameResult("abc", 0, 0, "w1", drop_reason="corrupt_compression", drop_message="bad block 3")
    parts = pipeline_messages.encode_result(r)
    back = pipeline_messages.result_from(wire.decode(parts))
    assert back.dropped and back.drop_reason == "corrupt_compression" and back.drop_message == "bad block 3"


def test_split_result_reads_structured_and_dataclass_tables():
    table = np.zeros(3, dtype=[("x_px", "<f8"), ("intensity", "<f4")])
    table["x_px"] = [1, 2, 3]
    stats, profiles, spots = pipeline_messages.split_result({"n_spots": np.int64(3), "spots": table, "p": np.ones(2)})
    assert stats == {"n_spots": 3} and type(stats["n_spots"]) is int
    assert list(spots) == ["x_px", "intensity"] and list(profiles) == ["p"]
    np.testing.assert_array_equal(spots["x_px"], [1, 2, 3])


def header(**over):
    h = {"v": wire.WIRE_VERSION, "kind": "model", "body": {}, "arrays": []}
    h.update(over)
    return msgpack.packb(h)


@pytest.mark.parametrize("parts, reason", [
    ([header(v=wire.WIRE_VERSION + 1)], "wire_version"),
    ([header(v=1)], "wire_version"),  # before the heartbeat: such a worker would be given up as silent
    ([header(v=None)], "wire_version"),
    ([header(kind="pickle")], "wire_unknown_kind"),
    ([b"\xc1not msgpack"], "wire_malformed"),
    ([msgpack.packb([1, 2])], "wire_malformed"),
    ([header(arrays=[["a", "<u2", [4]]])], "wire_malformed"),  # described, not sent
    ([header(arrays=[["a", "<u2", [4]]]), b"1234567"], "wire_malformed"),  # size disagrees
    ([header(arrays=[["a", "u2", [4]]]), b"12345678"], "wire_malformed"),  # no byte order
    ([header(arrays=[["a", "<U2", [1]]]), b"12345678"], "wire_malformed"),  # not numeric
    ([header(arrays=[["a", "<O", [1]]]), b"12345678"], "wire_malformed"),
    ([header(arrays=[["a", "<u4", [1 << 20, 1 << 20]]]), b""], "wire_too_large"),
    ([header()] + [b""] * (wire.MAX_PARTS + 1), "wire_too_large"),
    ([], "wire_malformed"),
])
def test_bad_messages_raise_typed_errors(parts, reason):
    with pytest.raises(wire.WireError) as exc:
        wire.decode(parts)
    assert isinstance(exc.value, BadInput) and exc.value.reason == reason


def test_frame_message_missing_fields_is_a_wire_error():
    with pytest.raises(wire.WireError):
        pipeline_messages.frame_from(wire.decode(wire.encode("frame", {"series_id": "x"}, {"data": b"12"})))
    with pytest.raises(wire.WireError):
        pipeline_messages.series_from(wire.decode(wire.encode("series", {"series_id": "x", "evil": 1})))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_fuzzed_parts_never_crash(parts):
    try:
        msg = wire.decode(parts)
    except wire.WireError:
        return
    assert msg.kind in wire.KINDS


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "kind", "body", "arrays", "x"]),
                       st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=8), st.none(),
                                 st.lists(st.lists(st.one_of(st.text(max_size=4), st.integers(-2**40, 2**40)), max_size=3),
                                          max_size=2)), max_size=5))
@example(h={"kind": [], "v": wire.WIRE_VERSION})  # an unhashable kind raised TypeError, a crash of whoever read it
def test_fuzzed_headers_never_crash(h):
    try:
        wire.decode([msgpack.packb(h), b"\x00" * 8])
    except wire.WireError:
        pass
