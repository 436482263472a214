"""Receiver + DetectorSender over real sockets: captures replayed bit-exact, series state, bad input."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import numpy as np
import pytest
import zmq

from streamer import captures, codecs, stream_v1, stream_v1_encode, stream_v2, stream_v2_encode
from streamer.config import ReceiverConfig
from streamer.receiver import Receiver, receive_series
from streamer.sender import DetectorSender
from streamer.series import Dropped, EncodedFrame, SeriesEnd, SeriesInfo

TIMEOUT_S = 10.0


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def url(tmp_path):
    return f"ipc://{tmp_path / 'detector.ipc'}"


def collect(receiver: Receiver, n_ends: int, timeout_s: float = TIMEOUT_S) -> list:
    """Events until `n_ends` SeriesEnd events were seen (a timeout fails the test)."""
    events, ends = [], 0
    while ends < n_ends:
        batch = receiver.poll(timeout_s)
        assert batch, f"no event for {timeout_s} s; got {[type(e).__name__ for e in events]}"
        events += batch
        ends += sum(isinstance(e, SeriesEnd) for e in batch)
    return events


def _series(n=5, dtype="<u2", shape=(16, 20), mask=False):
    pixel_mask = np.zeros(shape, "<u4") if mask else None
    if mask:
        pixel_mask[3, 4] = 2
    return SeriesInfo(series_id="7", source="simulator", image_shape=shape, dtype=dtype, n_images=n,
                      frame_time_s=0.05, count_time_s=0.04, wavelength_A=0.98, distance_mm=200.0,
                      beam_centre_px=(10.5, 8.5), omega_start_deg=1.0, omega_increment_deg=0.5,
                      bit_depth_image=8 * np.dtype(dtype).itemsize, saturation_value=60000, pixel_mask=pixel_mask)


def _frames(series, encoding="bslz4"):
    rng = np.random.default_rng(1)
    arrays = [rng.poisson(3, series.image_shape).astype(series.dtype) for _ in range(series.n_images)]
    return arrays, [EncodedFrame(series.series_id, i, series.image_shape, series.dtype, encoding,
                                 codecs.encode(a, encoding)) for i, a in enumerate(arrays)]


def _in_thread(target):
    errors = []

    def run():
        try:
            target()
        except Exception as exc:  # surfaced in the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


# --- replay of the real captures -------------------------------------------------------------------

@pytest.mark.parametrize("folder, n_series", [("eiger2-1m-v1", 2), ("eiger4m-v1-dls", 1)])
def test_v1_captures_replayed_and_received_bit_exact(shared_data, ctx, url, folder, n_series):
    messages = captures.read_capture(shared_data / "streams" / folder)
    sender = DetectorSender(ctx, url)
    receiver = Receiver(ctx, url, ReceiverConfig())
    thread, errors = _in_thread(lambda: [sender.send_raw_parts(m) for m in messages])
    events = collect(receiver, n_series)
    thread.join(TIMEOUT_S)
    assert not errors
    sent = [stream_v1.parse_message(m) for m in messages]
    sent_images = [m for m in sent if isinstance(m, stream_v1.V1Image)]
    frames = [e for e in events if isinstance(e, EncodedFrame)]
    infos = [e for e in events if isinstance(e, SeriesInfo)]
    ends = [e for e in events if isinstance(e, SeriesEnd)]
    assert len(infos) == n_series and all(e.reason == "end" for e in ends)
    assert [e.n_images_received for e in ends] == [len(sent_images) // n_series] * n_series
    assert len(frames) == len(sent_images) and not [e for e in events if isinstance(e, Dropped)]
    for frame, image in zip(frames, sent_images):
        assert bytes(frame.data) == bytes(image.data)  # compressed bytes untouched
        assert (frame.image_number, frame.shape, frame.dtype) == (image.frame, image.shape, image.dtype)
        np.testing.assert_array_equal(codecs.decode(frame), codecs.decode_buffer(image.data, image.shape,
                                                                                  image.dtype, image.encoding))
    # the series ids of both series in the 1M capture, and the EIGER 1 pixel type from its images
    assert [i.series_id for i in infos] == [str(m.series) for m in sent if isinstance(m, stream_v1.V1Header)]
    assert infos[0].dtype == frames[0].dtype
    sender.close()
    receiver.close()


@pytest.mark.parametrize("folder", ["r500k_bm_bslz4_8bit", "r500k_bm_bslz4_16bit", "r500k_bm_bslz4_32bit",
                                    "r500k_bm_lz4_8bit", "r500k_bm_lz4_16bit"])
def test_v2_captures_replayed_and_received_bit_exact(shared_data, ctx, url, folder):
    messages = captures.read_capture(shared_data / "streams" / "eiger2-r500k-v2" / folder)
    images = [stream_v2.parse_message(m[0]) for m in messages[:-1]]
    dtype = images[0].data["threshold_1"].array.dtype
    uid = images[0].series_unique_id
    r500k = SeriesInfo(series_id=uid, source="simulator", image_shape=(514, 1030), dtype=dtype, n_images=10,
                       bit_depth_image=8 * np.dtype(dtype).itemsize)  # the EIGER2 R 500K the captures came from
    start = stream_v2_encode.encode_start(r500k, 1, uid, "basic", ("threshold_1", "threshold_2", "difference"))
    sender = DetectorSender(ctx, url, fmt="v2")
    receiver = Receiver(ctx, url, ReceiverConfig(channels=["threshold_1", "difference"]))
    thread, errors = _in_thread(lambda: [sender.send_raw_parts(m) for m in [[start]] + messages])
    events = collect(receiver, 1)
    thread.join(TIMEOUT_S)
    assert not errors
    info = events[0]
    assert isinstance(info, SeriesInfo) and info.series_id == uid and info.dtype == dtype
    frames = [e for e in events if isinstance(e, EncodedFrame)]
    assert [(f.image_number, f.channel) for f in frames] == [
        (i, c) for i in range(len(images)) for c in ("threshold_1", "difference")]
    for frame in frames:
        encoding, data = images[frame.image_number].data[frame.channel].encoded()
        assert frame.encoding == encoding and bytes(frame.data) == bytes(data)
        np.testing.assert_array_equal(codecs.decode(frame), codecs.decode_buffer(data, frame.shape, dtype, encoding))
    assert events[-1] == SeriesEnd(uid, "end", len(images))
    sender.close()
    receiver.close()


# --- our sender, both formats ------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["v1", "v2"])
@pytest.mark.parametrize("encoding", ["bslz4", "lz4", "raw"])
def test_sender_to_receiver_round_trip(ctx, url, fmt, encoding):
    series = _series(mask=True)
    arrays, frames = _frames(series, encoding)

    def send():
        with DetectorSender(ctx, url, fmt=fmt, header_detail="all") as sender:
            sender.send_start(series)
            for frame in frames:
                sender.send_frame(frame)
            sender.send_end()
            done.wait(TIMEOUT_S)  # keep the socket open until everything is received

    done = threading.Event()
    thread, errors = _in_thread(send)
    got = receive_series(url, TIMEOUT_S, ctx)
    done.set()
    thread.join(TIMEOUT_S)
    assert not errors
    info = got.info
    assert info.image_shape == series.image_shape and info.dtype == series.dtype and info.n_images == 5
    assert info.omega_increment_deg == 0.5 and info.distance_mm == pytest.approx(200.0)
    np.testing.assert_array_equal(info.pixel_mask, series.pixel_mask)
    assert got.end.reason == "end" and got.end.n_images_received == 5 and not got.dropped
    for i, (frame, array) in enumerate(zip(got.frames, arrays)):
        np.testing.assert_array_equal(codecs.decode(frame), array)
        assert frame.start_time_s == pytest.approx(i * 0.05) and frame.real_time_s == pytest.approx(0.04)
        if encoding != "lz4" or fmt == "v1":
            assert bytes(frame.data) == bytes(frames[i].data)
        else:  # v2 carries a bare LZ4 block in the HDF5 framing, not recompressed
            assert bytes(frames[i].data) in bytes(frame.data)


def test_rate_limiter_paces_frames(ctx, url):
    series = _series(n=11)
    _, frames = _frames(series)

    def send():
        with DetectorSender(ctx, url, rate_hz=100.0) as sender:
            sender.send_start(series)
            for frame in frames:
                sender.send_frame(frame)
            sender.send_end()
            done.wait(TIMEOUT_S)

    done = threading.Event()
    thread, errors = _in_thread(send)
    got = receive_series(url, TIMEOUT_S, ctx)
    done.set()
    thread.join(TIMEOUT_S)
    span = got.frames[-1].received_at - got.frames[0].received_at
    assert span >= 0.09  # 10 intervals at 100 Hz = 0.1 s, a lower bound only


def test_stop_from_another_thread_ends_events(ctx, url):
    receiver = Receiver(ctx, url)
    seen = []
    thread, errors = _in_thread(lambda: seen.extend(receiver.events()))
    receiver.stop()
    thread.join(TIMEOUT_S)
    assert not thread.is_alive() and receiver.stopped and not errors
    receiver.close()


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
    series = _series(n=2)
    _, frames = _frames(series)
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
    series = _series(n=2)
    _, frames = _frames(series)
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
    series = _series(n=1)
    _, frames = _frames(series)
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
    series = _series(n=1)
    _, frames = _frames(series)
    receiver = Receiver(ctx, "inproc://unused", ReceiverConfig(channels=["threshold_2"]))
    uid = stream_v2_encode.new_ulid()
    events = receiver.handle([stream_v2_encode.encode_start(series, 1, uid)])
    assert isinstance(events[0], SeriesInfo) and events[0].series_id == uid
    import datetime

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
    series = _series(n=1)
    _, frames = _frames(series)
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
    series = _series(n=1)
    _, frames = _frames(series)
    parts = stream_v1_encode.encode_header(series, 7, "basic")
    parts[1] = parts[1].replace(b'"nimages":1', b'"nimages":NaN')
    receiver = Receiver(ctx, "inproc://unused")
    assert [e.reason for e in receiver.handle(parts)] == ["bad_header"]
    assert [e.reason for e in receiver.handle(stream_v1_encode.encode_image(frames[0], 7, (0, 1, 1)))] == ["no_series"]
    assert receiver.open_series is None
    receiver.close()


def test_stop_after_close_does_not_block(ctx, url):
    receiver = Receiver(ctx, url)
    receiver.close()
    receiver.stop()
    assert receiver.stopped


def test_capture_replay_is_paced_by_the_rate_limiter(shared_data, ctx, url):
    messages = captures.read_capture(shared_data / "streams" / "eiger2-1m-v1")[:12]  # header, 10 images, end
    sender = DetectorSender(ctx, url, rate_hz=200.0)
    receiver = Receiver(ctx, url)
    thread, errors = _in_thread(lambda: [sender.send_raw_parts(m) for m in messages])
    frames = [e for e in collect(receiver, 1) if isinstance(e, EncodedFrame)]
    thread.join(TIMEOUT_S)
    assert not errors and len(frames) == 10 and sender.frames_sent == 10
    assert frames[-1].received_at - frames[0].received_at >= 0.04  # 9 intervals at 200 Hz = 0.045 s
    sender.close()
    receiver.close()


def test_a_part_over_the_bound_costs_the_connection_and_is_said(ctx, url, caplog):
    """ZeroMQ cuts a connection whose message part exceeds receiver.max_message_bytes, with no
    word: the receiver watches for it, counts it and logs it with the bound to raise."""
    series = _series(n=3, dtype="<u4", shape=(300, 300))
    big = EncodedFrame(series.series_id, 1, series.image_shape, series.dtype, "raw",
                       np.ones(series.image_shape, "<u4").tobytes())  # 360 kB: over the bound

    def send():
        with DetectorSender(ctx, url, fmt="v1", header_detail="all") as sender:
            sender.send_start(series)
            sender.send_frame(big)
            done.wait(TIMEOUT_S)

    done = threading.Event()
    receiver = Receiver(ctx, url, ReceiverConfig(max_message_bytes=100_000, idle_timeout_s=60.0))
    thread, errors = _in_thread(send)
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


def test_a_detector_closing_after_the_end_is_no_dropped_connection(ctx, url, caplog):
    """A detector (or the simulator) that closes its socket right after a series' end: the
    disconnect is seen while that series' last messages are still queued here. It was logged
    as a connection dropped during the series (a false alarm at the end of every demo); the
    queued messages are read first, the series ends, and the close is not a warning."""
    series = _series(n=20, dtype="<u2", shape=(64, 64))
    frames = [EncodedFrame(series.series_id, i, series.image_shape, series.dtype, "raw",
                           np.full(series.image_shape, i, "<u2").tobytes()) for i in range(20)]
    with DetectorSender(ctx, url, fmt="v1", header_detail="basic") as sender:
        receiver = Receiver(ctx, url, ReceiverConfig(idle_timeout_s=60.0))
        sender.wait_for_receiver(TIMEOUT_S)
        sender.send_start(series)
        for frame in frames:
            sender.send_frame(frame)
        sender.send_end()
        time.sleep(0.3)  # all queued at the receiver
    time.sleep(0.3)  # closed: the disconnect is reported
    try:
        with caplog.at_level("INFO", logger="streamer.receiver"):
            events = collect(receiver, 1)
    finally:
        receiver.close()
    assert sum(isinstance(e, EncodedFrame) for e in events) == 20 and isinstance(events[-1], SeriesEnd)
    assert not any("dropped during series" in r.getMessage() for r in caplog.records)
