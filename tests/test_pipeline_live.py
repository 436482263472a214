"""`run --once` fed over loopback TCP by a real DetectorSender speaking DECTRIS stream v1 or v2:
bad messages injected into a live stream, and a stream that never sends its end of series,
are accounted for frame by frame."""

from __future__ import annotations

import json
import threading
import time

import pytest
import zmq
from pipeline_fakes import make_frame, make_series
from test_pipeline_e2e import ENV, balanced, compressed, fake_args, live_config

from streamer.series import EncodedFrame


def stream_through_run(tmp_path, fmt, send, idle_timeout_s=30.0):
    """`run --once` as the command does it, fed by a real DetectorSender on loopback TCP."""
    from streamer.commands.run import run_session
    from streamer.receiver import Receiver
    from streamer.sender import DetectorSender

    config = live_config(idle_timeout_s)
    ctx = zmq.Context.instance()
    sender = DetectorSender(ctx, "tcp://127.0.0.1:*", fmt=fmt)
    receiver = Receiver(ctx, sender.endpoint, config.receiver)
    thread = threading.Thread(target=send, args=(sender,), daemon=True)
    try:
        summary = run_session(config, receiver.events, tmp_path / "out", live=True, once=True, progress=False,
                              worker_args=fake_args(), worker_env=ENV, on_ready=lambda _: thread.start(),
                              on_stop=receiver.stop)
        thread.join(30)
    finally:
        receiver.close()
        sender.close()
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
    return summary


@pytest.mark.slow
def test_live_stream_v2_with_injected_bad_messages(tmp_path):
    s = make_series(n_images=20)

    def send(sender):
        sender.send_start(s)
        for i in range(20):
            frame = compressed(make_frame(s, i, n_hot=i % 5))
            if i == 5:  # corrupt compressed bytes: the receiver passes it on, a worker refuses it
                data = bytearray(frame.data)
                data[16:] = b"\xff" * (len(data) - 16)
                frame = EncodedFrame(s.series_id, i, s.image_shape, "<u2", "bslz4", bytes(data))
            sender.send_frame(frame)
            if i == 10:
                sender.send_raw_parts([b"\xd9\xd9\xf7 not cbor at all"])  # refused by the receiver
        sender.send_end()

    frames = stream_through_run(tmp_path, "v2", send)["frames"]
    assert balanced(frames) and frames["received"] == 21 and frames["processed"] == 19, frames
    assert frames["dropped"]["corrupt_compression"] == 1 and sum(frames["dropped"].values()) == 2
    rows = [r.split(",") for r in (tmp_path / "out" / "per_image.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(20))  # one row per image: the dropped one is blank
    assert [int(r[2]) if r[2] else None for r in rows] == [None if i == 5 else i % 5 for i in range(20)]


@pytest.mark.slow
def test_live_stream_v1_missing_end_of_series(tmp_path):
    s = make_series(n_images=12)

    def send(sender):
        sender.send_start(s)
        for i in range(12):
            sender.send_frame(compressed(make_frame(s, i, 2)))
        # no end-of-series: the receiver closes the series after its idle timeout

    started = time.monotonic()
    summary = stream_through_run(tmp_path, "v1", send, idle_timeout_s=1.0)
    assert summary["frames"] == {"received": 12, "processed": 12, "dropped": {}}
    assert time.monotonic() - started < 30
