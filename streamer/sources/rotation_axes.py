"""Rotation axes of beamlines whose image headers do not state them, as data.

A miniCBF or ADSC SMV header gives no rotation axis; dxtbx knows the beamlines whose axis is
not the usual horizontal one by their detector's serial number, and DIALS takes that axis.
`config/rotation_axes.yaml` lists those rules (validated when loaded); `known_rotation_axis`
finds the one an image's header matches, so that a vertical or reversed axis is used from the
first image on (indexing on a wrong axis fails).
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from streamer.errors import BadConfig

RULES_PATH = Path(__file__).resolve().parents[2] / "config" / "rotation_axes.yaml"


class RotationAxisRule(BaseModel):
    """One beamline's axis and the header contents that identify it (`config/rotation_axes.yaml`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    beamline: str = Field(description="who has this axis (for the log)")
    dxtbx: str = Field("", description="the dxtbx Format class that knows it")
    format: Literal["cbf", "smv"]
    detector_contains: tuple[str, ...] = Field((), description="in the '# Detector:' record (case ignored)")
    header_contains: tuple[str, ...] = Field((), description="in the header text")
    from_year: int | None = Field(None, description="header dated this year or later")
    oscillation_axis_contains: tuple[str, ...] = Field((), description="one of them in the Oscillation_axis record")
    adsc_serials: tuple[int, ...] = Field((), description="an ADSC header's DETECTOR_SN (with a DATE)")
    axis: tuple[float, float, float] = Field(description="unit vector, DIALS laboratory frame")

    @field_validator("axis")
    @classmethod
    def _unit(cls, axis: tuple[float, float, float]) -> tuple[float, float, float]:
        if abs(math.sqrt(sum(x * x for x in axis)) - 1.0) > 1e-6:
            raise ValueError(f"axis {axis} is not a unit vector")
        return axis


@functools.lru_cache(maxsize=4)
def load_rules(path: Path = RULES_PATH) -> tuple[RotationAxisRule, ...]:
    """The rules of `path`, in order; BadConfig if the file is unreadable or a rule invalid."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, list):
            raise BadConfig(f"rotation axis rules {path}: not a list of rules")
        return tuple(RotationAxisRule.model_validate(item) for item in data)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise BadConfig(f"invalid rotation axis rules {path}: {exc}") from exc


def _record(text: str, key: str) -> str:
    """The rest of the first miniCBF header line '# <key>...' ("" if none)."""
    match = re.search(rf"^#\s*{key}(.*)$", text, flags=re.MULTILINE)
    return match.group(1) if match else ""


def _cbf_year(text: str) -> int | None:
    """The year of a miniCBF header's date line ('# 2019-09-11T13:20:28.989')."""
    match = re.search(r"^#\s*(\d{4})[-/]", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def _smv_year(header: dict[str, str]) -> int | None:
    """The year of an ADSC header's DATE ('Tue Sep 10 10:25:57 2013')."""
    match = re.search(r"\b(\d{4})\b", header.get("DATE", ""))
    return int(match.group(1)) if match else None


def _matches(rule: RotationAxisRule, kind: str, header: str | dict[str, str]) -> bool:
    if rule.format != kind:
        return False
    if kind == "cbf":
        assert isinstance(header, str)
        text, year = header, _cbf_year(header)
        detector = _record(header, "Detector").upper()
        oscillation = _record(header, "Oscillation_axis").upper()
    else:
        assert isinstance(header, dict)
        text, year, detector, oscillation = "\n".join(f"{k}={v}" for k, v in header.items()), _smv_year(header), "", ""
        if rule.adsc_serials:
            try:
                serial = int(header.get("DETECTOR_SN", ""))
            except ValueError:
                return False
            if "DATE" not in header or serial not in rule.adsc_serials:
                return False
    if rule.detector_contains and not all(s.upper() in detector for s in rule.detector_contains):
        return False
    if not all(s in text for s in rule.header_contains):
        return False
    if rule.from_year is not None and (year is None or year < rule.from_year):
        return False
    return not rule.oscillation_axis_contains or any(s.upper() in oscillation for s in rule.oscillation_axis_contains)


def known_rotation_axis(kind: str, header: str | dict[str, str],
                        rules: tuple[RotationAxisRule, ...] | None = None) -> RotationAxisRule | None:
    """The first rule (`load_rules`) that a "cbf" header (its text) or an "smv" header (its
    records) matches, or None: the header's own default stands."""
    for rule in load_rules() if rules is None else rules:
        if _matches(rule, kind, header):
            return rule
    return None
