"""`streamer.cbor_splice`: payloads joined in at placeholders give exactly cbor2's bytes."""

from __future__ import annotations

import datetime

import cbor2
import numpy as np
import pytest

from streamer import cbor_splice, codecs, stream_v2
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
    message = stream_v2.encode_image(frames, 5, "u-1", date, (0.0, 0.001, 0.001))
    whole = {"type": "image", "series_id": 5, "series_unique_id": "u-1", "image_id": 3,
             "real_time": stream_v2._ticks(0.001), "series_date": date, "start_time": stream_v2._ticks(0.0),
             "stop_time": stream_v2._ticks(0.001),
             "data": {f.channel: stream_v2.multidim(f.shape, f.dtype, f.encoding, f.data) for f in frames}}
    assert message == cbor2.dumps(cbor2.CBORTag(55799, whole))
    parsed = stream_v2.parse_message(message)
    assert [np.array_equal(a.decode(), codecs.decode(f)) for a, f in zip(parsed.data.values(), frames)] == [
        True, True]
