"""Outputs written to `--out DIR` when a run ends (CONTRACT.md "Files written to --out DIR").

- `summary.json`: `frames` {received, processed, dropped: {reason: count}} always;
  `indexing` from the indexing stage, or {"indexed": false, "reason": ...} saying why there is
  no model; every other key only when the stage that owns it ran (never a placeholder value).
- `per_image.csv`: one row per processed image, in frame order.
- `spots.csv`: the spot joiner's table, when that stage ran.
- `config.yaml`: the full effective configuration, stored beside the outputs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from streamer.config import Config

log = logging.getLogger(__name__)

PER_IMAGE_COLUMNS = (
    "image", "phi", "n_spots", "n_spots_no_ice", "n_spots_4A", "total_intensity", "estimated_d_min",
    "background", "n_overloads", "ice_rings", "n_integrated", "mean_i_over_sigma", "scale", "b_factor",
)
NO_INDEXING = {"indexed": False, "reason": "no indexing stage ran"}


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


def per_image_rows(series: Any, results: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows of per_image.csv from the collector's processed results (columns the stages filled)."""
    rows = []
    for r in results:
        row: dict[str, Any] = {"image": r.image_number, "phi": series.phi_deg(r.image_number)}
        for column in PER_IMAGE_COLUMNS[2:]:
            value = r.stats.get(column)
            if column == "ice_rings" and isinstance(value, (list, tuple)):
                value = len(value)
            row[column] = "" if value is None else value
        rows.append(row)
    return rows


def write_per_image(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PER_IMAGE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def write_config(path: Path, config: Config) -> None:
    path.write_text("# effective configuration of this run (xtalstream)\n"
                    + yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False))


def write_outputs(out_dir: str | Path, config: Config, summary: Mapping[str, Any],
                  per_image: Sequence[Mapping[str, Any]] | None = None,
                  spots_writer: Any = None) -> Path:
    """Write summary.json, per_image.csv, spots.csv (when `spots_writer(path)` is given), config.yaml."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    if per_image is not None:
        write_per_image(out / "per_image.csv", per_image)
    if spots_writer is not None:
        spots_writer(out / "spots.csv")
    write_config(out / "config.yaml", config)
    log.info("outputs written to %s", out)
    return out
