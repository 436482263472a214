"""The collector's book of series: the views other threads read (live summary, recent images),
final warnings worked out once, and the memory a closed series gives back."""

from __future__ import annotations

import numpy as np
from pipeline_fakes import make_series

import streamer.series_book as series_book_module
from streamer.collector import Collector
from streamer.metrics import Metrics
from streamer.pipeline_messages import FrameResult
from streamer.series_book import SeriesBook
from streamer.series_state import SeriesState


def make():
    return Collector(Metrics())


def closed_series(c, series_id, n, processed=True):
    s = make_series(series_id, n_images=n)
    c.series_start(s)
    for seq in range(n):
        c.dispatched(s.series_id, seq, seq, c.clock())
        stats = {"n_spots": 3} if processed else {}
        c.result(FrameResult(s.series_id, seq, seq, "w", stats=stats,
                             drop_reason=None if processed else "empty_frame"))
    c.series_end(s.series_id, n)
    return s


def test_summary_of_the_latest_series_and_the_whole_run():
    c = make()
    for name in ("a", "b", "c"):
        closed_series(c, name, 2)
    assert c.wait_closed(3, 10)
    latest = c.summary(latest=1)
    assert latest["n_series"] == 3 and [e["series_id"] for e in latest["series"]] == ["c"]
    assert [e["series_id"] for e in c.summary()["series"]] == ["a", "b", "c"]
    assert c.frames() == {"received": 6, "processed": 6, "dropped": {}}


def test_recent_images_are_a_bounded_ring_of_the_latest():
    book = SeriesBook(recent=3)
    for i in range(5):
        book.note_image({"image": i})
    assert [p["image"] for p in book.recent_images()] == [2, 3, 4]
    assert [p["image"] for p in book.recent_images(limit=2)] == [3, 4]


def test_release_forgets_a_finished_series_images_but_keeps_its_accounting():
    c = make()
    closed_series(c, "done", 3)
    assert c.wait_closed(1, 10)
    state = c.series["done"]
    state.outputs["_spots"] = np.zeros(4)
    c.release("done")
    assert state.released and state.results == [] and "_spots" not in state.outputs
    assert state.series.pixel_mask is None and state.tally.processed == 3
    assert c.summary()["series"][0]["frames"]["processed"] == 3


def test_release_leaves_a_series_whose_stages_have_not_finished():
    book = SeriesBook()
    state = SeriesState(make_series("open", n_images=2))
    book.add(state)
    state.results.append("kept")
    book.release("open")
    book.release("unknown")
    assert not state.released and state.results == ["kept"]


def test_a_finished_series_warnings_are_worked_out_once(monkeypatch):
    """The live summary (polled each second) worked out every series' warnings again from all
    its images; a series whose stages have finished keeps its final warnings."""

    calls = []
    real = series_book_module.sweep_warnings
    def counted(entry, rows, series, final, **kw):
        if series.series_id == "warned":  # not the stage threads of other tests' collectors
            calls.append(final)
        return real(entry, rows, series, final=final, **kw)

    monkeypatch.setattr(series_book_module, "sweep_warnings", counted)
    c = make()
    s = make_series("warned", n_images=4)
    c.series_start(s)
    for seq in range(4):
        c.dispatched(s.series_id, seq, seq, c.clock())
    c.result(FrameResult(s.series_id, 0, 0, "w", stats={"n_spots": 3}))
    assert c.summary()["series"][0]["warnings"] == [] and calls == [False]
    for seq in range(1, 4):
        c.result(FrameResult(s.series_id, seq, seq, "w", drop_reason="empty_frame"))
    c.series_end(s.series_id, 4)
    assert c.wait_closed(1, 10)
    first = c.summary()["series"][0]["warnings"]
    assert [w["kind"] for w in first] == ["frames_dropped"]
    n = len(calls)
    assert c.summary()["series"][0]["warnings"] == first and len(calls) == n  # kept, not worked out again
    assert calls[-1] is True


def test_final_warnings_that_failed_are_worked_out_on_each_poll(monkeypatch):
    """If the final warnings raise in the stage thread, the live summary works them out itself
    (as the stage's fallback says) instead of showing none."""
    real = series_book_module.sweep_warnings

    def failing_once_final(entry, rows, series, final, **kw):
        if series.series_id == "flaky" and final and not getattr(failing_once_final, "failed", False):
            failing_once_final.failed = True
            raise RuntimeError("a bug in a warning rule")
        return real(entry, rows, series, final=final, **kw)

    monkeypatch.setattr(series_book_module, "sweep_warnings", failing_once_final)
    c = make()
    closed_series(c, "flaky", 2, processed=False)
    assert c.wait_closed(1, 10)
    assert c.series["flaky"].done and c.series["flaky"].final_warnings is None
    assert [w["kind"] for w in c.summary()["series"][0]["warnings"]] == ["frames_dropped"]
