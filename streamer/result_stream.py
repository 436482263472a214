"""The live per-image result stream: a ZeroMQ PUB socket, msgpack payloads, versioned schema.

Each message has two parts: a topic (ASCII, for SUB prefix filtering) and one msgpack map.
Every map carries `"v": 1` (this schema's version; a consumer must ignore unknown keys and
refuse a higher major version). Units: pixels, degrees, Angstrom, seconds.

topic `series_start`::
    {v, series_id, source, image_shape: [rows, cols], n_images (or nil), omega_start_deg,
     omega_increment_deg, wavelength_A, distance_mm, beam_centre_px: [fast, slow]}
topic `image` (one per received frame; dispatched frames in frame order, frames the
receiver refused as they come, `image` nil when not even the image number was readable)::
    {v, series_id, image (0-based), phi_deg, dropped (nil, or the drop reason),
     n_spots, n_spots_no_ice, n_spots_4A, total_intensity, estimated_d_min (A or nil),
     background, n_overloads, ice_rings, strong_pixels, latency_s (received to published),
     worker}   -- the statistics keys are present when the frame was processed
topic `series_end`::
    {v, series_id, how ("end" or "missing_end_of_series"),
     frames: {received, processed, dropped: {reason: count}}}
topic `indexing` (when the indexing stage publishes a model)::
    {v, series_id, indexing: {the summary.json `indexing` object}}

The socket binds (loopback by default) with a send high-water mark: a slow subscriber loses
stale messages rather than holding the processor back. See docs/result_stream.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgpack
import zmq

from streamer.errors import BadInput
from streamer.series import SeriesInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOPICS = ("series_start", "image", "series_end", "indexing")


def series_start_payload(series: SeriesInfo) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "series_id": series.series_id,
        "source": series.source,
        "image_shape": list(series.image_shape),
        "n_images": series.n_images,
        "omega_start_deg": series.omega_start_deg,
        "omega_increment_deg": series.omega_increment_deg,
        "wavelength_A": series.wavelength_A,
        "distance_mm": series.distance_mm,
        "beam_centre_px": list(series.beam_centre_px),
    }


class ResultPublisher:
    """Binds the PUB socket on `url` (None: publishing disabled) in the injected context."""

    def __init__(self, ctx: zmq.Context, url: str | None, sndhwm: int = 10000):
        self.url = url
        self.socket: zmq.Socket | None = None
        if url is not None:
            self.socket = ctx.socket(zmq.PUB)
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.SNDHWM, sndhwm)
            try:
                self.socket.bind(url)
            except zmq.ZMQError as exc:
                self.socket.close(linger=0)
                raise BadInput(f"cannot publish the result stream on {url}: {exc}", reason="bad_argument") from exc
            self.url = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("per-image result stream on %s", self.url)

    def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        if self.socket is None:
            return
        data = msgpack.packb({"v": SCHEMA_VERSION, **payload}, use_bin_type=True)
        try:
            self.socket.send_multipart([topic.encode(), data], flags=zmq.NOBLOCK)
        except zmq.Again:  # PUB never blocks; kept for clarity
            log.debug("result stream full, %s message dropped", topic)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None


def read_message(parts: list[bytes]) -> tuple[str, dict[str, Any]]:
    """Parse one received result-stream message into (topic, map); for subscribers and tests."""
    if len(parts) != 2:
        raise ValueError(f"result stream message has {len(parts)} parts, expected 2")
    payload = msgpack.unpackb(parts[1], raw=False)
    if not isinstance(payload, dict) or int(payload.get("v", 0)) > SCHEMA_VERSION:
        raise ValueError("unsupported result stream message")
    return parts[0].decode(), payload
