"""The collector's sweep stages (spot joining, indexing) run in their own thread: a failing or
slow stage never stops or holds up the per-image results, and each new crystal model is passed
on once, in plain types."""

from __future__ import annotations

import functools

import numpy as np
from pipeline_fakes import CountingStage, make_series
from test_collector import make, ok


def test_stage_failures_do_not_stop_per_image_results():
    class Broken:
        def __init__(self, series):
            pass

        def add(self, series, result):
            raise RuntimeError("bug in a stage")

        def finish(self):
            raise RuntimeError("bug in a stage")

    c, pub = make(stage_factories=[Broken])
    s = make_series()
    c.series_start(s)
    c.dispatched(s.series_id, 0, 0, 100.0)
    c.result(ok(s.series_id, 0, 0))
    c.series_end(s.series_id, 1)
    assert c.wait_closed(1, 5)
    assert len(pub.images()) == 1 and c.total.processed == 1


def test_a_stage_model_is_passed_on_once_in_plain_types():
    class Indexer:
        def __init__(self, series):
            self.n = 0
            self.pending = None

        def add(self, series, result):
            self.n += 1
            if self.n == 3:
                self.pending = {"indexed": True, "unit_cell": np.array([79.0, 79.0, 37.0, 90.0, 90.0, 90.0]),
                                "rmsd_px": np.float64(0.3)}

        def take_model(self):
            model, self.pending = self.pending, None
            return model

        def finish(self):  # the last refinement, with every spot: a model too
            self.pending = {"indexed": True, "rmsd_px": 0.2}
            return {"indexing": {"indexed": True, "images": self.n}}

    c, pub = make(stage_factories=[Indexer])
    s = make_series()
    c.series_start(s)
    for seq in range(5):
        c.dispatched(s.series_id, seq, seq, 100.0)
        c.result(ok(s.series_id, seq, seq))
    c.series_end(s.series_id, 5)
    assert c.wait_closed(1, 5)
    series_id, model = c.models.get_nowait()
    assert series_id == s.series_id and model == {"indexed": True, "unit_cell": [79.0, 79.0, 37.0, 90.0, 90.0, 90.0],
                                                  "rmsd_px": 0.3}
    assert type(model["rmsd_px"]) is float
    assert c.models.get_nowait() == (s.series_id, {"indexed": True, "rmsd_px": 0.2}) and c.models.empty()
    assert c.summary()["series"][0]["indexing"] == {"indexed": True, "images": 5}


def test_a_slow_sweep_stage_is_bounded_and_never_blocks_per_image_results():
    import threading

    gate = threading.Event()
    stuck = functools.partial(CountingStage, wait=lambda: gate.wait(10))
    c, pub = make(stage_factories=[stuck], stage_queue_bound=5)
    s = make_series(n_images=30)
    c.series_start(s)
    for seq in range(30):
        c.dispatched(s.series_id, seq, seq, 100.0)
        c.result(ok(s.series_id, seq, seq))
    assert len(pub.images()) == 30  # published while the stage is stuck
    assert 20 <= c.n_stage_skipped <= 25
    gate.set()
    c.series_end(s.series_id, 30)
    assert c.wait_closed(1, 10)
    assert c.series[s.series_id].outputs["stage_images"] == 30 - c.n_stage_skipped
    assert "xtal_stage_images_skipped_total" in c.metrics.exposition().decode()
    lagged = [w for w in c.summary()["series"][0]["warnings"] if w["kind"] == "stages_lagged"]
    assert len(lagged) == 1 and lagged[0]["message"].startswith(f"{c.n_stage_skipped} of 30 images")


def test_recorded_data_skip_nothing_and_say_when_the_stages_are_full():
    import time

    slow = functools.partial(CountingStage, wait=lambda: time.sleep(0.005))
    c, pub = make(stage_factories=[slow], stage_queue_bound=3, stage_backpressure=True)
    s = make_series(n_images=40)
    c.series_start(s)
    started = time.monotonic()
    for seq in range(40):
        c.dispatched(s.series_id, seq, seq, 100.0)
        c.result(ok(s.series_id, seq, seq))
    assert time.monotonic() - started < 0.1  # the collector never waits (it answers the workers)
    assert c.stages.full  # the source waits (Pipeline.feed)
    c.series_end(s.series_id, 40)
    assert c.wait_closed(1, 10)
    assert c.n_stage_skipped == 0 and c.series[s.series_id].outputs["stage_images"] == 40
    assert not [w for w in c.summary()["series"][0]["warnings"] if w["kind"] == "stages_lagged"]


def test_busy_until_everything_queued_is_handled_and_polls_reuse_one_marker():
    """What the final wait reads (`streamer.commands.run`): the stages' progress, whether they
    are busy, and a poll that does not add a marker to the queue each time."""
    import threading

    release = threading.Event()
    stuck = functools.partial(CountingStage, wait=lambda: release.wait(10))
    c, _ = make(stage_factories=[stuck])
    stages = c.stages
    assert not stages.busy and stages.wait(1)  # idle: a wait's own marker leaves it idle
    assert not stages.busy
    s = make_series(n_images=3)
    c.series_start(s)
    for seq in range(3):
        c.dispatched(s.series_id, seq, seq, 100.0)
        c.result(ok(s.series_id, seq, seq))
    handled = stages.n_handled
    assert stages.busy
    for _ in range(20):
        assert not stages.wait(0.01)
    assert stages.depth <= 3  # the 2 images behind the stuck one, and one marker
    release.set()
    assert stages.wait(10) and not stages.busy and stages.n_handled == handled + 4
