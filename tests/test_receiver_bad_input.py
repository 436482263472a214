"""Bad input at the receiver: each case is dropped with its reason, and the next good frame gets through."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections import Counter

import numpy as np
import pytest
import zmq
from receiver_fakes import (
    TIMEOUT_S,
    collect,
    encoded_frames,
    in_thread,
    small_series,
)

from streamer import codecs, stream_v1_encode, stream_v2_encode
from streamer.config import ReceiverConfig
from streamer.receiver import Receiver
from streamer.sender import DetectorSender
from streamer.series import EncodedFrame, SeriesEnd, SeriesInfo

# --- bad input: each case is dropped with its reason, and the next good frame gets through -------------

def _v1_good(series, frames):
    images = [stream_v1_encode.encode_image(f, 7, (0, 1, 1)) for f in frames]
    return stream_v1_encode.encode_header(series, 7, "basic"), images, stream_v1_encode.encode_end(7)


def _bad_v1_cases(image):
    desc = json.loads(image[1])
    return {
        "truncated_message": image[:2],
        "wrong_part_count": image + [b"{}", b"{}"],
        "unknown_type": [b'{"htype": "dimage-9.9", "series": 7}'] + image[1:],
        "malformed_json": [b'{"htype": "dimage-1.0", "series": 7,'] + image[1:],
        "blob_size": image[:2] + [bytes(image[2])[:-3]] + image[3:],
        "unknown_encoding": [image[0], json.dumps({**desc, "encoding": "bs64-zstd<"}).encode()] + image[2:],
        "no_series": stream_v1_encode.encode_image(EncodedFrame("3", 0, (16, 20), "<u2", "raw", bytes(640)), 3,
                                                   (0, 1, 1)),
        "malformed_cbor": [b"\xd9\xd9\xf7\xa1\x64type"],
    }


@pytest.mark.parametrize("reason", list(_bad_v1_cases([b"{}"] * 4)))
def test_bad_message_is_dropped_and_the_receiver_keeps_going(ctx, url, reason):
    series = small_series(n=2)
    _, frames = encoded_frames(series)
    header, images, end = _v1_good(series, frames)
    bad = _bad_v1_cases(images[0])[reason]
    push = ctx.socket(zmq.PUSH)
    push.bind(url)
    counters = Counter()
    receiver = Receiver(ctx, url, ReceiverConfig(), counters)
    for parts in (header, images[0], bad, images[1], end):
        push.send_multipart(parts)
    events = collect(receiver, 1)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["SeriesInfo", "EncodedFrame", "Dropped", "EncodedFrame", "SeriesEnd"], kinds
    assert events[2].reason == reason and counters == Counter({reason: 1})
    assert events[3].image_number == 1 and events[4].reason == "end" and events[4].n_images_received == 2
    push.close(linger=0)
    receiver.close()


def test_frames_before_a_start_a_second_start_and_a_missing_end(ctx, url):
    series = small_series(n=2)
    _, frames = encoded_frames(series)
    header, images, end = _v1_good(series, frames)
    push = ctx.socket(zmq.PUSH)
    push.bind(url)
    counters = Counter()
    receiver = Receiver(ctx, url, ReceiverConfig(idle_timeout_s=0.3), counters)
    # an image of a series that never started, then a start, an image, and a second start before the end
    for parts in (images[0], header, images[0], header, images[1]):
        push.send_multipart(parts)
    events = collect(receiver, 2)  # the restarted series, then the idle timeout
    kinds = [(type(e).__name__, getattr(e, "reason", "")) for e in events]
    assert kinds == [("Dropped", "no_series"), ("SeriesInfo", ""), ("EncodedFrame", ""),
                     ("SeriesEnd", "restarted"), ("SeriesInfo", ""), ("EncodedFrame", ""),
                     ("SeriesEnd", "missing_end")], kinds
    assert events[3].n_images_received == 1 and events[6].n_images_received == 1
    assert counters == Counter({"no_series": 1, "restarted": 1, "missing_end": 1})
    # the receiver keeps going: a complete series after all that
    for parts in (header, *images, end):
        push.send_multipart(parts)
    events = collect(receiver, 1)
    assert [type(e).__name__ for e in events] == ["SeriesInfo", "EncodedFrame", "EncodedFrame", "SeriesEnd"]
    assert events[-1].reason == "end"
    push.close(linger=0)
    receiver.close()


def test_corrupt_lz4_passes_the_receiver_and_fails_the_decoder_with_its_reason(ctx):
    series = small_series(n=1)
    _, frames = encoded_frames(series)
    corrupt = EncodedFrame("7", 0, series.image_shape, series.dtype, "bslz4", bytes(frames[0].data)[:12] + b"\xff" * 40)
    receiver = Receiver(ctx, "inproc://unused")
    events = receiver.handle(stream_v1_encode.encode_header(series, 7)) + receiver.handle(
        stream_v1_encode.encode_image(corrupt, 7, (0, 1, 1)))
    frame = events[-1]
    assert isinstance(frame, EncodedFrame)
    with pytest.raises(codecs.BadFrame) as err:
        codecs.decode(frame)
    assert err.value.reason == "corrupt_compression"
    receiver.close()


def test_v2_unknown_type_channels_and_shape_checks(ctx):
    series = small_series(n=1)
    _, frames = encoded_frames(series)
    receiver = Receiver(ctx, "inproc://unused", ReceiverConfig(channels=["threshold_2"]))
    uid = stream_v2_encode.new_ulid()
    events = receiver.handle([stream_v2_encode.encode_start(series, 1, uid)])
    assert isinstance(events[0], SeriesInfo) and events[0].series_id == uid

    now = datetime.datetime.now(datetime.timezone.utc)
    t1 = stream_v2_encode.encode_image(frames, 1, uid, now, (0, 1, 1))  # channel "threshold_1" only
    assert receiver.handle([t1])[0].reason == "missing_channel"
    two = EncodedFrame("7", 0, series.image_shape, series.dtype, "bslz4", frames[0].data, channel="threshold_2")
    got = receiver.handle([stream_v2_encode.encode_image([frames[0], two], 1, uid, now, (0, 1, 1))])
    assert [f.channel for f in got] == ["threshold_2"]
    wrong = EncodedFrame("7", 1, (20, 16), series.dtype, "raw", bytes(640), channel="threshold_2")
    assert receiver.handle([stream_v2_encode.encode_image([wrong], 1, uid, now, (0, 1, 1))])[0].reason == "wrong_shape"
    assert receiver.handle([stream_v2_encode.dumps({"type": "preview", "series_id": 1})])[0].reason == "unknown_type"
    malformed = receiver.handle([b"\xa1\x64type"])[0]
    # unreadable, so it names no series: counted with the open one (its tally balances)
    assert malformed.reason == "malformed_cbor" and malformed.series_id == uid
    assert receiver.handle([stream_v2_encode.encode_end(1, uid)])[-1] == SeriesEnd(uid, "end", 1)
    assert dict(receiver.counters) == {"missing_channel": 1, "wrong_shape": 1, "unknown_type": 1, "malformed_cbor": 1}
    receiver.close()


def test_header_detail_none_takes_geometry_from_the_first_image(ctx):
    series = small_series(n=1)
    _, frames = encoded_frames(series)
    receiver = Receiver(ctx, "inproc://unused")
    assert receiver.handle(stream_v1_encode.encode_header(series, 7, "none")) == []
    events = receiver.handle(stream_v1_encode.encode_image(frames[0], 7, (0, 1, 1)))
    assert isinstance(events[0], SeriesInfo) and events[0].image_shape == (16, 20) and events[0].dtype == "<u2"
    assert isinstance(events[1], EncodedFrame)
    receiver.close()


def test_each_reason_is_logged_once_then_rate_limited(ctx, caplog):
    receiver = Receiver(ctx, "inproc://unused")
    with caplog.at_level("WARNING", logger="streamer.receiver"):
        for _ in range(5):
            receiver.handle([b"{broken"])
    assert receiver.counters["malformed_json"] == 5
    assert sum("malformed_json" in r.getMessage() for r in caplog.records) == 1
    receiver.close()


def test_a_bad_header_is_dropped_and_its_frames_have_no_series(ctx):
    series = small_series(n=1)
    _, frames = encoded_frames(series)
    parts = stream_v1_encode.encode_header(series, 7, "basic")
    parts[1] = parts[1].replace(b'"nimages":1', b'"nimages":NaN')
    receiver = Receiver(ctx, "inproc://unused")
    assert [e.reason for e in receiver.handle(parts)] == ["bad_header"]
    assert [e.reason for e in receiver.handle(stream_v1_encode.encode_image(frames[0], 7, (0, 1, 1)))] == ["no_series"]
    assert receiver.open_series is None
    receiver.close()


def test_a_part_over_the_bound_costs_the_connection_and_is_said(ctx, url, caplog):
    """ZeroMQ cuts a connection whose message part exceeds receiver.max_message_bytes, with no
    word: the receiver watches for it, counts it and logs it with the bound to raise."""
    series = small_series(n=3, dtype="<u4", shape=(300, 300))
    big = EncodedFrame(series.series_id, 1, series.image_shape, series.dtype, "raw",
                       np.ones(series.image_shape, "<u4").tobytes())  # 360 kB: over the bound

    def send():
        with DetectorSender(ctx, url, fmt="v1", header_detail="all") as sender:
            sender.send_start(series)
            sender.send_frame(big)
            done.wait(TIMEOUT_S)

    done = threading.Event()
    receiver = Receiver(ctx, url, ReceiverConfig(max_message_bytes=100_000, idle_timeout_s=60.0))
    thread, errors = in_thread(send)
    try:
        with caplog.at_level("WARNING", logger="streamer.receiver"):
            assert isinstance(receiver.poll(TIMEOUT_S)[0], SeriesInfo)
            deadline = time.monotonic() + TIMEOUT_S
            while not any("dropped during series 7" in r.getMessage() for r in caplog.records):
                assert receiver.poll(0.05) == [] and time.monotonic() < deadline  # the big frame never comes
    finally:
        done.set()
        thread.join(TIMEOUT_S)
        receiver.close()
    assert not errors
    assert any("dropped during series 7" in r.getMessage() and "max_message_bytes = 100000" in r.getMessage()
               for r in caplog.records)
