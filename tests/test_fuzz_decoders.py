"""Fuzzing (hypothesis) of the codecs and of the v1/v2 parsers: random and mutated bytes never crash
with anything but BadInput, and never allocate beyond the expected frame."""

from __future__ import annotations

import json
import resource
import struct

import cbor2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamer import codec_backends, codecs, stream_v1, stream_v1_encode, stream_v2, stream_v2_encode
from streamer.errors import BadInput
from streamer.receiver import Receiver
from streamer.series import EncodedFrame, SeriesInfo

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHAPE = (37, 41)
_RNG = np.random.default_rng(5)
ARRAYS = {dt: _RNG.poisson(4, SHAPE).astype(dt) for dt in ("|u1", "<u2", "<u4")}
VALID = {(dt, enc): codecs.encode(a, enc) for dt, a in ARRAYS.items() for enc in ("bslz4", "lz4", "lz4-h5")}


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _decode_all_backends(data, shape, dtype, encoding):
    for backend in codec_backends.available_backends():
        try:
            out = codecs.decode_buffer(data, shape, dtype, encoding, backend=backend)
        except BadInput:
            continue
        assert out.shape == tuple(shape) and out.dtype == np.dtype(dtype)


@FUZZ
@given(data=st.binary(max_size=600), encoding=st.sampled_from(codecs.ENCODINGS + ("zstd",)),
       dtype=st.sampled_from(["|u1", "<u2", "<u4"]),
       shape=st.tuples(st.integers(1, 64), st.integers(1, 64)))
def test_random_bytes_never_crash_a_decoder(data, encoding, dtype, shape):
    _decode_all_backends(data, shape, dtype, encoding)


@FUZZ
@given(key=st.sampled_from(sorted(VALID)), edits=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 10**6))
def test_mutated_real_encodings_never_crash_a_decoder(key, edits, cut):
    dtype, encoding = key
    data = bytearray(VALID[key])
    for pos, value in edits:
        data[pos % len(data)] = value
    _decode_all_backends(bytes(data), SHAPE, dtype, encoding)
    _decode_all_backends(bytes(data[: cut % (len(data) + 1)]), SHAPE, dtype, encoding)


@FUZZ
@given(total=st.integers(0, 2**64 - 1), block=st.integers(0, 2**32 - 1), tail=st.binary(max_size=64),
       encoding=st.sampled_from(["bslz4", "lz4-h5"]))
def test_declared_sizes_are_checked_before_any_allocation(total, block, tail, encoding):
    before = _max_rss_mb()
    _decode_all_backends(struct.pack(">QI", total, block) + tail, SHAPE, "<u4", encoding)
    assert _max_rss_mb() - before < 64  # a declared 2**60-byte image is rejected, not allocated


def _v1_image_parts():
    frame = EncodedFrame("1", 0, SHAPE, "<u2", "bslz4", VALID[("<u2", "bslz4")])
    return stream_v1_encode.encode_image(frame, 1, (10, 20, 10))


def _v1_header_parts():
    series = SeriesInfo(series_id="1", source="simulator", image_shape=SHAPE, dtype="<u2",
                        pixel_mask=np.zeros(SHAPE, "<u4"), flatfield=np.ones(SHAPE, "<f4"))
    return stream_v1_encode.encode_header(series, 1, "all")


@FUZZ
@given(which=st.sampled_from(["image", "header"]), part=st.integers(0, 8), edits=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6), drop=st.integers(0, 9),
    extra=st.lists(st.binary(max_size=40), max_size=3))
def test_mutated_v1_messages_raise_only_bad_input(which, part, edits, drop, extra):
    parts = [bytearray(p) for p in (_v1_image_parts() if which == "image" else _v1_header_parts())]
    target = parts[part % len(parts)]
    for pos, value in edits:
        if target:
            target[pos % len(target)] = value
    if drop < len(parts) and drop % 3 == 0:
        del parts[drop]
    message = [bytes(p) for p in parts] + extra
    try:
        parsed = stream_v1.parse_message(message)
    except BadInput:
        return
    if isinstance(parsed, stream_v1.V1Image):
        _decode_all_backends(parsed.data, parsed.shape, parsed.dtype, parsed.encoding)
    elif isinstance(parsed, stream_v1.V1Header):
        try:
            stream_v1.series_info(parsed)
        except BadInput:
            pass


@FUZZ
@given(obj=st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats() | st.text(max_size=8) | st.binary(max_size=16),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20))
def test_random_json_parts_raise_only_bad_input(obj):
    for parts in ([json.dumps(obj, default=repr).encode()], [b'{"htype": "dimage-1.0", "series": 1}',
                                                                json.dumps(obj, default=repr).encode(), b"", b"{}"]):
        try:
            stream_v1.parse_message(parts)
        except BadInput:
            pass


def _v2_image():
    frame = EncodedFrame("1", 0, SHAPE, "<u2", "bslz4", VALID[("<u2", "bslz4")])
    import datetime

    date = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    return stream_v2_encode.encode_image([frame], 1, stream_v2_encode.new_ulid(), date, (0.0, 0.1, 0.1))


V2_IMAGE = _v2_image()
V2_START = stream_v2_encode.encode_start(
    SeriesInfo(series_id="1", source="simulator", image_shape=SHAPE, dtype="<u2", pixel_mask=np.zeros(SHAPE, "<u4")),
    1, stream_v2_encode.new_ulid(), "all")


@FUZZ
@given(which=st.sampled_from(["image", "start"]), edits=st.lists(
    st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6), cut=st.integers(0, 10**6))
def test_mutated_v2_messages_raise_only_bad_input(which, edits, cut):
    data = bytearray(V2_IMAGE if which == "image" else V2_START)
    for pos, value in edits:
        data[pos % len(data)] = value
    for message in (bytes(data), bytes(data[: cut % (len(data) + 1)])):
        try:
            parsed = stream_v2.parse_message(message)
            if isinstance(parsed, stream_v2.V2Image):
                for frame in stream_v2.encoded_frames(parsed, "x", list(parsed.data)):
                    _decode_all_backends(frame.data, frame.shape, frame.dtype, frame.encoding)
            elif isinstance(parsed, stream_v2.V2Start):
                stream_v2.series_info(parsed)
        except BadInput:
            pass


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_cbor_raises_only_bad_input(data):
    for message in (data, stream_v2.SELF_DESCRIBE + data, b"\xa1\x64type" + data):
        try:
            stream_v2.parse_message(message)
        except BadInput:
            pass


def test_huge_declared_cbor_lengths_are_not_allocated():
    before = _max_rss_mb()
    for head in (b"\x9b", b"\x5b", b"\x7b", b"\xbb"):  # array, bytes, text, map of 2**60 items
        try:
            stream_v2.parse_message(head + struct.pack(">Q", 1 << 60))
        except BadInput:
            pass
    payload = cbor2.CBORTag(56500, ["bslz4", 4, struct.pack(">QI", 1 << 62, 8192)])
    array = cbor2.CBORTag(40, [[1 << 30, 1 << 30], cbor2.CBORTag(70, payload)])
    big = cbor2.dumps(cbor2.CBORTag(55799, {"type": "image", "series_id": 1, "image_id": 0, "data": {"t": array}}))
    image = stream_v2.parse_message(big)
    frame = stream_v2.encoded_frames(image, "x")[0]
    try:
        codecs.decode(frame)
    except BadInput as exc:
        assert exc.reason == "wrong_size"
    assert _max_rss_mb() - before < 64


@settings(max_examples=60, deadline=None)
@given(messages=st.lists(st.lists(st.binary(max_size=64), min_size=0, max_size=6), max_size=6))
def test_receiver_survives_any_sequence_of_messages(messages):
    import zmq

    ctx = zmq.Context.instance()
    receiver = Receiver(ctx, "inproc://fuzz-unused")
    try:
        for parts in messages + [_v1_header_parts(), _v1_image_parts()]:
            receiver.handle(parts)
        assert receiver.frames_received == 1  # the good frame after the garbage still gets through
    finally:
        receiver.close()
