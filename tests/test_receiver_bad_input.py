"""Bad input at the receiver: each case is dropped with its reason, and the next good frame gets through."""

from __future__ import annotations

import dataclasses
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
from streamer.series import Dropped, EncodedFrame, SeriesEnd, SeriesInfo

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
        "image_number": [json.dumps({**json.loads(image[0]), "frame": 2**62}).encode()] + image[1:],
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


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_image_numbers_past_the_series_count_are_dropped(ctx, fmt):
    """An image numbered past its series' count of images (or past MAX_IMAGE_NUMBER when the
    header gives none) is dropped as image_number, with no image number of its own: taken, it
    made a per_image.csv row 4611686018427387904 and its spots joined other images'."""
    from streamer.receiver import MAX_IMAGE_NUMBER

    drop, most = "image_number", MAX_IMAGE_NUMBER
    for n_images, numbers, expected in ((2, [0, 2, 2**62, 1], [0, drop, drop, 1]),
                                        (None, [0, most + 1, most], [0, drop, most])):
        _, frames = encoded_frames(small_series(n=2))
        series = dataclasses.replace(small_series(n=2), n_images=n_images)
        receiver = Receiver(ctx, "inproc://unused")
        uid, now = "01M99SCZTVG8Y0NPCDQ92B5EXS", datetime.datetime.now(datetime.timezone.utc)
        events = receiver.handle(stream_v1_encode.encode_header(series, 7) if fmt == "v1" else
                                 [stream_v2_encode.encode_start(series, 7, uid)])
        assert isinstance(events[-1], SeriesInfo) and events[-1].n_images == n_images
        kinds = []
        for number in numbers:
            frame = dataclasses.replace(frames[0], image_number=number)
            parts = (stream_v1_encode.encode_image(frame, 7, (0, 1, 1)) if fmt == "v1" else
                     [stream_v2_encode.encode_image([frame], 7, uid, now, (0, 1, 1))])
            (event,) = receiver.handle(parts)
            kinds.append(event.reason if isinstance(event, Dropped) else event.image_number)
            assert not isinstance(event, Dropped) or event.image_number is None
        assert kinds == expected
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


def test_frames_after_an_idle_close_are_dropped_as_such(ctx):
    """A series closed for idling (no message for idle_timeout_s): its later frames are dropped
    as series_closed, saying to raise the timeout, not as frames of a series that never began."""
    series = small_series(n=2)
    _, frames = encoded_frames(series)
    header, images, end = _v1_good(series, frames)
    receiver = Receiver(ctx, "inproc://unused", ReceiverConfig(idle_timeout_s=0.3))
    assert [type(e).__name__ for e in receiver.handle(header, now=0.0) + receiver.handle(images[0], now=0.1)] == [
        "SeriesInfo", "EncodedFrame"]
    (closed,) = receiver._idle_events(0.5)
    assert closed.reason == "missing_end" and closed.n_images_received == 1
    (late,) = receiver.handle(images[1], now=5.0)
    assert (late.reason, late.series_id, late.image_number) == ("series_closed", "7", 1)
    assert "receiver.idle_timeout_s" in late.message
    (stray_end,) = receiver.handle(end, now=5.1)
    assert stray_end.reason == "no_series" and "closed for idling" in stray_end.message
    assert receiver.counters == Counter({"missing_end": 1, "series_closed": 1, "no_series": 1})
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
    wrong = EncodedFrame("7", 0, (20, 16), series.dtype, "raw", bytes(640), channel="threshold_2")
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
    # the 4 held back are said once due, though no message of that reason comes again
    due = receiver._log.due()
    assert due is not None and due - time.monotonic() > 9
    with caplog.at_level("WARNING", logger="streamer.receiver"):
        receiver._log.flush(due - 1.0)
        assert sum("malformed_json" in r.getMessage() for r in caplog.records) == 1
        receiver._log.flush(due)
    assert caplog.records[-1].getMessage() == "stream: malformed_json: 4 more since"
    assert receiver._log.due() is None
    receiver.close()


def test_a_series_end_says_what_was_held_back(ctx, caplog):
    series = small_series(n=2)
    _, frames = encoded_frames(series)
    header, images, end = _v1_good(series, frames)
    receiver = Receiver(ctx, "inproc://unused")
    with caplog.at_level("WARNING", logger="streamer.receiver"):
        receiver.handle(header)
        for _ in range(3):
            receiver.handle(images[0][:2])  # truncated
        receiver.handle(end)
    said = [r.getMessage() for r in caplog.records if "truncated_message" in r.getMessage()]
    assert len(said) == 2 and said[1] == "stream: truncated_message: 2 more since"
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


def test_a_part_over_the_bound_costs_that_message_and_the_receiver_connects_again(ctx, url, caplog):
    """ZeroMQ cuts a connection whose message part exceeds receiver.max_message_bytes, with no
    word, and never retries it (the detector's later messages would go nowhere): the receiver
    sees no retry, connects again, and drops that message as oversized_message, with the bound
    to raise in the log; the rest of the series arrives."""
    series = small_series(n=3, dtype="<u4", shape=(300, 300))
    frames = [EncodedFrame(series.series_id, i, series.image_shape, series.dtype, "raw",
                           np.full(series.image_shape, i, "<u4").tobytes()) for i in range(3)]
    small = ReceiverConfig(max_message_bytes=100_000, idle_timeout_s=60.0)  # a frame is 360 kB
    big_sent, cut_seen = threading.Event(), threading.Event()

    def send():
        with DetectorSender(ctx, url, fmt="v2") as sender:
            sender.send_start(series)
            sender.send_frame(frames[1])  # over the bound
            big_sent.set()
            cut_seen.wait(TIMEOUT_S)
            sender.send_end()

    receiver = Receiver(ctx, url, small)
    thread, errors = in_thread(send)
    events = []
    try:
        with caplog.at_level("WARNING", logger="streamer.receiver"):
            deadline = time.monotonic() + TIMEOUT_S
            while not any(isinstance(e, SeriesEnd) for e in events):
                batch = receiver.poll(0.05)
                events += batch
                if any(getattr(e, "reason", None) == "oversized_message" for e in batch):
                    cut_seen.set()
                assert time.monotonic() < deadline, events
    finally:
        cut_seen.set()
        thread.join(TIMEOUT_S)
        receiver.close()
    assert not errors
    assert [type(e).__name__ for e in events] == ["SeriesInfo", "Dropped", "SeriesEnd"]
    assert events[1].reason == "oversized_message" and events[1].series_id == events[0].series_id
    assert events[2].reason == "end"  # the end came over the new connection, in the same series
    assert receiver.n_disconnected == receiver.n_reconnected == 1
    assert receiver.counters["oversized_message"] == 1
    assert any("max_message_bytes = 100000" in r.getMessage() for r in caplog.records)


def test_a_detector_that_closes_is_left_to_zeromq_to_reconnect(ctx, url):
    """A detector that closes its socket and binds again (a restart): ZeroMQ retries by itself,
    so the receiver neither reconnects nor drops anything, and the next series comes."""
    series = small_series(n=1, dtype="<u4", shape=(30, 30))
    frame = EncodedFrame(series.series_id, 0, series.image_shape, series.dtype, "raw",
                         np.zeros(series.image_shape, "<u4").tobytes())
    receiver = Receiver(ctx, url, ReceiverConfig(idle_timeout_s=60.0))
    try:
        for _ in range(2):
            got_end = threading.Event()

            def send():
                with DetectorSender(ctx, url, fmt="v1") as sender:
                    sender.send_start(series)
                    sender.send_frame(frame)
                    sender.send_end()
                    got_end.wait(TIMEOUT_S)  # then closes: the receiver sees the connection drop

            thread, errors = in_thread(send)
            events = []
            deadline = time.monotonic() + TIMEOUT_S
            while not any(isinstance(e, SeriesEnd) for e in events):
                events += receiver.poll(0.05)
                assert time.monotonic() < deadline, events
            got_end.set()
            thread.join(TIMEOUT_S)
            assert not errors and [type(e).__name__ for e in events] == ["SeriesInfo", "EncodedFrame", "SeriesEnd"]
            time.sleep(1.5)  # past the grace: the close seen, the retry too
            assert receiver.poll(0.05) == []
    finally:
        receiver.close()
    assert receiver.n_reconnected == 0 and not receiver.counters
