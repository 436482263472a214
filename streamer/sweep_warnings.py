"""summary.json `warnings`: what a beamline scientist should act on, read from one series' results.

Each warning is {kind, image, message, suggestion} (CONTRACT.md): `image` is the first image
concerned (None when it is about the series as a whole). They come from the figures the run
already has (frame accounting, per-image statistics, indexing status, the header's geometry),
never from a guess; thresholds are arguments, so a beamline can tune how loud they are.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from streamer.header_corrections import geometry_problems
from streamer.series import SeriesInfo
from streamer.summary import column_values

# what to do about frames dropped for each reason (the receiver's, the workers' and the collector's)
DROP_ADVICE = {
    "worker_lost": "a worker died or stopped answering: see the workers' logs; frames in its queue are lost",
    "overload": "the workers could not keep up: add workers (xtalstream worker --connect) or lower the frame rate",
    "no_worker": "every worker had exited: see the workers' logs, and start workers (xtalstream worker --connect)",
    "duplicate_image": "the detector sent an image number twice: check its trigger and image-number settings",
    "no_series": "frames of a series whose start was never received: start the processor before arming the "
                 "detector",
    "corrupt_compression": "compressed data did not decode: check the network and the detector's stream settings",
    "wrong_size": "frames of another size than the header announced: check the detector's ROI and bit depth",
    "wrong_shape": "frames of another shape than the header announced: check the detector's ROI settings",
}
DEFAULT_DROP_ADVICE = "see the log, which names the reason for every dropped frame"


@dataclass(frozen=True)
class SweepWarning:
    kind: str
    image: int | None
    message: str
    suggestion: str


def sweep_warnings(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], series: SeriesInfo | None = None,
                   final: bool = True, ice_fraction: float = 0.05, ice_min_images: int = 3,
                   overload_fraction: float = 0.1, few_spots: float = 20.0,
                   stage_skipped: int = 0, stages_finished: bool = True) -> list[dict[str, Any]]:
    """The warnings of a series (plain dicts, for JSON), most urgent first.

    summary: the summary.json object so far (`frames`, `indexing`); rows: its per_image.csv
    rows; final: the series has ended (while it runs, not being indexed yet is no warning:
    the indexer may be waiting for data). Ice: rings on at least `ice_fraction` of the
    images and `ice_min_images` of them.
    Overloads: on at least `overload_fraction` of the images. Few spots: a median under
    `few_spots` spots away from ice rings per image. stage_skipped: processed images the sweep
    stages (spot joining, indexing) never saw, live, because they lagged behind the detector.
    stages_finished: False when the outputs are written before those stages finished with the
    series (interrupted, or stalled).
    """
    found: list[SweepWarning] = []
    frames = summary.get("frames") or {}
    received = int(frames.get("received") or 0)
    for reason, count in sorted((frames.get("dropped") or {}).items(), key=lambda kv: -kv[1]):
        found.append(SweepWarning("frames_dropped", None, f"{count} of {received} frames dropped: {reason}",
                                  DROP_ADVICE.get(reason, DEFAULT_DROP_ADVICE)))
    announced = int(series.n_images or 0) if series is not None else 0
    if final and announced and len(rows) < announced:
        found.append(SweepWarning("frames_missing", None,
                                  f"{announced - len(rows)} of {announced} announced images never arrived",
                                  "the detector stopped early or restarted, or its connection dropped: see the log"))
    if stage_skipped:
        found.append(SweepWarning("stages_lagged", None,
                                  f"{stage_skipped} of {len(rows)} images were not given to spot joining and "
                                  "indexing: they lagged behind the detector",
                                  "xtalstream process on the recorded data gives every image to them; a faster "
                                  "host for the processor (the sweep stages run beside the receiver) keeps up live"))
    if final and not stages_finished:
        found.append(SweepWarning("stages_unfinished", None,
                                  "the outputs were written before spot joining and indexing had finished with "
                                  "the series: spots.csv and the final indexing are missing",
                                  "run xtalstream process on the recorded data and let it finish: it waits for "
                                  "them unless interrupted (see the log for why they did not finish)"))
    for problem in geometry_problems(series) if series is not None else []:
        found.append(SweepWarning("geometry", None, f"no resolutions from the header's geometry: {problem}",
                                  "set the configuration key named: it replaces the header's value"))
    spots = column_values(rows, "n_spots_no_ice")
    indexing = summary.get("indexing") or {}
    if final and spots and not indexing.get("indexed", False):
        found.append(SweepWarning("not_indexed", None, str(indexing.get("status") or "not indexed"),
                                  "check the beam centre, distance and wavelength of the header (config geometry "
                                  "overrides them); more degrees of rotation give the indexer more to work with"))
    second = indexing.get("second_lattice") if indexing.get("indexed", False) else None
    if second:
        found.append(SweepWarning("second_lattice", None,
                                  f"a second lattice ({second.get('lattice')}) indexes "
                                  f"{100 * float(second.get('fraction_indexed') or 0):.0f}% of the spots the first "
                                  f"leaves: a split or twinned crystal, or a second crystal in the beam",
                                  "centre the best part of the crystal, or use a smaller beam; its reflections "
                                  "overlap the first lattice's where they coincide"))
    median_spots = statistics.median([v for _, v in spots]) if spots else None
    if median_spots is not None and median_spots < few_spots:
        found.append(SweepWarning("few_spots", next(image for image, v in spots if v < few_spots),
                                  f"median {median_spots:g} spots per image away from ice rings",
                                  "check that the crystal is centred in the beam; a longer exposure or more "
                                  "transmission gives more spots"))
    rings = column_values(rows, "ice_rings")
    ice = [image for image, v in rings if v > 0]
    if ice and len(ice) >= max(ice_min_images, ice_fraction * len(rings)):
        found.append(SweepWarning("ice_rings", ice[0], f"ice rings on {len(ice)} of {len(rings)} images",
                                  "spots on ice rings are left out of n_spots_no_ice; better cryo-protection or "
                                  "annealing the crystal removes ice"))
    counted = column_values(rows, "n_overloads")
    overloads = [(image, v) for image, v in counted if v > 0]
    if overloads and len(overloads) >= overload_fraction * len(counted):
        found.append(SweepWarning("overloads", overloads[0][0],
                                  f"overloaded pixels on {len(overloads)} of {len(counted)} images "
                                  f"(up to {max(v for _, v in overloads):g} per image)",
                                  "the strongest reflections are not measured: attenuate the beam or shorten "
                                  "the exposure, or collect a low-dose pass for them"))
    return [asdict(w) for w in found]
