"""`xtalstream findspots PATH... --out spots.csv`: per-image analysis of recorded images.

Reads any recorded data `streamer.sources.open_any` knows (EIGER HDF5, CBF/SMV series,
stream captures), finds spots on every image with the DIALS dispersion(_extended) threshold,
and writes spots.csv and, next to it, per_image.csv (CONTRACT.md). Stills (no rotation
between images, e.g. a grid scan) give 2D spots per image, as DIALS does; rotation data are
joined into 3D spots across images (`streamer.spot_joiner`). With no options the
parameters equal DIALS 3.12's `dials.find_spots` defaults. Bad frames are counted and skipped.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

from streamer.commands.common import cli_errors, parser

log = logging.getLogger(__name__)


def build_parser():
    p = parser("findspots", __doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="EIGER master/data files, CBF/SMV images or a folder")
    p.add_argument("--out", default="spots.csv", metavar="spots.csv",
                   help="spot list to write (per_image.csv goes next to it)")
    p.add_argument("--nproc", type=int, default=1,
                   help="threads analysing images in parallel (the kernels release the GIL)")
    p.add_argument("--algorithm", choices=["dispersion_extended", "dispersion"], help="threshold algorithm")
    p.add_argument("--sigma-background", type=float, help="index-of-dispersion threshold (DIALS sigma_background)")
    p.add_argument("--sigma-strong", type=float, help="pixel threshold in sigmas above the local mean")
    p.add_argument("--global-threshold", type=float, help="strong pixels must also exceed this value")
    p.add_argument("--min-local", type=int, help="minimum valid pixels in the local window")
    p.add_argument("--kernel-size", type=int, nargs=2, metavar=("SLOW", "FAST"),
                   help="local window half-sizes, rows first: the order in which DIALS's kernel_size acts (7x7: 3 3)")
    p.add_argument("--gain", type=float, help="detector gain (ADU per photon)")
    p.add_argument("--min-spot-size", type=int, help="smallest spot in pixels (default: 3 for pixel detectors, 6 CCD)")
    p.add_argument("--max-spot-size", type=int, help="largest spot in pixels")
    p.add_argument("--max-separation", type=float, help="largest peak-to-centroid distance (px)")
    p.add_argument("--d-min", type=float, help="ignore pixels beyond this resolution (A)")
    p.add_argument("--d-max", type=float, help="ignore pixels below this resolution (A)")
    p.add_argument("--border", type=int, help="pixels to ignore along every edge of the image (DIALS filter.border)")
    p.add_argument("--pedestal", type=int, default=None,
                   help="ADC offset subtracted from SMV pixels (default: the header's, as DIALS; nanoBragg writes 40 "
                        "without saying so)")
    return p


def _updated(section, updates: dict, what: str):
    """A config section with the command line's `updates`, validated (BadConfig naming `what`)."""
    from pydantic import ValidationError

    from streamer.errors import BadConfig

    try:
        return section.model_validate({**section.model_dump(), **updates})
    except ValidationError as exc:
        raise BadConfig(f"invalid {what} option: {exc}") from exc


def effective_config(args):
    from streamer.config import load_config, log_modified

    config = load_config(args.config)
    updates = {name: getattr(args, name) for name in (
        "algorithm", "sigma_background", "sigma_strong", "global_threshold", "min_local", "gain", "min_spot_size",
        "max_spot_size", "max_separation", "d_min", "d_max") if getattr(args, name) is not None}
    if args.kernel_size is not None:
        updates["kernel_size"] = tuple(args.kernel_size)
    if updates:
        config = config.model_copy(update={"spotfinding": _updated(config.spotfinding, updates, "spot-finding")})
    if args.border is not None:
        config = config.model_copy(update={"mask": _updated(config.mask, {"border": args.border}, "mask")})
    log_modified(config)
    return config


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nproc < 1:
        print("xtalstream findspots: --nproc must be >= 1", file=sys.stderr)
        return 2
    import numpy as np

    from streamer.errors import BadInput
    from streamer.header_corrections import entering
    from streamer.perimage import ImageAnalyser
    from streamer.sources.open_any import open_source
    from streamer.spot_joiner import SpotJoinerStage, Spots3D
    from streamer.spots_io import PerImageWriter, SpotsWriter

    config = effective_config(args)
    info, frames = open_source(args.paths, pedestal=args.pedestal)
    info = entering(info, config.geometry)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    analysers = threading.local()

    def analyser() -> ImageAnalyser:
        if not hasattr(analysers, "one"):
            analysers.one = ImageAnalyser(info, config)
        return analysers.one

    def analyse(frame):
        try:
            one = analyser()
            key = (tuple(frame.shape), str(frame.dtype))
            if getattr(analysers, "key", None) != key:  # a buffer per thread, reused frame after frame
                analysers.key, analysers.buffer = key, np.empty(key[0], dtype=np.dtype(key[1]))
            image, source = one.prepare(frame, analysers.buffer)  # bslz4 chunks: decoded inside the pass
            return frame.image_number, one.analyse(image, frame.image_number, source), None
        except BadInput as exc:
            return frame.image_number, None, exc

    results, dropped, skipped = [], {}, []
    with ThreadPoolExecutor(max_workers=args.nproc) as pool:
        for image_number, result, error in pool.map(analyse, frames):
            if error is not None:
                dropped[error.reason] = dropped.get(error.reason, 0) + 1
                skipped.append(SimpleNamespace(image_number=image_number, phi_deg=info.phi_deg(image_number + 0.5)))
                log.warning("image %d skipped: %s", image_number, error)
            else:
                results.append(result)
                log.info("image %d: %d spots, %d strong pixels", image_number, result.n_spots, result.strong_pixels)
    results.sort(key=lambda r: r.image_number)
    with SpotsWriter(out) as spots_out:
        if info.is_still:
            for r in results:
                s = r.spots
                spots_out.write(s.x_px, s.y_px, s.z_image, s.intensity, s.n_pixels)
        else:
            joiner = SpotJoinerStage(info, config).joiner
            joiner.next_image = results[0].image_number if results else 0
            parts = [joiner.add(r.image_number, r.spots.pixel_index, r.spots.pixel_value) for r in results]
            joined = Spots3D.concatenate(parts + [joiner.finish()])
            spots_out.write(joined.x_px, joined.y_px, joined.z_image, joined.intensity, joined.n_pixels)
        n_spots = spots_out.n_written
    with PerImageWriter(out.parent / "per_image.csv") as per_image:  # one row per image, a skipped one blank
        per_image.write_all(sorted([*results, *skipped], key=lambda r: r.image_number))
    elapsed = time.perf_counter() - t_start
    n_images = len(results) + sum(dropped.values())
    print(f"{n_images} images ({len(results)} analysed, dropped {dropped or 'none'}), {n_spots} spots "
          f"({'2D, stills' if info.is_still else '3D, rotation'}) in {elapsed:.1f} s -> {out}, "
          f"{out.parent / 'per_image.csv'}")
    if results:
        counts = np.array([r.n_spots for r in results])
        print(f"spots per image: min {counts.min()}, median {np.median(counts):.0f}, max {counts.max()}")
    return 0
