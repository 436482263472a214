"""The dashboard page's script, run in Node.js (skips without it) against a fake page and a
fake `fetch`: what the beamline sees is the frames table, each series' line with its
warnings, and the plots of the latest series' images."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from streamer.http_server import DASHBOARD

NODE = shutil.which("node") or shutil.which("nodejs")
pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js not installed")

# A page with the elements the script uses, canvases that record the points drawn, and a
# fetch that answers from canned JSON (or fails, to stand for a processor gone away).
HARNESS = """
const answers = %(answers)s;
const drawn = {};
const el = {};
function element(id) {
  if (!el[id]) {
    el[id] = {id, innerHTML: "", textContent: "", width: 460, height: 200, getContext() {
      drawn[id] = [];
      return {clearRect() {}, strokeRect() {}, fillText(t) { drawn[id].push(["text", t]); },
              fillRect(x, y) { drawn[id].push(["point", x, y]); }};
    }};
  }
  return el[id];
}
globalThis.document = {getElementById: element};
globalThis.setInterval = () => 0;
globalThis.fetch = async url => {
  const key = Object.keys(answers).find(k => url.startsWith(k));
  if (answers[key] === null) throw new Error("refused");
  return {json: async () => answers[key]};
};
%(script)s
setTimeout(() => {
  const out = {drawn, frames: element("frames").innerHTML, series: element("series").innerHTML,
               status: element("series").textContent};
  process.stdout.write(JSON.stringify(out));
}, 50);
"""


def run_page(summary, images) -> dict:
    script = re.search(r"<script>(.*)</script>", DASHBOARD, re.S).group(1)
    answers = json.dumps({"api/summary": summary, "api/images": images})
    proc = subprocess.run([NODE, "-e", HARNESS % {"answers": answers, "script": script}], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def points(page, canvas):
    return [d for d in page["drawn"][canvas] if d[0] == "point"]


SUMMARY = {
    "frames": {"received": 12, "processed": 10, "dropped": {"corrupt_compression": 1, "no_series": 1}},
    "n_series": 2,
    "series": [
        {"series_id": "old", "closed": True, "how_ended": "end",
         "indexing": {"indexed": False, "status": "not indexed: no lattice found"}},
        {"series_id": "<b>new</b>", "closed": False, "indexing": {"indexed": True, "unit_cell": [79.1, 79.1, 38.0]},
         "warnings": [{"kind": "ice", "message": "ice rings on 4 images", "suggestion": "check the cryo"}]},
    ],
}


def image(series, n, spots, d_min):
    return {"series_id": series, "image": n, "n_spots": spots, "estimated_d_min": d_min, "ice_rings": 0}


def test_the_page_shows_the_frames_the_series_and_the_latest_series_plots():
    images = {"images": [
        *[image("old", i, 500, 1.5) for i in range(5)],
        image("<b>new</b>", 0, 10, 2.0), image("<b>new</b>", 1, 20, -1.0), image("<b>new</b>", 2, 30, 2.5),
        {"series_id": None, "image": None, "dropped": "no_series"},  # the newest record: a drop outside any series
    ]}
    page = run_page(SUMMARY, images)
    assert "<td>received</td><td>12</td>" in page["frames"] and "<td>processed</td><td>10</td>" in page["frames"]
    assert 'class="bad"><td>dropped: corrupt_compression</td><td>1</td>' in page["frames"]
    assert "old: done (end), not indexed: no lattice found" in page["series"]  # its status, final
    assert "&lt;b&gt;new&lt;/b&gt;: running, indexed 79.1,79.1,38" in page["series"]  # escaped, never markup
    assert "ice: ice rings on 4 images" in page["series"] and "check the cryo" in page["series"]
    assert len(points(page, "spots")) == 3  # the latest series' three images, not the old one's five
    assert len(points(page, "res")) == 2  # d_min -1 (no estimate) is not plotted
    spot_heights = [y for _, _, y in points(page, "spots")]
    assert spot_heights == sorted(spot_heights, reverse=True)  # 10, 20, 30 spots: higher up the canvas
    d_heights = [y for _, _, y in points(page, "res")]
    assert d_heights[0] < d_heights[1]  # resolution axis inverted: 2.0 A above 2.5 A


def test_the_page_says_so_when_there_are_no_images_or_no_processor():
    page = run_page({**SUMMARY, "frames": {"received": 0, "processed": 0, "dropped": {}}}, {"images": []})
    assert ["text", "no data yet"] in page["drawn"]["spots"] and not points(page, "spots")
    page = run_page(None, None)
    assert page["status"] == "processor not reachable"
