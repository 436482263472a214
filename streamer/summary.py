"""Outputs written to `--out DIR` when a run ends (CONTRACT.md "Files written to --out DIR").

- `summary.json`: `frames` {received, processed, dropped: {reason: count}} always;
  `indexing` from the indexing stage (with `status` saying why when there is no model), or
  {"indexed": false, "status": ...} when no indexing stage ran; `warnings` (`streamer.sweep_warnings`,
  [] when there is nothing to act on); every other key only when the stage that owns it ran
  (never a placeholder value).
- `per_image.csv`: one row per processed image, in frame order; `phi` at the image's centre
  (degrees); columns of stages that did not run are left empty.
- `spots.csv`: the spot joiner's table, when that stage ran.
- `report.html`: the final report (`streamer.report`): frames, indexing, warnings, per-image plots.
- `config.yaml`: the full effective configuration, stored beside the outputs.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from streamer.config import Config
from streamer.spots_io import PER_IMAGE_COLUMNS, PerImageWriter, SpotsWriter

log = logging.getLogger(__name__)

NO_INDEXING = {"indexed": False, "status": "not indexed: no indexing stage ran"}


def jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN/inf -> None (JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_summary(frames: Mapping[str, Any], stage_outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The summary.json object: `frames`, `indexing`, then the stages' own keys."""
    summary: dict[str, Any] = {"frames": dict(frames)}
    summary["indexing"] = dict(stage_outputs.get("indexing") or NO_INDEXING)
    for key, value in stage_outputs.items():
        if key not in summary and not key.startswith("_"):
            summary[key] = value
    return jsonable(summary)


def per_image_rows(series: Any, results: Sequence[Any], dropped: Sequence[int] = ()) -> list[dict[str, Any]]:
    """Rows of per_image.csv, one per image: the collector's processed results (columns the
    stages filled) and, by image number among them, the images it dropped (image and phi only)."""
    processed = {r.image_number for r in results}
    rows = [{"image": n, "phi": series.phi_deg(n + 0.5)}  # one row per image: a duplicate adds none
            for n in sorted(set(dropped) - processed)]
    for r in results:
        row: dict[str, Any] = {"image": r.image_number,
                               "phi": r.stats.get("phi_deg", series.phi_deg(r.image_number + 0.5))}
        for column in PER_IMAGE_COLUMNS[2:]:
            value = r.stats.get(column)
            row[column] = len(value) if column == "ice_rings" and isinstance(value, (list, tuple)) else value
        rows.append(row)
    return sorted(rows, key=lambda row: row["image"])


def column_values(rows: Sequence[Mapping[str, Any]], column: str) -> list[tuple[int, float]]:
    """(image, value) of the per_image.csv rows where `column` holds a finite number (a dropped
    image, or a stage that did not run, holds none)."""
    out = []
    for row in rows:
        value = row.get(column)
        if isinstance(value, numbers.Real) and math.isfinite(value):
            out.append((int(row["image"]), float(value)))
    return out


def write_per_image(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """per_image.csv with the per-image stage's writer (CONTRACT.md columns)."""
    with PerImageWriter(path) as writer:
        writer.write_all(rows)


def write_spots(path: Path, spots: Any) -> None:
    """spots.csv from the spot joiner's columnar table (x_px, y_px, z_image, intensity, n_pixels)."""
    with SpotsWriter(path) as writer:
        writer.write(spots.x_px, spots.y_px, spots.z_image, spots.intensity, spots.n_pixels)


def write_config(path: Path, config: Config) -> None:
    path.write_text("# effective configuration of this run (xtalstream)\n"
                    + yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False))


def write_outputs(out_dir: str | Path, config: Config, summary: Mapping[str, Any],
                  per_image: Sequence[Mapping[str, Any]] | None = None, spots: Any = None,
                  title: str = "xtalstream") -> Path:
    """Write summary.json, per_image.csv and report.html (when the rows are given), spots.csv
    (when the joined spots are given), config.yaml.

    Each file is written beside and then renamed over the old one, so a reader never sees half a file.
    """
    from streamer.report import render_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _replace(out / "summary.json", lambda p: p.write_text(json.dumps(jsonable(summary), indent=2) + "\n"))
    if per_image is not None:
        _replace(out / "per_image.csv", lambda p: write_per_image(p, per_image))
        report = render_report(jsonable(summary), jsonable(list(per_image)), title)
        _replace(out / "report.html", lambda p: p.write_text(report, encoding="utf-8"))
    if spots is not None:
        _replace(out / "spots.csv", lambda p: write_spots(p, spots))
    _replace(out / "config.yaml", lambda p: write_config(p, config))
    log.info("outputs written to %s", out)
    return out


def _replace(path: Path, write: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)
