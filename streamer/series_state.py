"""What the collector keeps per series: its frame tally, the frames out with workers, the reorder
buffer, its results and stage outputs, and how far it has got (closed, done, released)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamer.pipeline_messages import FrameResult
from streamer.series import SeriesInfo

if TYPE_CHECKING:
    from streamer.sweep_stages import SweepStage


@dataclass
class Tally:
    """Frame counts: received, processed, dropped by reason."""

    received: int = 0
    processed: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "processed": self.processed, "dropped": dict(sorted(self.dropped.items()))}

    @property
    def in_flight(self) -> int:
        return self.received - self.processed - sum(self.dropped.values())


@dataclass
class SeriesState:
    series: SeriesInfo
    tally: Tally = field(default_factory=Tally)
    # seq -> (image, received_at, noticed_at: collector clock when its dispatch was reported)
    dispatched: dict[int, tuple[int, float, float]] = field(default_factory=dict)
    buffer: dict[int, FrameResult] = field(default_factory=dict)
    next_seq: int = 0
    n_dispatched: int | None = None  # known once the receiver reports the series end
    how_ended: str | None = None
    closed: bool = False
    stages: list[SweepStage] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    results: list[FrameResult] = field(default_factory=list)  # processed, in frame order
    dropped_images: list[int] = field(default_factory=list)  # image numbers of frames dropped (per_image.csv rows)
    latencies_s: list[float] = field(default_factory=list)  # received -> published, per frame
    last_result: float = 0.0  # collector clock at the series' latest worker result (progress)
    worker_seq: dict[str, int] = field(default_factory=dict)  # worker -> the latest seq it returned
    done: bool = False  # closed, and its stages have finished: its outputs are final
    final_warnings: list[dict[str, Any]] | None = None  # once done
    stage_skipped: int = 0  # processed images the sweep stages never saw (live, when they lagged)
    released: bool = False  # its per-image results and spots are written out and forgotten (`Collector.release`)
