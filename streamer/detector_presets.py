"""Detector presets as data: `config/detectors/<name>.yaml`, validated when loaded.

A preset describes a tiled pixel-array detector: image size (fast, slow) in pixels, square
pixel size (mm), a grid of identical modules separated by inactive gaps, sensor, bit depth,
the count-rate cut-off (`saturation_value`) and a default sample distance (mm). The module
layout must add up to the image size exactly. `gap_mask()` gives the DECTRIS-style pixel mask
(bit 0 "gap", see `streamer.series.PIXEL_MASK_BITS`) of the inter-module gaps.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamer.errors import BadConfig

PRESET_DIR = Path(__file__).resolve().parents[1] / "config" / "detectors"

# short aliases accepted on the command line (the bench uses 4M/16M)
ALIASES = {"4m": "eiger2_4m", "16m": "eiger2_16m", "1m": "eiger2_1m", "6m": "pilatus6m", "small": "test512"}


class DetectorPreset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="preset name (file stem)")
    description: str = Field("", description="detector model, as a header's detector_description")
    image_size: tuple[int, int] = Field(description="(fast, slow) pixels")
    pixel_size_mm: float = Field(gt=0, le=2, description="square pixel edge (mm)")
    modules: tuple[int, int] = Field((1, 1), description="modules along (fast, slow)")
    module_size: tuple[int, int] = Field(description="pixels of one module (fast, slow)")
    module_gap: tuple[int, int] = Field((0, 0), description="inactive pixels between modules (fast, slow)")
    sensor_material: str = Field("Si", description="sensor material")
    sensor_thickness_mm: float = Field(0.45, ge=0, description="sensor thickness (mm)")
    bit_depth: int = Field(16, description="bits per pixel of the images (16 or 32)")
    saturation_value: int = Field(ge=1, description="count-rate cut-off: higher counts are overloads")
    distance_mm: float = Field(100.0, gt=0, description="default sample-detector distance (mm)")

    @model_validator(mode="after")
    def _layout_adds_up(self) -> DetectorPreset:
        if self.bit_depth not in (16, 32):
            raise ValueError(f"bit_depth must be 16 or 32, not {self.bit_depth}")
        if self.saturation_value >= 2 ** self.bit_depth - 1:
            raise ValueError("saturation_value must be below the bit depth's largest value (the mask value)")
        for axis in (0, 1):
            n, size, gap = self.modules[axis], self.module_size[axis], self.module_gap[axis]
            if n < 1 or size < 1 or gap < 0:
                raise ValueError("modules, module_size must be positive and module_gap >= 0")
            if n * size + (n - 1) * gap != self.image_size[axis]:
                raise ValueError(f"{n} modules of {size} px with {gap} px gaps do not make {self.image_size[axis]} px "
                                 f"along {'fast' if axis == 0 else 'slow'}")
        return self

    @property
    def shape(self) -> tuple[int, int]:
        """numpy order (slow, fast)."""
        return (self.image_size[1], self.image_size[0])

    @property
    def dtype(self) -> str:
        return "<u2" if self.bit_depth == 16 else "<u4"

    def gap_mask(self) -> np.ndarray:
        """uint32 (slow, fast): 1 (bit 0, "gap") on inter-module pixels, 0 elsewhere."""
        mask = np.zeros(self.shape, dtype=np.uint32)
        for axis in (0, 1):
            n, size, gap = self.modules[axis], self.module_size[axis], self.module_gap[axis]
            for k in range(1, n):
                start = k * size + (k - 1) * gap
                if axis == 0:
                    mask[:, start:start + gap] = 1
                else:
                    mask[start:start + gap, :] = 1
        return mask


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@functools.lru_cache(maxsize=32)
def load_preset(name: str) -> DetectorPreset:
    """The preset `name` (file stem or alias, case-insensitive); BadConfig if unknown or invalid."""
    key = ALIASES.get(name.lower(), name.lower())
    path = PRESET_DIR / f"{key}.yaml"
    if not path.is_file():
        raise BadConfig(f"unknown detector preset {name!r}; available: {', '.join(available())}")
    try:
        data = yaml.safe_load(path.read_text())
        return DetectorPreset.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise BadConfig(f"invalid detector preset {path}: {exc}") from exc
