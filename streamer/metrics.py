"""Every Prometheus metric of the processor, in one place.

Names follow `xtal_<noun>_<verb>_<unit>`; labels are few and their values are created up
front (so a dashboard shows zeros before the first event). Each `Metrics` owns its registry,
injectable for tests; `/metrics` serves `Metrics.exposition()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

# Drop reasons known in advance: every one the frame path raises (tests/test_metrics.py checks);
# others appear when first counted.
KNOWN_DROP_REASONS = (
    # receiver (streamer.receiver)
    "truncated_message", "wrong_part_count", "unknown_type", "malformed_json", "malformed_cbor",
    "blob_size", "unknown_encoding", "bad_header", "oversized_message", "no_series", "wrong_shape",
    "missing_channel", "receiver_error", "image_number", "series_closed",
    # fan-out and collector
    "overload", "no_worker", "duplicate_image", "unknown_series", "worker_lost", "wire_malformed",
    "wire_too_large", "wire_unknown_kind", "wire_version",
    # workers: decoding and per-image analysis
    "corrupt_compression", "wrong_size", "bad_frame", "frame_store", "wrong_dtype", "wrong_mask_size",
    "all_zero", "all_saturated", "nan_pixels", "too_many_strong_pixels", "bad_config", "worker_error",
    # the exceptions' own defaults (`streamer.errors`), for a raise that names no reason
    "bad_input", "malformed_message",
)
QUEUES = ("in_flight", "reorder", "store", "sweep_stages")
STAGES = ("decode", "analyse", "worker", "end_to_end")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SPOT_BUCKETS = (0, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_REFUSAL_REASONS = 32  # read from a worker's heartbeat: bounded, as everything a peer sends


class Metrics:
    """The processor's metrics on one registry (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_received = Counter("xtal_frames_received_total", "frames received from the detector or source", registry=r)
        self.frames_processed = Counter("xtal_frames_processed_total", "frames analysed with a per-image result", registry=r)
        self.frames_dropped = Counter(
            "xtal_frames_dropped_total", "frames received but not analysed, by reason", ["reason"], registry=r
        )
        self.messages_dropped = Counter(
            "xtal_messages_dropped_total", "stream messages refused that were not frames (headers, ends), by reason",
            ["reason"], registry=r,
        )
        self.series_started = Counter("xtal_series_started_total", "data series started", registry=r)
        self.series_ended = Counter("xtal_series_ended_total", "data series ended, by how", ["how"], registry=r)
        self.queue_depth = Gauge("xtal_queue_depth", "items waiting, by queue", ["queue"], registry=r)
        self.workers_seen = Gauge("xtal_workers_seen", "workers joined or with results in the last minute, not exited",
                                  registry=r)
        self.workers_lost = Counter(
            "xtal_workers_lost_total", "workers given up, by how: exited (a local process ended) or silent (no word "
            "for fanout.worker_silence_s; a silent worker heard from again takes frames again)", ["how"], registry=r,
        )
        for how in ("exited", "silent"):
            self.workers_lost.labels(how=how)
        self.internal_refused = Counter(
            "xtal_internal_messages_refused_total", "messages between the processor's own parts that could not be "
            "read, by reader (collector; fanout: workers' credit grants; worker: as its heartbeats report) and "
            "reason (wire_version: a worker or collector of another build)", ["reader", "reason"], registry=r,
        )
        self._refusals_told: dict[str, dict[str, int]] = {}  # by worker: its counts in its last heartbeat
        self.stage_latency = Histogram(
            "xtal_stage_latency_seconds", "time per frame in each stage (decode: before the analysis, which decodes "
            "bslz4 frames band by band itself; end_to_end: received to published)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage_images_skipped = Counter(
            "xtal_stage_images_skipped_total", "processed images not fed to the sweep stages (they lagged too far)",
            registry=r,
        )
        self.spots_per_image = Histogram(
            "xtal_spots_per_image", "strong spots found per image", buckets=SPOT_BUCKETS, registry=r
        )
        self.spots_last = Gauge("xtal_spots_last_image", "strong spots on the latest image (in frame order)", registry=r)
        self.resolution = Gauge(
            "xtal_resolution_estimate_angstrom", "estimated d_min of the latest image with an estimate (A)", registry=r
        )
        self.ice_rings = Gauge("xtal_ice_rings", "ice rings detected on the latest image", registry=r)
        self.overloads_last = Gauge("xtal_overloads_last_image",
                                    "saturated pixels (at or above the count cutoff) on the latest image", registry=r)
        self.background_last = Gauge("xtal_background_last_image",
                                     "mean background counts per pixel of the latest image", registry=r)
        self.image_number = Gauge("xtal_image_number_last", "image number of the latest published result", registry=r)
        for reason in KNOWN_DROP_REASONS:
            self.frames_dropped.labels(reason=reason)
        for reason in ("bad_header", "no_series"):
            self.messages_dropped.labels(reason=reason)
        for how in ("end", "missing_end_of_series"):
            self.series_ended.labels(how=how)
        # children looked up once: `labels()` per frame costs a lock and a dict lookup each time
        self.queue = {queue: self.queue_depth.labels(queue=queue) for queue in QUEUES}
        self.stage = {stage: self.stage_latency.labels(stage=stage) for stage in STAGES}
        for gauge in self.queue.values():
            gauge.set(0)

    def dropped(self, reason: str, n: int = 1) -> None:
        self.frames_dropped.labels(reason=reason).inc(n)

    def worker_refusals(self, worker: str, counts: Any) -> None:
        """A worker's running counts of the messages it could not read, by reason, as its
        heartbeat says them (it has no /metrics): what is new since its last heartbeat is
        counted; a restarted worker's counts (from zero again) are taken without counting back."""
        if not isinstance(counts, dict):
            return
        told = self._refusals_told.setdefault(worker, {})
        for reason, count in list(counts.items())[:MAX_REFUSAL_REASONS]:
            if not isinstance(reason, str) or not isinstance(count, int) or len(reason) > 64:
                continue
            if count > told.get(reason, 0):
                self.internal_refused.labels(reader="worker", reason=reason).inc(count - told.get(reason, 0))
            told[reason] = count

    def image_processed(self, image_number: int, stats: Mapping[str, Any], decode_s: float, analyse_s: float) -> None:
        """One per-image result, in frame order: its counts, stage times and the latest-image
        gauges (`stats` as a worker sends them; a figure missing or NaN leaves its gauge as it was)."""
        self.frames_processed.inc()
        self.stage["decode"].observe(decode_s)
        self.stage["analyse"].observe(analyse_s)
        self.stage["worker"].observe(decode_s + analyse_s)
        n_spots = stats.get("n_spots")
        if isinstance(n_spots, (int, float)):
            self.spots_per_image.observe(n_spots)
            self.spots_last.set(n_spots)
        d_min = stats.get("estimated_d_min")
        if isinstance(d_min, (int, float)) and d_min == d_min and d_min > 0:
            self.resolution.set(d_min)
        overloads = stats.get("n_overloads")
        if isinstance(overloads, (int, float)):
            self.overloads_last.set(overloads)
        background = stats.get("background")
        if isinstance(background, (int, float)) and background == background:
            self.background_last.set(background)
        ice = stats.get("ice_rings")
        if isinstance(ice, (list, tuple)):  # the rings' resolutions, or their count
            ice = len(ice)
        self.ice_rings.set(ice if isinstance(ice, (int, float)) else 0)
        self.image_number.set(image_number)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
