"""report.html: the final report of a series, one self-contained file (no scripts, no links out).

What the run measured, for the people at the beamline and the logbook: the frame accounting,
the indexing result, the warnings with what to do, and per-image plots (spots, estimated
resolution, background, overloads, ice) drawn as inline SVG from per_image.csv's rows. Later
stages (integration, scaling, merging) add their sections as their keys appear in summary.json.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from streamer.summary import column_values

WIDTH, HEIGHT = 760, 200  # plot size (SVG user units)
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 14, 34  # margins: axis labels left and below, legend right
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")

PLOTS = (  # (title, y label, [(per_image.csv column, legend)], kind)
    ("Spots per image", "spots", [("n_spots", "all"), ("n_spots_no_ice", "away from ice"), ("n_spots_4A", "to 4 A")],
     "line"),
    ("Estimated resolution (DIALS I/sigma method)", "d_min (A)", [("estimated_d_min", "estimated d_min")], "points"),
    ("Background", "mean counts/pixel", [("background", "background")], "line"),
    ("Overloaded pixels", "pixels", [("n_overloads", "overloads")], "line"),
    ("Ice rings", "rings", [("ice_rings", "rings found")], "points"),
)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if m * step >= raw)
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def _runs(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """The points split where the image number jumps by more than one."""
    runs: list[list[tuple[float, float]]] = []
    for point in points:
        if runs and point[0] - runs[-1][-1][0] <= 1.0:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


def svg_plot(title: str, y_label: str, lines: Sequence[tuple[str, list[tuple[float, float]]]], kind: str) -> str:
    """One x-y plot (x: image number) as an SVG element; lines: (legend, [(x, y), ...])."""
    xs = [x for _, pts in lines for x, _ in pts]
    ys = [y for _, pts in lines for _, y in pts]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
           f'aria-label="{_esc(title)}"><title>{_esc(title)}</title>',
           f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>']
    if not xs:
        out.append(f'<text x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle">no values</text></svg>')
        return "".join(out)
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y1 = y0 + 1.0

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - (y - y0) / (y1 - y0) * plot_h

    for t in _ticks(y0, y1):
        out.append(f'<line x1="{LEFT - 4}" x2="{LEFT + plot_w}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#eee"/>'
                   f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end" font-size="11">{t:g}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{px(t):.1f}" y="{TOP + plot_h + 15}" text-anchor="middle" font-size="11">{t:g}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle" font-size="12">image</text>'
               f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 14 {TOP + plot_h / 2})">{_esc(y_label)}</text>')
    for k, (legend, pts) in enumerate(lines):
        colour = COLOURS[k % len(COLOURS)]
        for run in _runs(pts) if kind == "line" else [[p] for p in pts]:
            if len(run) > 1:  # a line breaks where an image has no value (dropped)
                path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
                out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.2"/>')
            else:
                out.append(f'<circle cx="{px(run[0][0]):.1f}" cy="{py(run[0][1]):.1f}" r="2" fill="{colour}"/>')
        ly = TOP + 12 + 16 * k
        out.append(f'<rect x="{WIDTH - RIGHT + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{WIDTH - RIGHT + 24}" y="{ly + 1}" font-size="11">{_esc(legend)}</text>')
    out.append("</svg>")
    return "".join(out)


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _cell_text(cell: Any) -> str:
    if not cell:
        return "-"
    return "  ".join(f"{v:.2f}" for v in cell)


def _fixed(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_report(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], title: str = "xtalstream") -> str:
    """The report as HTML text: summary.json's object and per_image.csv's rows of one series."""
    frames = summary.get("frames") or {}
    dropped = frames.get("dropped") or {}
    frame_rows = [("received", frames.get("received", 0)), ("processed", frames.get("processed", 0))]
    frame_rows += [(f"dropped: {reason}", count) for reason, count in sorted(dropped.items())] or [("dropped", 0)]
    idx = summary.get("indexing") or {}
    index_rows = [("status", "indexed" if idx.get("indexed") else idx.get("status", "not indexed"))]
    if idx.get("indexed"):
        index_rows += [("lattice", idx.get("lattice")), ("space group (lattice)", idx.get("space_group")),
                       ("unit cell (A, deg)", _cell_text(idx.get("unit_cell"))),
                       ("rmsd (px)", _fixed(idx.get("rmsd_px"), 3)), ("rmsd (deg)", _fixed(idx.get("rmsd_deg"), 4)),
                       ("fraction indexed", _fixed(idx.get("fraction_indexed"), 3))]
    warnings = summary.get("warnings") or []
    if warnings:
        items = "".join(
            f"<li><b>{_esc(w.get('kind'))}</b>"
            + (f" (from image {_esc(w['image'])})" if w.get("image") is not None else "")
            + f": {_esc(w.get('message'))}<br><i>{_esc(w.get('suggestion'))}</i></li>" for w in warnings)
        warning_html = f"<ul>{items}</ul>"
    else:
        warning_html = "<p>none</p>"
    plots = []
    for plot_title, y_label, columns, kind in PLOTS:
        lines = [(legend, [(float(image), value) for image, value in column_values(rows, column)
                           if column != "estimated_d_min" or value >= 0])  # d_min -1: no estimate
                 for column, legend in columns]
        plots.append(f"<h3>{_esc(plot_title)}</h3>{svg_plot(plot_title, y_label, lines, kind)}")
    phis = [float(r["phi"]) for r in rows if r.get("phi") is not None]
    sweep = (f"{len(rows)} images, phi {min(phis):.2f} to {max(phis):.2f} deg (image centres)" if phis
             else f"{len(rows)} images")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)} report</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 64em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
th {{ background: #f4f4f4; font-weight: normal; }}
li {{ margin-bottom: 0.5em; }}
</style></head><body>
<h1>{_esc(title)}</h1>
<p>{_esc(sweep)}</p>
<h2>Frames</h2>{_table(frame_rows)}
<h2>Indexing</h2>{_table(index_rows)}
<h2>Warnings</h2>{warning_html}
<h2>Per image</h2>{"".join(plots)}
</body></html>
"""
