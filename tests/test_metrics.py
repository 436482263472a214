"""Metric names follow xtal_<noun>_<verb>_<unit>, labels exist (as zeros) before any event, and
each Metrics has its own registry."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streamer.metrics import KNOWN_DROP_REASONS, QUEUES, STAGES, Metrics


def families(m):
    return {f.name: f for f in text_string_to_metric_families(m.exposition().decode())}


def test_names_follow_the_house_pattern():
    fams = families(Metrics())
    assert fams, "no metrics exposed"
    for name in fams:
        assert re.fullmatch(r"xtal_[a-z0-9]+(_[a-z0-9]+)+", name), name


def test_label_values_exist_before_any_event():
    fams = families(Metrics())
    dropped = {s.labels["reason"]: s.value for s in fams["xtal_frames_dropped"].samples
               if s.name == "xtal_frames_dropped_total"}
    assert dropped == {r: 0.0 for r in KNOWN_DROP_REASONS}
    depth = {s.labels["queue"] for s in fams["xtal_queue_depth"].samples}
    assert depth == set(QUEUES)
    stages = {s.labels["stage"] for s in fams["xtal_stage_latency_seconds"].samples}
    assert stages == set(STAGES)
    for name in ("xtal_frames_received", "xtal_frames_processed", "xtal_spots_per_image",
                 "xtal_resolution_estimate_angstrom", "xtal_ice_rings", "xtal_overloads_last_image",
                 "xtal_background_last_image"):
        assert name in fams


def test_registries_are_independent_and_counts_add_up():
    a, b = Metrics(), Metrics()
    a.frames_received.inc(3)
    a.dropped("overload", 2)
    a.dropped("a_new_reason")
    a.stage_latency.labels(stage="end_to_end").observe(0.2)
    fa, fb = families(a), families(b)
    assert [s.value for s in fa["xtal_frames_received"].samples if s.name.endswith("_total")] == [3.0]
    assert [s.value for s in fb["xtal_frames_received"].samples if s.name.endswith("_total")] == [0.0]
    dropped = {s.labels["reason"]: s.value for s in fa["xtal_frames_dropped"].samples if s.name.endswith("_total")}
    assert dropped["overload"] == 2 and dropped["a_new_reason"] == 1
    count = [s.value for s in fa["xtal_stage_latency_seconds"].samples
             if s.name.endswith("_count") and s.labels["stage"] == "end_to_end"]
    assert count == [1.0]


# the modules a frame passes through, receiver to collector: every drop reason they can raise
FRAME_PATH = ("errors", "receiver", "stream_v1", "stream_v2", "codecs", "band_decode", "lz4_framing",
              "cbor_splice", "fanout", "pipeline", "wire", "pipeline_messages", "worker", "perimage", "masks",
              "collector")


def _reason_literals(path: Path) -> set[str]:
    """reason="..." keywords, `reason = "..."` class defaults and _drop("...") calls of a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "reason" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    found.add(kw.value.value)
            if (isinstance(node.func, ast.Attribute) and node.func.attr == "_drop" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found.add(node.args[0].value)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            if any(isinstance(t, ast.Name) and t.id == "reason" for t in node.targets):
                found.add(node.value.value)
    return found


def test_every_reason_the_frame_path_raises_is_known_in_advance():
    streamer = Path(__file__).resolve().parents[1] / "streamer"
    raised = set().union(*(_reason_literals(streamer / f"{name}.py") for name in FRAME_PATH))
    assert {"corrupt_compression", "all_zero", "overload", "wire_malformed"} <= raised  # the scan finds them
    assert raised - set(KNOWN_DROP_REASONS) == set()


def test_an_image_result_sets_the_latest_image_gauges_and_keeps_them_through_gaps():
    m = Metrics()
    m.image_processed(7, {"n_spots": 120, "estimated_d_min": 2.1, "n_overloads": 3, "background": 0.5,
                          "ice_rings": [3.9, 3.67]}, decode_s=0.001, analyse_s=0.008)
    m.image_processed(8, {"n_spots": 40, "estimated_d_min": float("nan"), "background": float("nan"),
                          "ice_rings": 0}, decode_s=0.001, analyse_s=0.009)

    def value(name, sample=None):
        return next(s.value for s in families(m)[name].samples if s.name == (sample or name))

    assert value("xtal_frames_processed", "xtal_frames_processed_total") == 2
    assert value("xtal_spots_last_image") == 40 and value("xtal_image_number_last") == 8
    assert value("xtal_resolution_estimate_angstrom") == 2.1  # image 8 had no estimate
    assert value("xtal_background_last_image") == 0.5 and value("xtal_overloads_last_image") == 3
    assert value("xtal_ice_rings") == 0
    assert value("xtal_spots_per_image", "xtal_spots_per_image_count") == 2
