"""report.html: self-contained, well-formed, and showing what summary.json and per_image.csv hold."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from test_sweep_warnings import rows, summary

from streamer.report import render_report, svg_plot


def test_report_shows_the_run_and_plots_every_image():
    s = summary(processed=39, dropped={"worker_lost": 1})
    s["indexing"] = {"indexed": True, "lattice": "tP", "space_group": "P 4 2 2",
                     "unit_cell": [79.1, 79.1, 38.0, 90, 90, 90], "rmsd_px": 0.06, "rmsd_deg": 0.01,
                     "fraction_indexed": 0.99}
    s["warnings"] = [{"kind": "frames_dropped", "image": None, "message": "1 of 40 frames dropped: worker_lost",
                      "suggestion": "see <the> log & act"}]
    page = render_report(s, rows(dropped=(7,)), "series <s1>")
    assert "79.10  79.10  38.00" in page and "dropped: worker_lost" in page
    assert "see &lt;the&gt; log &amp; act" in page and "series &lt;s1&gt;" in page  # escaped
    assert not re.search(r"""(src|href)=|<script""", page)  # self-contained: nothing loaded from elsewhere
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 5
    spots = ET.fromstring(svgs[0])  # well-formed SVG
    lines = spots.findall("{http://www.w3.org/2000/svg}polyline")
    # image 7 was dropped: each line breaks there, into images 0-6 and 8-39
    assert sorted(len(p.get("points").split()) for p in lines) == [7, 7, 7, 32, 32, 32]


def test_plot_scales_points_into_its_frame_and_copes_with_no_values():
    svg = ET.fromstring(svg_plot("t", "y", [("a", [(0.0, 2.0), (10.0, 4.0)])], "points"))
    circles = svg.findall("{http://www.w3.org/2000/svg}circle")
    xs = [float(c.get("cx")) for c in circles]
    ys = [float(c.get("cy")) for c in circles]
    assert xs[0] < xs[1] and ys[0] > ys[1]  # image 10 right of image 0, 4 above 2
    width, height = float(svg.get("width")), float(svg.get("height"))
    assert all(0 <= x <= width for x in xs) and all(0 <= y <= height for y in ys)
    assert "no values" in svg_plot("t", "y", [("a", [])], "line")
