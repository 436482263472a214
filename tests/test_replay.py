"""Replay as the detector over ipc://: each real dataset reaches the stream receiver bit-exact with
its geometry; captures go out part for part as captured; pacing and waiting for a consumer."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import fabio
import numpy as np
import pytest
import zmq
from receiver_fakes import receive_series
from test_eiger_h5 import TEST_GEOMETRY, dataset_pairs, h5py_images, make_master
from test_image_files import cbf_files, smv_files

from streamer import codecs
from streamer.captures import read_capture
from streamer.masks import trusted_range
from streamer.receiver import Receiver
from streamer.series import EncodedFrame, SeriesEnd, SeriesInfo
from streamer.sources.image_files import ImageSeriesSource
from tools.replay import main as replay_main
from tools.replay import replay_capture, replay_series

CAPTURES = ["eiger2-1m-v1", "eiger4m-v1-dls", "eiger2-r500k-v2/r500k_bm_bslz4_16bit", "eiger2-r500k-v2/r500k_bm_lz4_32bit"]


def ipc_url(tmp_path, name: str) -> str:
    """An ipc:// endpoint in `tmp_path`, or in a short /tmp folder if the path is too long for
    a Unix socket (107 bytes)."""
    path = f"{tmp_path}/{name}"
    if len(path) > 100:
        path = f"{tempfile.mkdtemp(prefix='xs-', dir='/tmp')}/{name}"
    return f"ipc://{path}"


def pull_from(ctx: zmq.Context, url: str) -> zmq.Socket:
    """A PULL socket connected to the replay's `url` (no linger: tests close it at once)."""
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(url)
    return pull


def run_replay(target, *args, **kwargs) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, kwargs=kwargs, daemon=True)
    thread.start()
    return thread


def replay_and_receive(tmp_path, paths, fmt, **kwargs):
    url = ipc_url(tmp_path, f"det-{fmt}")
    ctx = zmq.Context.instance()
    thread = run_replay(replay_series, ctx, paths, url, fmt, **{"rate_hz": None, **kwargs})
    got = receive_series(url, timeout_s=20.0, ctx=ctx)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert got.end is not None and not got.dropped and not got.counters
    return got


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_eiger_hdf5_replay_is_bit_exact(shared_data, tmp_path, fmt):
    for k, (name, files) in enumerate(sorted(dataset_pairs(shared_data).items())):
        folder = tmp_path / f"set{k}"
        folder.mkdir()
        master = make_master(folder, files, "vds" if k % 2 else "external")
        got = replay_and_receive(folder, [master], fmt)
        expected = h5py_images(files)
        assert [f.image_number for f in got.frames] == [0, 1, 2, 3], name
        for frame, pixels in zip(got.frames, expected):
            np.testing.assert_array_equal(codecs.decode(frame), pixels)
        info = got.info
        assert info.source == f"stream-{fmt}" and info.image_shape == expected.shape[1:]
        assert np.dtype(info.dtype) == expected.dtype
        assert info.beam_centre_px == pytest.approx(TEST_GEOMETRY["beam_centre_px"])
        assert info.distance_mm == pytest.approx(TEST_GEOMETRY["distance_mm"])
        assert info.wavelength_A == pytest.approx(TEST_GEOMETRY["wavelength_A"], rel=1e-6)
        assert info.omega_increment_deg == pytest.approx(TEST_GEOMETRY["omega_increment_deg"])


def test_bslz4_chunks_travel_untouched(shared_data, tmp_path):
    _, files = sorted(dataset_pairs(shared_data).items())[2]
    master = make_master(tmp_path, files)
    from streamer.sources.eiger_h5 import EigerH5Source

    with EigerH5Source(master) as source:
        stored = [bytes(f.data) for f in source.frames()]
    got = replay_and_receive(tmp_path, [master], "v2")
    assert [f.encoding for f in got.frames] == ["bslz4"] * 4
    assert [bytes(f.data) for f in got.frames] == stored


@pytest.mark.slow
def test_thaumatin_cbf_replay(shared_data, tmp_path):
    files = cbf_files(shared_data, 2)
    got = replay_and_receive(tmp_path, files, "v2", header_detail="all")
    info = got.info
    assert info.image_shape == (2527, 2463) and info.dtype == "<u4"
    assert info.beam_centre_px == pytest.approx((1261.61, 1306.96))
    assert info.distance_mm == pytest.approx(351.0) and info.wavelength_A == pytest.approx(0.96859)
    assert info.saturation_value == 115897
    assert [f.encoding for f in got.frames] == ["bslz4", "bslz4"]  # compressed as a detector would
    for frame, path in zip(got.frames, files):
        truth = fabio.open(str(path)).data
        # as a DECTRIS detector streams them: flagged pixels (-1 gap, -2 bad) all ones
        np.testing.assert_array_equal(codecs.decode(frame).view(np.int32), np.maximum(truth, -1))
    assert info.pixel_mask is not None
    np.testing.assert_array_equal(info.pixel_mask != 0, truth < 0)


def test_nanobragg_smv_replay(shared_data, tmp_path):
    files = smv_files(shared_data, 3)
    got = replay_and_receive(tmp_path, files, "v1")
    info = got.info
    assert info.beam_centre_px == pytest.approx((513.0, 513.0))
    assert info.distance_mm == pytest.approx(150.0) and info.wavelength_A == pytest.approx(1.0)
    assert info.pixel_size_mm == pytest.approx((0.172, 0.172))
    assert info.omega_start_deg == pytest.approx(0.0) and info.omega_increment_deg == pytest.approx(0.5)
    for frame, path in zip(got.frames, files):  # less the ADC offset DIALS assumes for a simulator's images (1)
        raw = fabio.open(str(path)).data.astype(np.int64)
        np.testing.assert_array_equal(codecs.decode(frame), raw - 1)


@pytest.mark.parametrize("capture", CAPTURES)
def test_capture_replay_is_part_for_part(shared_data, tmp_path, capture):
    folder = shared_data / "streams" / capture
    messages = read_capture(folder)
    url = ipc_url(tmp_path, "cap")
    ctx = zmq.Context.instance()
    pull = pull_from(ctx, url)
    thread = run_replay(replay_capture, ctx, folder, url, None)
    try:
        for expected in messages:
            assert pull.poll(20000), "replay stopped early"
            received = pull.recv_multipart()
            assert received == [bytes(p) for p in expected]
    finally:
        thread.join(timeout=30)
        pull.close()


def test_capture_replay_reaches_the_receiver(shared_data, tmp_path):
    folder = shared_data / "streams" / "eiger2-1m-v1"
    url = ipc_url(tmp_path, "cap-rx")
    ctx = zmq.Context.instance()
    thread = run_replay(replay_capture, ctx, folder, url, None)
    got = receive_series(url, timeout_s=20.0, ctx=ctx)
    thread.join(timeout=30)
    assert len(got.frames) == 10 and got.end is not None
    blobs = [m[2] for m in read_capture(folder) if b'"dimage-1.0"' in m[0]][:10]  # json, json, blob, config
    assert [bytes(f.data) for f in got.frames] == [bytes(b) for b in blobs]


def test_recorded_rate_paces_the_frames(shared_data, tmp_path):
    _, files = sorted(dataset_pairs(shared_data).items())[0]
    master = make_master(tmp_path, files)  # frame_time 0.01 s
    # waiting for the consumer starts the frame clock when someone listens (else frames due while
    # the start message waited for a peer would all leave at once)
    got = replay_and_receive(tmp_path, [master], "v2", rate_hz=-1.0, wait_for_consumer=True, wait_timeout_s=20.0)
    arrivals = [f.received_at for f in got.frames]
    assert arrivals[-1] - arrivals[0] >= 3 * 0.01 * 0.9


def test_wait_for_consumer(tmp_path):
    from streamer.sender import DetectorSender

    ctx = zmq.Context.instance()
    url = ipc_url(tmp_path, "w")
    with DetectorSender(ctx, url) as sender:
        with pytest.raises(TimeoutError, match="no consumer connected"):
            sender.wait_for_receiver(timeout_s=0.2)
        pull = ctx.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        pull.connect(url)
        sender.wait_for_receiver(timeout_s=10.0)
        sender.socket.send(b"hello")
        assert pull.poll(5000) and pull.recv() == b"hello"
        pull.close()


def test_replay_command_line(shared_data, tmp_path, capsys):
    _, files = sorted(dataset_pairs(shared_data).items())[1]
    master = make_master(tmp_path, files)
    url = ipc_url(tmp_path, "cli")
    ctx = zmq.Context.instance()
    result: dict[str, int] = {}
    thread = run_replay(lambda: result.setdefault("rc", replay_main(
        [str(master), "--bind", url, "--format", "v1", "--rate", "0", "--wait-for-consumer", "--repeat", "2",
         "--series-id", "7", "--wait-timeout", "20"])))
    series, frames, ends = [], [], 0
    with Receiver(ctx, url) as receiver:
        for event in receiver.events(timeout_s=20.0):
            series += [event.series_id] if isinstance(event, SeriesInfo) else []
            frames += [event] if isinstance(event, EncodedFrame) else []
            ends += isinstance(event, SeriesEnd)
            if ends == 2:
                break
    thread.join(timeout=30)
    assert result == {"rc": 0}
    assert series[0] == "7" and len(series) == 2 and len(frames) == 8
    out = capsys.readouterr().out
    assert "sent 8 frames" in out
    assert replay_main([str(tmp_path / "missing.h5"), "--bind", url]) == 2
    assert replay_main([str(master), "--rate", "-1"]) == 2
    busy = zmq.Context.instance().socket(zmq.PULL)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    try:  # an address it cannot bind: exit 2 at once (the open socket kept the context from ending)
        for bind in ("foo", f"tcp://127.0.0.1:{port}"):
            done = {}
            thread = threading.Thread(target=lambda: done.update(rc=replay_main([str(master), "--bind", bind])),
                                      daemon=True)
            thread.start()
            thread.join(timeout=30)
            assert done == {"rc": 2}, bind
    finally:
        busy.close(linger=0)


def test_wait_for_consumer_holds_the_start(shared_data, tmp_path):
    _, files = sorted(dataset_pairs(shared_data).items())[0]
    master = make_master(tmp_path, files)
    url = ipc_url(tmp_path, "hold")
    ctx = zmq.Context.instance()
    started = threading.Event()
    thread = run_replay(replay_series, ctx, [master], url, "v2", rate_hz=None, wait_for_consumer=True,
                        wait_timeout_s=20.0, on_bound=lambda _: started.set())
    assert started.wait(10)
    t0 = time.monotonic()
    got = receive_series(url, timeout_s=20.0, ctx=ctx)
    thread.join(timeout=30)
    assert len(got.frames) == 4 and got.end is not None and time.monotonic() - t0 < 20


def test_capture_replay_process_exits_cleanly_after_large_parts(shared_data, tmp_path):
    """The replay command as its own process: the 4M capture's header carries ~18 MB parts,
    still leaving when the sends return. The process must keep their buffers until they have
    left (its ZeroMQ context terminated before exit; else libzmq aborts on a freed buffer)."""
    folder = shared_data / "streams" / "eiger4m-v1-dls"
    messages = read_capture(folder)
    url = ipc_url(tmp_path, "proc")
    pull = pull_from(zmq.Context.instance(), url)
    proc = subprocess.Popen([sys.executable, "-m", "streamer.cli", "replay", str(folder), "--bind", url,
                             "--wait-for-consumer", "--wait-timeout", "20"], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for expected in messages:
            assert pull.poll(30000), "replay stopped early"
            assert pull.recv_multipart() == [bytes(p) for p in expected]
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        pull.close()
    assert proc.returncode == 0, out
    assert "sent 3 frames" in out


def test_replay_gives_up_when_its_consumer_goes_away(tmp_path):
    """A consumer leaving mid-series left replay blocked for ever; with send_timeout_s it raises
    TimeoutError (the command: an error, status 2) and nothing lingers."""
    from tools import simulate

    master = tmp_path / "sim.h5"
    assert simulate.main(["--preset", "orthorhombic", "--detector", "test512", "--images", "3", "--out",
                          str(master)]) == 0
    url = ipc_url(tmp_path, "gone")
    ctx = zmq.Context.instance()
    errors = []

    def replay():
        try:
            replay_series(ctx, [master], url, "v2", rate_hz=None, repeat=200, send_timeout_s=0.5, linger_s=30)
        except TimeoutError as exc:
            errors.append(exc)

    thread = run_replay(replay)
    pull = pull_from(ctx, url)
    pull.setsockopt(zmq.RCVHWM, 2)
    for _ in range(3):
        assert pull.poll(20_000)
        pull.recv_multipart()
    pull.close()
    started = time.monotonic()
    thread.join(30)
    assert not thread.is_alive() and len(errors) == 1 and "no receiver took a message" in str(errors[0])
    assert time.monotonic() - started < 20


def _adsc_image(path, pixels: np.ndarray) -> None:
    """An ADSC SMV image (little-endian uint16) stating a pedestal of 40 ADU and a gain."""
    ny, nx = pixels.shape
    header = (f"{{\nHEADER_BYTES=512;\nDIM=2;\nBYTE_ORDER=little_endian;\nTYPE=unsigned_short;\nSIZE1={nx};\n"
              f"SIZE2={ny};\nPIXEL_SIZE=0.1;\nDISTANCE=100;\nWAVELENGTH=1;\nBEAM_CENTER_X=3.2;\nBEAM_CENTER_Y=3.2;\n"
              "OSC_START=0;\nOSC_RANGE=0.1;\nGAIN=2.0;\nIMAGE_PEDESTAL=40;\n}").encode()
    path.write_bytes(header.ljust(512, b" ") + pixels.astype("<u2").tobytes())


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_smv_replay_keeps_counts_below_the_pedestal(tmp_path, fmt):
    """A CCD's counts less its pedestal go negative with read noise. The replay sends them as
    int32 (v1: the image's type, no bit depth in the header) and the lowest trusted count as
    NXmx's underload_value: the receiver has the same pixels and the same trusted range as
    the files (the header's saturation less twice the pedestal at the top)."""
    rng = np.random.default_rng(5)
    paths = []
    for i in range(2):
        pixels = np.clip(np.round(rng.normal(44.0, 8.0, (48, 64))), 0, 65535)
        pixels[3, 5] = 65535
        paths.append(tmp_path / f"ccd_{i + 1:03d}.img")
        _adsc_image(paths[-1], pixels)
    source = ImageSeriesSource(paths)
    got = replay_and_receive(tmp_path, paths, fmt)
    assert got.info.dtype == source.info.dtype == "<i4"
    assert got.info.saturation_value == source.info.saturation_value == 65535 - 80
    assert trusted_range(got.info) == trusted_range(source.info) == (-41.0, 65535.0 - 80)
    for k, frame in enumerate(got.frames):
        decoded = codecs.decode(frame)
        np.testing.assert_array_equal(decoded, source.pixels(k))
        assert decoded.min() < 0 and decoded.max() == 65535 - 40
