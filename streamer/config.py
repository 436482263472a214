"""Typed configuration: pydantic models that forbid unknown keys, loaded from YAML.

Order of precedence (last wins): built-in defaults (`config/default.yaml`), a user YAML file
or directory of YAML files (`--config`), environment variables `XTAL_<SECTION>__<FIELD>`
(for example `XTAL_SPOTFINDING__SIGMA_STRONG=4`; values parsed as YAML scalars).
Each stage owns one section; add fields to your own section with bounds and a description.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamer.errors import BadConfig

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
ENV_PREFIX = "XTAL_"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReceiverConfig(Section):
    format: Literal["auto", "v1", "v2"] = Field("auto", description="stream protocol; auto detects per message")
    rcvhwm: int = Field(1000, ge=1, description="ZeroMQ receive high-water mark (messages) for the detector socket")
    max_message_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="largest message part accepted (ZMQ_MAXMSGSIZE); bigger is dropped by ZeroMQ"
    )
    idle_timeout_s: float = Field(
        30.0, gt=0, description="a series with no message for this long is closed as 'missing end-of-series'"
    )
    channels: list[str] = Field(
        default_factory=list,
        description="stream v2 image channels passed on (e.g. threshold_1); empty: the first channel of each image",
    )


class FanoutConfig(Section):
    workers: int = Field(0, ge=0, le=256, description="local worker processes; 0 means cores - 1, at least 1")
    bind_host: str = Field("127.0.0.1", description="interface the internal sockets bind on (loopback by default)")
    frame_port: int = Field(0, ge=0, le=65535, description="port for frames to workers (0: ipc:// in a private dir)")
    result_port: int = Field(0, ge=0, le=65535, description="port for results from workers (0: ipc://)")
    hwm: int = Field(64, ge=1, description="high-water mark of the frame fan-out socket (frames in flight per worker)")
    frame_store_mb: int = Field(
        2048, ge=0, description="bound on compressed frames kept for re-integration once a model exists (MB)"
    )
    shared_store: bool = Field(
        True,
        description="workers on this host read frames from the frame store's shared memory instead of receiving them",
    )
    control_port: int = Field(0, ge=0, le=65535, description="port where workers join the collector (0: ipc://)")
    model_port: int = Field(0, ge=0, le=65535, description="port of the model channel to workers (0: ipc://)")
    reorder_bound: int = Field(256, ge=1, description="results held waiting for an earlier frame before it is given up")
    result_timeout_s: float = Field(
        10.0, gt=0,
        description="a dispatched frame is dropped as 'worker_lost' when this long has passed since its dispatch and "
        "since the series' last result from any worker",
    )
    overload_wait_s: float = Field(
        1.0, ge=0, description="live: how long a frame may wait for a free worker before it is dropped as 'overload'"
    )
    worker_silence_s: float = Field(
        5.0, ge=2, description="a worker not heard from this long (each says it is alive every second) is given up, "
        "as if it had exited: the frames in its queue are dropped as 'worker_lost'; heard again, it takes frames again"
    )


class SpotfindingConfig(Section):
    algorithm: Literal["dispersion_extended", "dispersion"] = Field(
        "dispersion_extended", description="threshold algorithm (DIALS 3.12 default: dispersion_extended)"
    )
    gain: float = Field(1.0, gt=0, description="detector gain (ADU per photon)")
    kernel_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = Field(
        (3, 3), description="half-sizes of the local window as DIALS 3.12's phil kernel_size acts on them: "
        "(slow, fast), rows first; 3 -> 7 pixels"
    )
    sigma_background: float = Field(6.0, gt=0, description="index-of-dispersion threshold for background")
    sigma_strong: float = Field(3.0, gt=0, description="pixel threshold above the local mean in sigmas")
    min_local: int = Field(2, ge=2, description="minimum valid pixels in the local window (DIALS: more than 1)")
    global_threshold: float = Field(0.0, ge=0, description="strong pixels must also exceed this value")
    min_spot_size: int | None = Field(
        None, ge=1, description="smallest spot in pixels; None: 3 for pixel-array detectors, 6 otherwise (DIALS)"
    )
    max_spot_size: int = Field(1000, ge=1, description="largest spot in pixels")
    max_separation: float = Field(2.0, ge=0, description="drop spots whose peak is further than this from the centroid (px)")
    d_min: float | None = Field(None, gt=0, description="ignore pixels beyond this resolution (A)")
    d_max: float | None = Field(None, gt=0, description="ignore pixels below this resolution (A)")
    max_strong_pixel_fraction: float = Field(
        0.25, gt=0, le=1, description="an image with more strong pixels than this fraction is refused (DIALS)"
    )
    ice_ring_width: float = Field(0.004, gt=0, description="full width of an ice ring in 1/d^2 (A^-2), DIALS per-image analysis")
    radial_bin_width: float = Field(0.002, gt=0, description="bin width of the radial background profile in 1/d^2 (A^-2)")
    radial_row_step: int = Field(8, ge=1, description="radial profile and background sample every Nth row")

    @model_validator(mode="after")
    def _min_local_fits_the_window(self) -> SpotfindingConfig:
        slow, fast = self.kernel_size
        if self.min_local > (2 * slow + 1) * (2 * fast + 1):
            raise ValueError(f"min_local {self.min_local} is more than the {2 * slow + 1}x{2 * fast + 1} window's "
                             f"{(2 * slow + 1) * (2 * fast + 1)} pixels: no pixel could be strong")
        return self

    @property
    def window_fast_slow(self) -> tuple[int, int]:
        """`kernel_size` in the kernels' order (fast, slow)."""
        slow, fast = self.kernel_size
        return fast, slow


class MaskConfig(Section):
    border: int = Field(0, ge=0, description="pixels to ignore along every edge of the image (DIALS filter.border)")
    untrusted_rectangles: list[tuple[int, int, int, int]] = Field(
        default_factory=list, description="[x0, x1, y0, y1] pixel ranges to ignore (half-open)"
    )
    untrusted_circles: list[tuple[float, float, float]] = Field(
        default_factory=list, description="[x, y, radius] in pixels to ignore (e.g. a backstop); "
        "as DIALS's untrusted.circle, pixel (i, j) is out when (i - x)^2 + (j - y)^2 < radius^2"
    )
    untrusted_polygons: list[list[tuple[float, float]]] = Field(
        default_factory=list, description="polygons of (x, y) pixel vertices to ignore (arms, shadows)"
    )


class GeometryOverride(Section):
    """Values that replace what a (wrong) header says."""

    beam_centre_px: tuple[float, float] | None = Field(None, description="beam centre (fast, slow) in pixels")
    distance_mm: float | None = Field(None, gt=0, description="sample-to-detector distance (mm)")
    wavelength_A: float | None = Field(None, gt=0, description="wavelength (A)")
    rotation_axis: tuple[float, float, float] | None = Field(None, description="rotation axis in the lab frame")
    oscillation: tuple[float, float] | None = Field(None, description="start and width per image (degrees)")


class IndexingConfig(Section):
    min_images: int = Field(5, ge=1, description="first indexing attempt after this many images")
    min_degrees: float = Field(3.0, ge=0, description="... and at least this rotation range (degrees)")
    retry_every_images: int = Field(5, ge=1, description="retry indexing every N new images until accepted")
    max_cell_A: float | None = Field(None, gt=0, description="largest cell edge searched (A); None: from the spots")
    known_cell: tuple[float, float, float, float, float, float] | None = Field(
        None, description="unit cell to index against (a, b, c, alpha, beta, gamma)"
    )
    known_space_group: str | None = Field(None, description="space group symbol to index against")
    min_fraction_indexed: float = Field(0.5, ge=0, le=1, description="accept a solution indexing at least this fraction")
    max_rmsd_px: float = Field(2.0, gt=0, description="accept a solution with positional RMSD below this (px)")
    refine_every_images: int = Field(10, ge=1, description="re-refine every N images once indexed")
    max_cpu_fraction: float = Field(
        0.3, gt=0, le=1,
        description="live indexing may use at most this fraction of the wall time: after an attempt or "
                    "re-refinement of t seconds the next waits t (1/f - 1) seconds, so a crystal that does "
                    "not index cannot starve the receiver and collector (the end of a series always tries)",
    )
    min_spots: int = Field(20, ge=6, description="fewest spots an indexing attempt needs")
    min_cell_A: float = Field(10.0, gt=0, description="shortest cell edge searched (A)")
    max_distortion_deg: float = Field(3.0, ge=0, description="Bravais lattices listed up to this metric distortion (Le Page delta, degrees)")
    bravais_rmsd_ratio: float | None = Field(
        None, ge=1,
        description="recommend the highest symmetry whose refined RMSD is within this factor of the P1 fit; None: 1.5 X-rays, 3 electrons",
    )
    max_rmsd_images: float = Field(1.5, gt=0, description="accept a solution with rotation RMSD below this (images)")
    refine_distance: bool | None = Field(None, description="refine the distance; None: yes for X-rays, no for electrons")
    refine_tilt: bool | None = Field(None, description="refine detector tilts; None: once spots span tilt_min_degrees (X-rays)")
    tilt_min_degrees: float = Field(20.0, ge=0, description="rotation range needed before tilts are refined (degrees)")
    refine_axis: bool = Field(False, description="refine the rotation-axis direction (two angles)")
    max_refine_obs: int = Field(3000, ge=50, description="at most this many spots (random subset) enter each least-squares fit")
    second_lattice: bool = Field(True, description="search the unindexed spots for a second lattice once indexed")
    scan_varying_block_deg: float = Field(
        0.0, ge=0, description="scan-varying orientation in blocks of this many degrees at re-refinement; 0: static"
    )


class OutputConfig(Section):
    http: str | None = Field("127.0.0.1:8470", description="HOST:PORT of the dashboard and /metrics; None disables")
    result_stream: str | None = Field(
        "tcp://127.0.0.1:8471", description="ZeroMQ PUB endpoint of the per-image result stream; None disables"
    )


class Config(Section):
    schema_version: int = Field(SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION, description="configuration schema version")
    detector: str | None = Field(None, description="detector preset name in config/detectors (None: from the stream)")
    geometry: GeometryOverride = Field(default_factory=GeometryOverride, description="header corrections")
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig, description="detector stream receiver")
    fanout: FanoutConfig = Field(default_factory=FanoutConfig, description="workers and internal sockets")
    spotfinding: SpotfindingConfig = Field(default_factory=SpotfindingConfig, description="per-image spot finding")
    mask: MaskConfig = Field(default_factory=MaskConfig, description="user masks")
    indexing: IndexingConfig = Field(default_factory=IndexingConfig, description="indexing and refinement")
    output: OutputConfig = Field(default_factory=OutputConfig, description="feedback outputs")


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    files = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")) if path.is_dir() else [path]
    data: dict[str, Any] = {}
    for file in files:
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise BadConfig(f"cannot read configuration {file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise BadConfig(f"configuration {file} must hold a mapping, not {type(loaded).__name__}")
        data = _deep_merge(data, loaded)
    return data


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX):].split("__") if part]
        if not path:
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Defaults, then the YAML file or directory `path`, then `XTAL_*` environment overrides."""
    from config import DEFAULT_CONFIG

    data = _read_yaml(DEFAULT_CONFIG)
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise BadConfig(f"configuration {path} does not exist")
        data = _deep_merge(data, _read_yaml(path))
    data = _deep_merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise BadConfig(f"invalid configuration: {exc}") from exc


def modified_settings(config: Config) -> dict[str, Any]:
    """The settings that differ from the built-in defaults, flattened as 'section.field'."""
    default = Config().model_dump()
    current = config.model_dump()
    out: dict[str, Any] = {}

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in b:
                walk(a.get(key), b[key], f"{prefix}{key}.")
        elif a != b:
            out[prefix.rstrip(".")] = b

    walk(default, current, "")
    return out


def log_modified(config: Config) -> None:
    changed = modified_settings(config)
    if changed:
        for key, value in sorted(changed.items()):
            log.info("modified parameter %s = %r", key, value)
    else:
        log.info("all parameters at their defaults")
