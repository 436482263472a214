"""The reciprocal-space origin: a beam centre that is off shifts every spot's reciprocal vector.

A wrong beam centre in the header moves every diffracted beam s1 by the in-plane origin error
over (distance x wavelength), so the spots' reciprocal vectors share a common shift (DIALS's
origin-offset search addresses the same error). Indexing fits that shift along with the basis
(`streamer.indexing.assign.index_and_fit`); it is known only modulo a reciprocal-lattice
vector, so `best_origin` tries the 27 nearest choices and moves the centre only when one makes
clearly more spots fit tightly, out to high resolution, than the header's centre does.
"""

from __future__ import annotations

import logging

import numpy as np

from streamer.geometry import Experiment
from streamer.indexing.assign import index_and_fit
from streamer.indexing.rlp import Spots, rlps_from_spots

log = logging.getLogger(__name__)


def beam_centre_from_shift(exp: Experiment, shift: np.ndarray, spots: Spots, min_px: float = 1.0) -> Experiment | None:
    """The experiment with its beam centre moved to remove a common reciprocal-space shift of
    the spots (what a wrong beam centre causes: s1 errs by the in-plane origin error / (D lambda)),
    or None when the implied move is below `min_px`."""
    gonio = exp.goniometer
    phi_mid = float(exp.scan.phi_deg(np.median(spots.z_image)))
    s_lab = gonio.rotation_matrix(phi_mid) @ shift
    det = exp.detector
    scale = det.distance_mm * exp.beam.wavelength_A
    f, sl = np.asarray(det.fast_axis), np.asarray(det.slow_axis)
    dx = (s_lab @ f) * scale / det.pixel_size_mm[0]
    dy = (s_lab @ sl) * scale / det.pixel_size_mm[1]
    if np.hypot(dx, dy) < min_px or not np.isfinite(dx + dy):
        return None
    bx, by = det.beam_centre_px(exp.beam)
    return exp.replace(detector=det.with_beam_centre(exp.beam, (bx + dx, by + dy)))


def best_origin(exp: Experiment, a_red: np.ndarray, shift: np.ndarray, spots: Spots,
                max_move_px: float = 40.0) -> Experiment | None:
    """The shift is known only modulo a reciprocal-lattice vector; each of the 27 nearest choices
    implies a beam-centre move. Keep the one whose moved geometry indexes the most spots out to
    higher resolution (where the distortion of a wrong centre shows), or None if no move is needed."""
    def tight_count(candidate: Experiment) -> int:
        rlps = rlps_from_spots(candidate, spots)
        a_fit, hkl, ok, _ = index_and_fit(a_red, rlps)
        if ok.sum() < 6:
            return 0
        frac = rlps[ok] @ np.linalg.inv(a_fit).T - hkl[ok]
        return int(np.all(np.abs(frac) < 0.1, axis=1).sum())  # tight: the right centre fits high resolution

    stay = tight_count(exp)
    best, best_count = None, -1
    for n in np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T:
        moved = beam_centre_from_shift(exp, shift + a_red @ n, spots, min_px=0.0)
        if moved is None:
            continue
        move = np.subtract(moved.detector.beam_centre_px(exp.beam), exp.detector.beam_centre_px(exp.beam))
        if np.hypot(*move) > max_move_px:
            continue
        count = tight_count(moved)
        if count > best_count:
            best, best_count = (moved, np.hypot(*move)), count
    # move only when it clearly helps: the header's centre is kept unless another fits much better
    log.debug("origin search: %d spots fit tightly in place, %s after the best move", stay, best_count)
    if best is None or best[1] < 1.0 or best_count < 1.2 * stay + 10:
        return None
    log.info("reciprocal-space origin shift: beam centre moved by %.2f px", best[1])
    return best[0]
