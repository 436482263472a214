"""`bench e2e` runs end to end and prints CONTRACT.md's keys (a short ramp: figures, never speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_e2e_ramp_prints_the_contract_keys():
    env = dict(os.environ, XTAL_FANOUT__FRAME_STORE_MB="64")
    run = subprocess.run([sys.executable, "-m", "streamer.cli", "bench", "e2e", "--start-rate", "20",
                          "--max-rate", "21", "--refine", "0", "--workers", "1", "--json"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    for key in ("frames_per_s", "dropped", "latency_p50_s", "latency_p99_s", "workers"):
        assert key in figures, key
    assert figures["workers"] == 1 and figures["dropped"] == 0
    assert [step["processed"] for step in figures["ramp"]] == [step["received"] for step in figures["ramp"]]
    assert set(figures["cpu_ms_per_frame"]) >= {"main", "main.stages", "workers"}
    # timed from the detector's first frame: 50 frames at 20/s take 2.45 s to send
    (step,) = figures["ramp"]
    assert figures["frames_per_s"] == 20.0 and 0.0 < step["drain_s"] < 2.0
    assert 0.95 * 20 <= step["published_rate"] <= 20 * 1.02
