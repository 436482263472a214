"""`streamer.cbor_splice`: payloads joined in at placeholders give exactly cbor2's bytes; `split` takes
them out again as views of the message, for cbor2 to decode the rest."""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer import cbor_splice, codecs, stream_v2, stream_v2_encode
from streamer.series import EncodedFrame

SIZES = [0, 1, 23, 24, 255, 256, 65535, 65536, 1_500_000]


@pytest.mark.parametrize("n", SIZES)
def test_byte_string_head_is_cbor2s(n):
    payload = bytes(n)
    assert cbor_splice.byte_string_head(n) + payload == cbor2.dumps(payload)


def test_payloads_in_nested_tags_and_maps_give_cbor2s_bytes():
    rng = np.random.default_rng(1)
    payloads = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (300, 0, 70000, 24)]

    def message(values):
        return cbor2.CBORTag(55799, {"type": "image", "n": 7, "data": {
            f"c{i}": cbor2.CBORTag(40, [[2, 3], cbor2.CBORTag(70, cbor2.CBORTag(56500, ["bslz4", 4, v]))])
            for i, v in enumerate(values)}, "after": [1.5, "x"]})

    placeholders = [cbor_splice.placeholder(i) for i in range(len(payloads))]
    views = [memoryview(p) for p in payloads[:2]] + [np.frombuffer(payloads[2], np.uint8), bytearray(payloads[3])]
    assert cbor_splice.dumps(message(placeholders), views) == cbor2.dumps(message(payloads))


def test_a_missing_or_repeated_placeholder_is_an_error():
    with pytest.raises(ValueError, match="exactly once"):
        cbor_splice.dumps({"a": b"nothing here"}, [b"payload"])
    twice = cbor_splice.placeholder(0)
    with pytest.raises(ValueError, match="exactly once"):
        cbor_splice.dumps([twice, twice], [b"payload"])


def test_image_message_is_what_cbor2_writes_and_parses_back():
    frames = [EncodedFrame("s", 3, (40, 30), "<u4", "bslz4",
                           codecs.encode(np.arange(1200, dtype="<u4").reshape(40, 30) + k, "bslz4"), channel=name)
              for k, name in enumerate(["threshold_1", "threshold_2"])]
    date = datetime.datetime(2026, 12, 4, tzinfo=datetime.timezone.utc)
    message = stream_v2_encode.encode_image(frames, 5, "u-1", date, (0.0, 0.001, 0.001))
    whole = {"type": "image", "series_id": 5, "series_unique_id": "u-1", "image_id": 3,
             "real_time": stream_v2_encode.ticks(0.001), "series_date": date, "start_time": stream_v2_encode.ticks(0.0),
             "stop_time": stream_v2_encode.ticks(0.001),
             "data": {f.channel: stream_v2_encode.multidim(f.shape, f.dtype, f.encoding, f.data) for f in frames}}
    assert message == cbor2.dumps(cbor2.CBORTag(55799, whole))
    parsed = stream_v2.parse_message(message)
    assert [np.array_equal(a.decode(), codecs.decode(f)) for a, f in zip(parsed.data.values(), frames)] == [
        True, True]


def _item(draw_bytes):
    """Hypothesis strategy of nested CBOR values whose byte strings come from `draw_bytes`."""
    leaves = st.one_of(st.integers(-2**64 + 1, 2**64 - 1), st.floats(allow_nan=False), st.text(max_size=30),
                       st.booleans(), st.none(), draw_bytes)
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4),
        st.builds(cbor2.CBORTag, st.integers(60000, 2**40), inner)), max_leaves=12)  # tags cbor2 leaves alone


_SIZES = st.sampled_from([0, 5, 23, 24, 255, 256, 299, 300, 301, 70000])


@settings(max_examples=150, deadline=None)
@given(value=_item(_SIZES.map(lambda n: bytes(range(256)) * (n // 256) + bytes(range(n % 256)))),
       tail=st.binary(max_size=3))
def test_split_puts_every_large_byte_string_in_a_view_of_the_message(value, tail):
    """Any nesting of arrays, maps and tags, strings of every head size, bytes after the item."""
    whole = cbor2.dumps(value) + tail
    view = memoryview(whole)
    split = cbor_splice.split(view, 300, 64)
    big = []

    def collect(v):
        if isinstance(v, bytes) and len(v) >= 300:
            big.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                collect(x)
        elif isinstance(v, Mapping):
            for x in v.values():
                collect(x)
        elif isinstance(v, cbor2.CBORTag):
            collect(v.value)

    collect(value)
    if not big:
        assert split is None
        return
    small, payloads = split
    assert [bytes(p) for p in payloads.values()] == big  # in message order
    assert all(p.obj is whole for p in payloads.values())  # views, not copies
    assert len(small) < len(whole)

    def put_back(v):
        if isinstance(v, bytes) and v in payloads:
            return bytes(payloads[v])
        if isinstance(v, (list, tuple)):  # cbor2 hands a tag's array over as a tuple
            return type(v)(put_back(x) for x in v)
        if isinstance(v, Mapping):  # cbor2's frozendict inside tags
            return {k: put_back(x) for k, x in v.items()}
        if isinstance(v, cbor2.CBORTag):
            return cbor2.CBORTag(v.tag, put_back(v.value))
        return v

    assert put_back(cbor2.loads(small)) == cbor2.loads(whole)


def test_split_leaves_what_it_cannot_walk_to_cbor2():
    big = bytes(100_000)
    indefinite = b"\x9f" + cbor2.dumps(big) + b"\xff"  # an indefinite-length array
    assert cbor_splice.split(memoryview(indefinite), 1000, 16) is None
    truncated = cbor2.dumps([big])[:-10]
    assert cbor_splice.split(memoryview(truncated), 1000, 16) is None
    deep = cbor2.dumps([[[[big]]]])
    assert cbor_splice.split(memoryview(deep), 1000, 3) is None and cbor_splice.split(memoryview(deep), 1000, 8)
    reserved = b"\x1c" + bytes(10)
    assert cbor_splice.split(memoryview(reserved), 1, 16) is None


def test_v2_frames_are_views_of_the_received_message_and_other_large_strings_are_not():
    image = np.random.default_rng(2).poisson(100.0, (500, 600)).astype("<u4")
    frame = EncodedFrame("s", 3, image.shape, "<u4", "bslz4", codecs.encode(image, "bslz4"))
    date = datetime.datetime(2026, 12, 5, tzinfo=datetime.timezone.utc)
    message = stream_v2_encode.encode_image([frame], 5, "u-1", date, (0.0, 0.001, 0.001))
    assert len(message) > stream_v2.SPLICE_BYTES
    parsed = stream_v2.parse_message(message)
    data = parsed.data["threshold_1"].array.data.data
    assert isinstance(data, memoryview) and data.obj is message  # no copy of the frame
    np.testing.assert_array_equal(parsed.data["threshold_1"].decode(), image)
    # a large byte string outside the arrays (user data): the whole message is decoded by cbor2
    with_user = stream_v2_encode.encode_image([frame], 5, "u-1", date, (0.0, 0.001, 0.001), user_data=bytes(100_000))
    parsed = stream_v2.parse_message(with_user)
    assert parsed.user_data == bytes(100_000) and isinstance(parsed.user_data, bytes)
    np.testing.assert_array_equal(parsed.data["threshold_1"].decode(), image)
    assert isinstance(parsed.data["threshold_1"].array.data.data, bytes)
