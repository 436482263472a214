"""The feedback server: /metrics in Prometheus text, the JSON API, the dashboard page, on loopback."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from pipeline_fakes import make_series

from streamer.collector import Collector
from streamer.http_server import DASHBOARD, FeedbackServer, parse_host_port
from streamer.metrics import Metrics
from streamer.pipeline_messages import FrameResult


@pytest.fixture
def served():
    metrics = Metrics()
    collector = Collector(metrics)
    s = make_series(n_images=3)
    collector.series_start(s)
    for seq in range(3):
        collector.dispatched(s.series_id, seq, seq, time.monotonic())
    collector.result(FrameResult(s.series_id, 0, 0, "w", stats={"n_spots": 12, "estimated_d_min": 1.9,
                                                                  "ice_rings": 0, "n_overloads": 31,
                                                                  "background": 0.75}))
    collector.result(FrameResult(s.series_id, 1, 1, "w", drop_reason="empty_frame"))
    collector.result(FrameResult(s.series_id, 2, 2, "w", stats={"n_spots": 7, "estimated_d_min": float("nan")}))
    server = FeedbackServer(("127.0.0.1", 0), metrics, collector.summary, collector.recent_images).start()
    yield server
    server.close()


def get(server, path):
    with urllib.request.urlopen(server.url + path.lstrip("/"), timeout=5) as r:
        return r.status, r.headers["Content-Type"], r.read()


def test_binds_loopback_by_default():
    assert parse_host_port(":8470") == ("127.0.0.1", 8470)
    assert parse_host_port("0.0.0.0:1") == ("0.0.0.0", 1)
    with pytest.raises(ValueError):
        parse_host_port("localhost:http")


def test_metrics_endpoint(served):
    status, ctype, body = get(served, "/metrics")
    text = body.decode()
    assert status == 200 and ctype.startswith("text/plain")
    assert "xtal_frames_processed_total 2.0" in text
    assert 'xtal_frames_dropped_total{reason="empty_frame"} 1.0' in text
    assert "xtal_resolution_estimate_angstrom 1.9" in text  # the NaN of image 2 did not overwrite it
    assert "xtal_overloads_last_image 31.0" in text and "xtal_background_last_image 0.75" in text


def test_summary_and_images(served):
    _, ctype, body = get(served, "/api/summary")
    summary = json.loads(body)
    assert ctype == "application/json"
    assert summary["frames"] == {"received": 3, "processed": 2, "dropped": {"empty_frame": 1}}
    images = json.loads(get(served, "/api/images?since=0")[2])["images"]
    assert [(im["image"], im["dropped"]) for im in images] == [(1, "empty_frame"), (2, None)]
    assert images[1]["estimated_d_min"] is None  # NaN is not JSON: sent as null
    all_images = json.loads(get(served, "/api/images")[2])["images"]
    assert [im.get("n_spots") for im in all_images] == [12, None, 7]


def test_images_and_summary_of_some_series():
    """Image numbers start again with each series: `series` picks one, `since` counts within it;
    `latest` bounds the series in the summary."""
    collector = Collector(Metrics())
    for sid, n in (("a", 3), ("b", 2)):
        s = make_series(sid, n_images=n)
        collector.series_start(s)
        for seq in range(n):
            collector.dispatched(sid, seq, seq, time.monotonic())
            collector.result(FrameResult(sid, seq, seq, "w", stats={"n_spots": seq}))
    server = FeedbackServer(("127.0.0.1", 0), Metrics(), collector.summary, collector.recent_images).start()
    try:
        def images(path):
            return [(im["series_id"], im["image"]) for im in json.loads(get(server, path)[2])["images"]]

        assert images("/api/images?series=b&since=0") == [("b", 1)]
        assert images("/api/images?series=a") == [("a", 0), ("a", 1), ("a", 2)]
        assert images("/api/images?since=0") == [("a", 1), ("a", 2), ("b", 1)]
        assert images("/api/images?series=nope") == []
        summary = json.loads(get(server, "/api/summary?latest=1")[2])  # a long run: the latest series only
        assert summary["n_series"] == 2 and [x["series_id"] for x in summary["series"]] == ["b"]
        assert summary["frames"]["processed"] == 5
        everything = json.loads(get(server, "/api/summary?latest=0")[2])
        assert [x["series_id"] for x in everything["series"]] == ["a", "b"]
    finally:
        server.close()


def test_dashboard_and_errors(served):
    status, ctype, body = get(served, "/")
    assert status == 200 and ctype.startswith("text/html") and body.decode() == DASHBOARD
    assert "api/summary" in DASHBOARD and "<script src" not in DASHBOARD  # self-contained
    for path, code in (("/nope", 404), ("/api/images?since=x", 400), ("/api/summary?latest=x", 400)):
        with pytest.raises(urllib.error.HTTPError) as exc:
            get(served, path)
        assert exc.value.code == code


class _EndStage:
    """A sweep stage that ends like the pipeline's: its summary keys and the joined spots
    (`_spots`, an object for spots.csv, not JSON)."""

    def __init__(self, series):
        pass

    def add(self, series, result):
        pass

    def finish(self):
        return {"indexing": {"indexed": False, "status": "not indexed yet: no lattice found"}, "_spots": object()}


def test_summary_of_an_ended_series_has_its_warnings_and_no_private_keys():
    metrics = Metrics()
    collector = Collector(metrics, stage_factories=[_EndStage])
    s = make_series(n_images=2)
    collector.series_start(s)
    for seq in range(2):
        collector.dispatched(s.series_id, seq, seq, time.monotonic())
    collector.result(FrameResult(s.series_id, 0, 0, "w", stats={"n_spots": 3, "n_spots_no_ice": 3}))
    assert [w["kind"] for w in collector.summary()["series"][0]["warnings"]] == ["few_spots"]  # running
    collector.result(FrameResult(s.series_id, 1, 1, "w", drop_reason="empty_frame"))
    collector.series_end(s.series_id, 2)
    assert collector.wait_closed(1, 5)
    server = FeedbackServer(("127.0.0.1", 0), metrics, collector.summary, collector.recent_images).start()
    try:
        status, _, body = get(server, "/api/summary")
    finally:
        server.close()
    entry = json.loads(body)["series"][0]
    assert status == 200 and "_spots" not in entry
    assert [w["kind"] for w in entry["warnings"]] == ["frames_dropped", "not_indexed", "few_spots"]
