"""Receiver + DetectorSender over real sockets: captures replayed bit-exact, series state (bad input:
test_receiver_bad_input.py)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from receiver_fakes import (
    TIMEOUT_S,
    collect,
    encoded_frames,
    in_thread,
    receive_series,
    small_series,
)

from streamer import (
    captures,
    codecs,
    stream_v1,
    stream_v2,
    stream_v2_encode,
)
from streamer.config import ReceiverConfig
from streamer.receiver import Receiver
from streamer.sender import DetectorSender
from streamer.series import Dropped, EncodedFrame, SeriesEnd, SeriesInfo

# --- replay of the real captures -------------------------------------------------------------------

@pytest.mark.parametrize("folder, n_series", [("eiger2-1m-v1", 2), ("eiger4m-v1-dls", 1)])
def test_v1_captures_replayed_and_received_bit_exact(shared_data, ctx, url, folder, n_series):
    messages = captures.read_capture(shared_data / "streams" / folder)
    sender = DetectorSender(ctx, url)
    receiver = Receiver(ctx, url, ReceiverConfig())
    thread, errors = in_thread(lambda: [sender.send_raw_parts(m) for m in messages])
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
    thread, errors = in_thread(lambda: [sender.send_raw_parts(m) for m in [[start]] + messages])
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
    series = small_series(mask=True)
    arrays, frames = encoded_frames(series, encoding)

    def send():
        with DetectorSender(ctx, url, fmt=fmt, header_detail="all") as sender:
            sender.send_start(series)
            for frame in frames:
                sender.send_frame(frame)
            sender.send_end()
            done.wait(TIMEOUT_S)  # keep the socket open until everything is received

    done = threading.Event()
    thread, errors = in_thread(send)
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
    series = small_series(n=11)
    _, frames = encoded_frames(series)

    def send():
        with DetectorSender(ctx, url, rate_hz=100.0) as sender:
            sender.send_start(series)
            for frame in frames:
                sender.send_frame(frame)
            sender.send_end()
            done.wait(TIMEOUT_S)

    done = threading.Event()
    thread, errors = in_thread(send)
    got = receive_series(url, TIMEOUT_S, ctx)
    done.set()
    thread.join(TIMEOUT_S)
    span = got.frames[-1].received_at - got.frames[0].received_at
    assert span >= 0.09  # 10 intervals at 100 Hz = 0.1 s, a lower bound only


def test_stop_from_another_thread_ends_events(ctx, url):
    receiver = Receiver(ctx, url)
    seen = []
    thread, errors = in_thread(lambda: seen.extend(receiver.events()))
    receiver.stop()
    thread.join(TIMEOUT_S)
    assert not thread.is_alive() and receiver.stopped and not errors
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
    thread, errors = in_thread(lambda: [sender.send_raw_parts(m) for m in messages])
    frames = [e for e in collect(receiver, 1) if isinstance(e, EncodedFrame)]
    thread.join(TIMEOUT_S)
    assert not errors and len(frames) == 10 and sender.frames_sent == 10
    assert frames[-1].received_at - frames[0].received_at >= 0.04  # 9 intervals at 200 Hz = 0.045 s
    sender.close()
    receiver.close()


def test_a_detector_closing_after_the_end_is_no_dropped_connection(ctx, url, caplog):
    """A detector (or the simulator) that closes its socket right after a series' end: the
    disconnect is seen while that series' last messages are still queued here. It was logged
    as a connection dropped during the series (a false alarm at the end of every demo); the
    queued messages are read first, the series ends, and the close is not a warning."""
    series = small_series(n=20, dtype="<u2", shape=(64, 64))
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
