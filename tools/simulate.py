"""`xtalstream simulate`: a simulated rotation sweep, streamed live as a detector or written as
EIGER HDF5, with a truth file (`tools.simulator.truth`).

Live: binds a PUSH socket (`--bind`, loopback by default in examples), sends the series
(stream v1 or v2, bslz4 frames) at `--rate` frames/s. `--wait-for-consumer` waits until a
consumer has connected before it renders and sends anything.
"""

from __future__ import annotations

import logging
import math
import sys
import time

import numpy as np

from streamer.commands.common import cli_errors, parser
from streamer.errors import BadInput

log = logging.getLogger(__name__)


def build_parser():
    from tools.simulator.presets import PRESETS

    p = parser("simulate", "simulated rotation sweep of a crystal with a truth file")
    p.add_argument("--preset", default="lysozyme", choices=sorted(PRESETS), help="crystal preset (default lysozyme)")
    p.add_argument("--cell", type=float, nargs=6, metavar=("A", "B", "C", "AL", "BE", "GA"), help="unit cell (A, deg)")
    p.add_argument("--space-group", help="space group symbol or number (gemmi)")
    p.add_argument("--orientation", type=float, nargs=3, metavar=("RX", "RY", "RZ"),
                   help="U from rotations about the lab x, then y, then z axes (deg, DIALS frame); "
                        "default: random from --seed")
    p.add_argument("--seed", type=int, default=1, help="random seed (orientation, structure, noise)")
    p.add_argument("--images", type=int, required=True, metavar="N", help="number of images")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--bind", metavar="URL", help="act as the detector: PUSH bound on URL (e.g. tcp://127.0.0.1:9999)")
    out.add_argument("--out", metavar="FILE.h5", help="write an EIGER-style HDF5 master + data files")
    p.add_argument("--format", choices=["v1", "v2"], default="v1", help="stream protocol (default v1)")
    p.add_argument("--rate", type=float, default=None, metavar="HZ",
                   help="frames per second (default: as fast as possible)")
    p.add_argument("--truth", metavar="PATH", help="truth file (HDF5); default next to --out, none for --bind")
    p.add_argument("--detector", default="eiger2_1m", help="detector preset in config/detectors (default eiger2_1m)")
    p.add_argument("--wavelength", type=float, default=1.0, metavar="A", help="wavelength (A, default 1.0)")
    p.add_argument("--distance", type=float, default=None, metavar="MM", help="distance (mm; default the preset's)")
    p.add_argument("--beam-centre", type=float, nargs=2, default=None, metavar=("X", "Y"), help="beam centre (px)")
    p.add_argument("--oscillation", type=float, nargs=2, default=(0.0, 0.1), metavar=("START", "WIDTH"),
                   help="phi of image 0 and width per image (deg, default 0 0.1)")
    p.add_argument("--rotation-axis", type=float, nargs=3, default=(1.0, 0.0, 0.0), metavar=("X", "Y", "Z"),
                   help="rotation axis in the DIALS laboratory frame (default 1 0 0; 0 1 0: a vertical axis)")
    p.add_argument("--mosaicity", type=float, default=None, metavar="DEG", help="mosaic spread sigma (deg)")
    p.add_argument("--divergence", type=float, default=0.01, metavar="DEG", help="beam divergence sigma (deg)")
    p.add_argument("--b-factor", type=float, default=None, metavar="A2", help="Wilson B (A^2)")
    p.add_argument("--d-min", type=float, default=None, metavar="A", help="highest resolution with intensity (A)")
    p.add_argument("--intensity-scale", type=float, default=3000.0, help="mean full-reflection photons at s = 0")
    p.add_argument("--anomalous", type=float, default=0.0, nargs="?", const=0.05, metavar="FRAC",
                   help="relative anomalous difference sigma (default 0; 0.05 if given alone)")
    p.add_argument("--ice", type=float, default=0.0, nargs="?", const=0.5, metavar="PHOTONS",
                   help="ice rings with this peak photons/pixel (0.5 if given alone)")
    p.add_argument("--damage", type=float, default=0.0, nargs="?", const=0.1, metavar="A2",
                   help="radiation damage: B growth per image (A^2; 0.1 if given alone)")
    p.add_argument("--second-lattice", type=float, default=0.0, nargs="?", const=0.3, metavar="FRAC",
                   help="add a second, randomly turned lattice at this relative intensity (0.3 if given alone)")
    p.add_argument("--mtz", metavar="FILE", help="intensities from an MTZ (I, I(+)/I(-), F or F(+)/F(-) column)")
    p.add_argument("--zingers", type=float, default=1.0, metavar="N", help="mean zingers per image")
    p.add_argument("--gain", type=float, default=1.0, help="ADU per photon, rounded to an integer >= 1 (default 1)")
    p.add_argument("--header-detail", choices=["none", "basic", "all"], default="all",
                   help="header detail of the stream (default all: with the pixel mask)")
    p.add_argument("--wait-for-consumer", action="store_true", help="do not start until a consumer has connected")
    p.add_argument("--trigger-delay", type=float, default=0.0, metavar="S",
                   help="seconds between the series header (arm) and the first image (trigger), as at a "
                        "beamline; processors set up per series in that time")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="S", help="give up waiting after S seconds")
    p.add_argument("--send-timeout", type=float, default=60.0, metavar="S",
                   help="with --bind: give up when the consumer takes no message for S seconds once the series "
                        "has started (default 60; 0 = wait for ever)")
    return p


def spec_from_args(args):
    import gemmi

    from tools.simulator.background import BackgroundModel
    from tools.simulator.presets import PRESETS
    from tools.simulator.sweep import SimulationSpec, misset_u

    preset = PRESETS[args.preset]
    mtz_sg, mtz_cell = None, None
    if args.mtz:  # an MTZ brings its own space group and cell unless they are given
        try:
            mtz = gemmi.read_mtz_file(args.mtz)
        except (RuntimeError, OSError, ValueError) as exc:
            raise BadInput(f"cannot read MTZ {args.mtz}: {exc}", reason="bad_mtz") from exc
        mtz_sg, mtz_cell = mtz.spacegroup.hm, tuple(mtz.cell.parameters)
    try:
        space_group = gemmi.SpaceGroup(args.space_group).hm if args.space_group else (mtz_sg or preset.space_group)
        cell = tuple(args.cell) if args.cell else (mtz_cell or preset.cell)
        volume = gemmi.UnitCell(*cell).volume
    except (ValueError, RuntimeError) as exc:
        raise BadInput(f"bad cell or space group: {exc}", reason="bad_argument") from exc
    if not (min(cell[:3]) > 0 and all(0 < angle < 180 for angle in cell[3:])
            and volume > 1e-6 * cell[0] * cell[1] * cell[2]):
        raise BadInput(f"bad cell {' '.join(f'{v:g}' for v in cell)}: lengths must be positive and the angles make "
                       "a cell of positive volume", reason="bad_argument")
    for name, value in (("--wavelength", args.wavelength), ("--distance", args.distance)):
        if value is not None and not value > 0:
            raise BadInput(f"{name} must be positive, not {value:g}", reason="bad_argument")
    if args.images < 1:
        raise BadInput("--images must be at least 1", reason="bad_argument")
    if args.oscillation[1] == 0:
        raise BadInput("the oscillation width must not be 0", reason="bad_argument")
    axis = np.asarray(args.rotation_axis, dtype=np.float64)
    if not (np.all(np.isfinite(axis)) and np.linalg.norm(axis) > 0) or abs(axis[2]) > 0.9 * np.linalg.norm(axis):
        raise BadInput(f"--rotation-axis {' '.join(f'{v:g}' for v in axis)} must be a vector at more than 25 deg "
                       "to the beam (z)", reason="bad_argument")
    U = None if args.orientation is None else tuple(map(tuple, misset_u(args.orientation)))
    return SimulationSpec(
        cell=cell, space_group=space_group, U=U, seed=args.seed, n_images=args.images, detector=args.detector,
        wavelength_A=args.wavelength, distance_mm=args.distance,
        beam_centre_px=tuple(args.beam_centre) if args.beam_centre else None,
        osc_start_deg=args.oscillation[0], osc_width_deg=args.oscillation[1],
        rotation_axis=tuple(float(v) for v in axis / np.linalg.norm(axis)),
        mosaicity_deg=preset.mosaicity_deg if args.mosaicity is None else args.mosaicity,
        divergence_deg=args.divergence, d_min=args.d_min or preset.d_min,
        b_factor=preset.b_factor if args.b_factor is None else args.b_factor,
        intensity_scale=args.intensity_scale, anomalous=args.anomalous, mtz=args.mtz,
        background=BackgroundModel(ice=args.ice), zingers_per_image=args.zingers, gain=args.gain,
        damage=args.damage, second_lattice=args.second_lattice,
        frame_time_s=1.0 / args.rate if args.rate else 0.01,
    )


def stream(sim, url: str, fmt: str, rate: float | None, wait: bool, wait_timeout: float | None,
           header_detail: str = "all", trigger_delay_s: float = 0.0, send_timeout_s: float | None = None) -> int:
    import zmq

    from streamer.sender import DetectorSender

    ctx = zmq.Context()
    sender = DetectorSender(ctx, url, fmt=fmt, rate_hz=rate, header_detail=header_detail)
    try:
        if wait:
            sender.wait_for_receiver(wait_timeout)
        sender.send_start(sim.series_info())
        sender.give_up_after(send_timeout_s)  # a consumer came; if it goes away, do not block for ever
        if trigger_delay_s > 0:
            time.sleep(trigger_delay_s)
        t0 = time.monotonic()
        for i in range(sim.spec.n_images):
            sender.send_frame(sim.encoded_frame(i))
        sender.send_end()
        elapsed = time.monotonic() - t0
        log.info("sent %d images in %.2f s (%.1f frames/s)", sim.spec.n_images, elapsed,
                 sim.spec.n_images / max(elapsed, 1e-9))
    finally:
        sender.close(linger_s=30.0)
        ctx.term()  # waits for queued messages: see `DetectorSender.close`
    return sim.spec.n_images


def write_hdf5(sim, path: str) -> None:
    from streamer.recorder import SeriesRecorder

    with SeriesRecorder(path, sim.series_info()) as recorder:
        for i in range(sim.spec.n_images):
            recorder.write(sim.encoded_frame(i))
        recorder.close()


@cli_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate is not None and not (args.rate > 0 and math.isfinite(args.rate)):
        raise BadInput("--rate must be a positive number", reason="bad_argument")
    if not (args.send_timeout >= 0 and math.isfinite(args.send_timeout)):
        raise BadInput("--send-timeout must be a number of seconds >= 0", reason="bad_argument")
    if not (args.trigger_delay >= 0 and math.isfinite(args.trigger_delay)):
        raise BadInput("--trigger-delay must be a number of seconds >= 0", reason="bad_argument")
    spec = spec_from_args(args)
    from tools.simulator.sweep import Simulation
    from tools.simulator.truth import write_truth

    sim = Simulation(spec)
    truth = args.truth
    if truth is None and args.out:
        truth = str(args.out).removesuffix(".h5").removesuffix("_master") + "_truth.h5"
    if truth:
        write_truth(truth, sim)
        log.info("truth written to %s", truth)
    t0 = time.monotonic()
    if args.bind:
        try:
            stream(sim, args.bind, args.format, args.rate, args.wait_for_consumer, args.wait_timeout,
                   args.header_detail, args.trigger_delay, args.send_timeout or None)
        except TimeoutError as exc:  # nobody to send to: the user's setup, not a bug
            raise BadInput(str(exc), reason="no_consumer") from exc
    else:
        write_hdf5(sim, args.out)
    cell = " ".join(f"{v:g}" for v in spec.cell)
    print(f"simulated {spec.n_images} images ({spec.space_group}, cell {cell}; {sim.preset.name}, "
          f"{len(sim.reflections.intensity)} reflections) in {time.monotonic() - t0:.2f} s"
          + (f"; truth {truth}" if truth else ""), file=sys.stderr)
    return 0


__all__ = ["main", "spec_from_args"]
