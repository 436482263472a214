"""One indexing attempt from start to finish, for a rotation sweep or a still.

spots -> reciprocal-lattice points -> 1D-FFT candidate vectors -> basis -> Niggli cell (the
cell inside it if it is a supercell: `streamer.indexing.sublattice`) -> P1 refinement
(positional for rotation data) -> Bravais lattices with distortion -> constrained refinement
of each from the highest symmetry down, recommending the highest that keeps the RMSD within
`bravais_rmsd_ratio` of the P1 fit (DIALS's refine_bravais_settings, simplified: metric fit
plus RMSD, no intensity correlation) -> acceptance by fraction indexed and RMSD.
"""

from __future__ import annotations

import logging
import time

import gemmi
import numpy as np

from streamer.crystal import Crystal, b_matrix
from streamer.geometry import Experiment
from streamer.indexing.assign import assign_indices, index_and_fit
from streamer.indexing.basis import choose_basis
from streamer.indexing.fft1d import estimate_max_cell, find_candidate_vectors
from streamer.indexing.lattice_symmetry import (
    BRAVAIS,
    SPACE_GROUP,
    SYMMETRY_ORDER,
    bravais_solutions,
    symmetrised_cell,
)
from streamer.indexing.origin import best_origin
from streamer.indexing.reduction import cell_of_basis, niggli_reduce_basis
from streamer.indexing.refinement import Observations, nearest_rotation, refine
from streamer.indexing.result import BravaisRow, IndexingOptions, IndexingResult
from streamer.indexing.rlp import Spots, rlps_from_spots
from streamer.indexing.sublattice import supercell_reduction

log = logging.getLogger(__name__)


def _crystal_for(lattice: str, basis: np.ndarray, mosaicity_deg: float = 0.0) -> Crystal:
    """Crystal with the symmetrised cell of `basis` and the orientation nearest to it."""
    a_matrix = np.linalg.inv(basis)
    from streamer.indexing.reduction import cell_of_basis

    cell = symmetrised_cell(lattice, cell_of_basis(basis))
    u = nearest_rotation(a_matrix @ np.linalg.inv(b_matrix(cell)))
    return Crystal.from_cell(cell, u, SPACE_GROUP[lattice], mosaicity_deg)


def _known_lattice(space_group: str | None) -> str | None:
    if space_group is None:
        return None
    sg = gemmi.SpaceGroup(space_group)
    system = sg.crystal_system_str()
    letter = {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o", "tetragonal": "t", "trigonal": "h",
              "hexagonal": "h", "cubic": "c"}[system]
    centring = sg.centring_type()
    if system == "trigonal":
        return "hR" if centring == "R" else "hP"
    if centring in ("A", "B"):
        centring = "C"
    return letter + centring


def _matches_known(cell, known, tol: float = 0.05) -> bool:
    a, k = np.asarray(cell, float), np.asarray(known, float)
    return bool(np.all(np.abs(a[:3] - k[:3]) <= tol * k[:3]) and np.all(np.abs(a[3:] - k[3:]) <= 3.0))


def _in_known_setting(lattice: str, basis: np.ndarray, known) -> Crystal | None:
    """The crystal in the axis order of a known cell, if the lattice has it: primitive, body-
    and face-centred orthorhombic cells may permute their axes (C-centred ones may swap a, b)."""
    import itertools

    perms = [(0, 1, 2)]
    if lattice in ("oP", "oI", "oF"):
        perms = list(itertools.permutations(range(3)))
    elif lattice in ("oC", "mP", "mC"):
        perms = [(0, 1, 2), (1, 0, 2)] if lattice == "oC" else [(0, 1, 2), (2, 1, 0)]
    for perm in perms:
        b = basis[list(perm)]
        if np.linalg.det(b) < 0:
            b = b * np.array([[1.0], [1.0], [-1.0]]) if lattice != "mP" and lattice != "mC" else -b
        crystal = _crystal_for(lattice, b)
        if _matches_known(crystal.unit_cell, known):
            return crystal
    return None


def _failed(reason: str, n: int, t0: float, **kw) -> IndexingResult:
    """A failed attempt with its reason; the caller says what was attempted (the log names it)."""
    log.debug("indexing attempt failed: %s", reason)
    return IndexingResult(False, reason, n_spots=n, seconds=time.perf_counter() - t0, **kw)


def low_resolution(rlps: np.ndarray, max_cell_A: float, max_index: float = 50.0, min_count: int = 300) -> np.ndarray:
    """Mask of the points whose indices along the longest cell edge stay below `max_index`: a
    geometry error of a fraction e shifts index h by e*h, so the first basis search and fits use
    these, and resolution grows over macro-cycles (as DIALS's refinement protocol d_min steps)."""
    q = np.linalg.norm(rlps, axis=1)
    q_cut = max_index / max_cell_A
    if np.count_nonzero(q <= q_cut) < min(min_count, len(q)):
        q_cut = np.sort(q)[min(min_count, len(q)) - 1]
    return q <= q_cut


def find_basis(rlps: np.ndarray, max_cell_A: float | None, min_cell_A: float = 10.0):
    """(reduced real-space basis rows or None, max cell used): the search without geometry."""
    max_cell = max_cell_A or estimate_max_cell(rlps)
    rlps = rlps[low_resolution(rlps, max_cell)]
    candidates = find_candidate_vectors(rlps, max_cell, min_cell_A=min_cell_A)
    basis = choose_basis(candidates, rlps)
    if basis is None:
        return None, max_cell
    reduced, _ = niggli_reduce_basis(basis)
    return reduced, max_cell


def index_rotation(experiment: Experiment, spots: Spots, options: IndexingOptions | None = None) -> IndexingResult:
    """Index a rotation sweep's spots (no cell needed) and refine the model; see the module doc."""
    opt = options or IndexingOptions()
    t0 = time.perf_counter()
    n = len(spots)
    if n < opt.min_spots:
        return _failed(f"too few spots ({n} < {opt.min_spots})", n, t0)
    exp = experiment.replace(crystal=None)
    for _ in range(3):  # a large origin shift moves the beam centre and starts again
        rlps = rlps_from_spots(exp, spots)
        reduced, max_cell = find_basis(rlps, opt.max_cell_A, opt.min_cell_A)
        if reduced is None:
            return _failed("no lattice found", n, t0, max_cell_A=max_cell)
        low = low_resolution(rlps, max_cell)
        log.debug("basis: cell %s from %d low-resolution spots", np.round(cell_of_basis(reduced), 3), low.sum())
        a_red, hkl, ok, shift = index_and_fit(np.linalg.inv(reduced), rlps[low], fit_shift=True)
        for _smaller in range(3):  # a supercell (doubled, tripled, ...) gives way to the cell inside it
            smaller = supercell_reduction(a_red, rlps[low], hkl, ok, shift)
            if smaller is None:
                break
            reduced, _ = niggli_reduce_basis(np.linalg.inv(smaller))
            log.info("the basis found is a supercell: indexing with the cell %s inside it",
                     np.round(cell_of_basis(reduced), 2))
            a_red, hkl, ok, shift = index_and_fit(np.linalg.inv(reduced), rlps[low], fit_shift=True)
        if ok.sum() < opt.min_spots or ok.mean() < 0.1 + 0.5 * opt.min_fraction_indexed:
            # random points index about 22 % within the 0.3 tolerance
            return _failed(f"no lattice found (best basis indexes {ok.mean():.2f})", n, t0, max_cell_A=max_cell)
        moved = best_origin(exp, a_red, shift, spots)
        if moved is None:
            break
        exp = moved
    try:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN: caught as divergence
            return _refine_and_choose(exp, spots, opt, a_red, rlps, shift, low, max_cell, t0)
    except (ValueError, np.linalg.LinAlgError) as exc:  # a model driven singular by junk spots
        return _failed(f"no lattice found (refinement diverged: {exc})", n, t0, max_cell_A=max_cell)


def _observations(spots: Spots, hkl: np.ndarray, indexed: np.ndarray) -> Observations:
    """Indexed spots that may enter refinement (not those flagged as truncated by the sweep start)."""
    use = indexed if spots.refine is None else indexed & spots.refine
    return Observations(hkl[use], spots.x_px[use], spots.y_px[use], spots.z_image[use])


def _upgrade(sol, res, rows, spots: Spots, opt: IndexingOptions, kw: dict, max_rmsd_px: float):
    """Bootstrap: the Bravais search again on the refined primitive cell of the chosen lattice.

    A narrow wedge determines the P1 cell poorly, so a higher symmetry can look distorted there
    (a hexagonal cell 1.2 degrees off after 2 degrees of data) yet fit well once a lower
    symmetric setting (e.g. orthohexagonal oC) has been refined."""
    for _ in range(2):
        primitive = np.linalg.inv(sol.transform.astype(np.float64)) @ np.linalg.inv(res.experiment.crystal.A_matrix)
        reduced, _ = niggli_reduce_basis(primitive)
        higher = [s for s in bravais_solutions(reduced, opt.max_distortion_deg)
                  if SYMMETRY_ORDER.index(s.lattice) > SYMMETRY_ORDER.index(sol.lattice)]
        rlps = rlps_from_spots(res.experiment.replace(crystal=None), spots)
        upgraded = None
        for cand in sorted(higher, key=lambda s: -SYMMETRY_ORDER.index(s.lattice)):
            crystal = _crystal_for(cand.lattice, cand.basis)
            hkl, ok = assign_indices(crystal.A_matrix, rlps)
            if ok.sum() < opt.min_spots:
                continue
            obs = _observations(spots, hkl, ok)
            trial = refine(res.experiment.replace(crystal=crystal), obs, BRAVAIS[cand.lattice], **kw)
            if trial.rmsd_px <= max_rmsd_px:
                upgraded = (cand, trial)
                break
        if upgraded is None:
            break
        sol, res = upgraded
        log.info("lattice upgraded to %s after refinement in a lower symmetry", sol.lattice)
        rows = [r for r in rows if r.lattice != sol.lattice] + [
            BravaisRow(sol.lattice, sol.distortion_deg, res.experiment.crystal.unit_cell, res.rmsd_px, True)]
        rows = [BravaisRow(r.lattice, r.distortion_deg, r.unit_cell, r.rmsd_px, r.lattice == sol.lattice) for r in rows]
        rows.sort(key=lambda r: SYMMETRY_ORDER.index(r.lattice))
    return sol, res, rows


def _refine_and_choose(exp: Experiment, spots: Spots, opt: IndexingOptions, a_red: np.ndarray, rlps: np.ndarray,
                       shift: np.ndarray, low: np.ndarray, max_cell: float, t0: float) -> IndexingResult:
    """P1 macro-cycles, the Bravais table with constrained refinements, the choice, acceptance."""
    n = len(spots)
    hkl, ok = assign_indices(a_red, rlps - shift)
    ok &= low
    refine_distance = opt.refine_distance if opt.refine_distance is not None else exp.beam.wavelength_A >= 0.1
    span = float(np.ptp(spots.z_image)) * abs(exp.scan.width_deg)
    electrons = exp.beam.wavelength_A < 0.1  # a flat Ewald sphere: tilt and distance mimic the cell
    refine_tilt = opt.refine_tilt if opt.refine_tilt is not None else (span >= opt.tilt_min_degrees and not electrons)
    kw = dict(refine_distance=refine_distance, refine_axis=opt.refine_axis, refine_tilt=refine_tilt,
              max_obs=opt.max_refine_obs)
    # P1 macro-cycles: positional refinement on the low-resolution spots, then on all, each
    # followed by re-assignment with the refined geometry
    current = exp.replace(crystal=Crystal(a_red))
    p1 = None
    for next_index in (100.0, np.inf, np.inf):
        obs = _observations(spots, hkl, ok)
        p1 = refine(current, obs, "triclinic", **kw)
        current = p1.experiment
        rlps = rlps_from_spots(current.replace(crystal=None), spots)
        hkl, ok = assign_indices(current.crystal.A_matrix, rlps)
        ok &= low_resolution(rlps, max_cell, next_index)
        log.debug("P1 cycle: cell %s rmsd %.3f px, %d indexed",
                  np.round(current.crystal.unit_cell, 3), p1.rmsd_px, ok.sum())
    if ok.mean() < opt.min_fraction_indexed or not p1.rmsd_px <= 2.0 * opt.max_rmsd_px:
        return _failed(f"no lattice found (P1 fit: fraction indexed {ok.mean():.2f}, rmsd {p1.rmsd_px:.2f} px)",
                       n, t0, max_cell_A=max_cell)
    reduced_basis = np.linalg.inv(current.crystal.A_matrix)
    solutions = bravais_solutions(reduced_basis, opt.max_distortion_deg)
    known_lattice = _known_lattice(opt.known_space_group)
    # electron data (flat Ewald sphere, coarse centroids) fit a symmetric cell less closely:
    # DIALS recommends mC for the MyD88 sweep at 2.6 times the P1 RMSD
    ratio = opt.bravais_rmsd_ratio or (3.0 if electrons else 1.5)
    rows: list[BravaisRow] = []
    chosen = None
    for sol in sorted(solutions, key=lambda s: -SYMMETRY_ORDER.index(s.lattice)):
        if known_lattice is not None and sol.lattice != known_lattice:
            continue
        crystal = _crystal_for(sol.lattice, sol.basis)
        if opt.known_cell is not None:
            crystal = _in_known_setting(sol.lattice, sol.basis, opt.known_cell)
            if crystal is None:
                continue
        hkl_c, ok_c = assign_indices(crystal.A_matrix, rlps)
        if ok_c.sum() < opt.min_spots:
            rows.append(BravaisRow(sol.lattice, sol.distortion_deg, crystal.unit_cell, None, False))
            continue
        obs = _observations(spots, hkl_c, ok_c)
        res = refine(current.replace(crystal=crystal), obs, BRAVAIS[sol.lattice], **kw)
        if not res.rmsd_px <= ratio * p1.rmsd_px + 0.05:
            # a poorly determined P1 cell (narrow wedge) starts the symmetric model off: re-assign
            # with the refined model and refine once more before judging it
            rl = rlps_from_spots(res.experiment.replace(crystal=None), spots)
            hkl_c, ok_c = assign_indices(res.experiment.crystal.A_matrix, rl)
            if ok_c.sum() >= opt.min_spots:
                obs = _observations(spots, hkl_c, ok_c)
                again = refine(res.experiment, obs, BRAVAIS[sol.lattice], **kw)
                res = again if again.rmsd_px < res.rmsd_px else res
        good = sol.lattice == "aP" or res.rmsd_px <= ratio * p1.rmsd_px + 0.05
        rows.append(BravaisRow(sol.lattice, sol.distortion_deg, res.experiment.crystal.unit_cell, res.rmsd_px,
                               good and chosen is None))
        if good and chosen is None:
            chosen = (sol, res)
            if known_lattice is None and opt.known_cell is None:
                # the lower-symmetry rows are listed without their (slower) refinements
                for other in solutions:
                    if SYMMETRY_ORDER.index(other.lattice) < SYMMETRY_ORDER.index(sol.lattice):
                        rows.append(BravaisRow(other.lattice, other.distortion_deg,
                                               symmetrised_cell(other.lattice, other.cell), None, False))
                break
    rows.sort(key=lambda r: SYMMETRY_ORDER.index(r.lattice))
    if chosen is None:
        known = known_lattice or opt.known_cell
        reason = "known cell or space group not found" if known else "no Bravais lattice fits"
        return _failed(reason, n, t0, bravais=tuple(rows), max_cell_A=max_cell)
    sol, res = chosen
    if known_lattice is None and opt.known_cell is None:
        sol, res, rows = _upgrade(sol, res, rows, spots, opt, kw, ratio * min(p1.rmsd_px, res.rmsd_px) + 0.05)
    lattice = sol.lattice
    final = res.experiment
    rlps = rlps_from_spots(final.replace(crystal=None), spots)
    hkl, ok = assign_indices(final.crystal.A_matrix, rlps)
    result = dict(experiment=final, lattice=lattice, n_spots=n, n_indexed=int(ok.sum()), rmsd_x_px=res.rmsd_x_px,
                  rmsd_y_px=res.rmsd_y_px, rmsd_deg=res.rmsd_deg, bravais=tuple(rows), hkl=hkl, indexed_mask=ok,
                  seconds=time.perf_counter() - t0, max_cell_A=max_cell)
    frac = ok.mean()
    if frac < opt.min_fraction_indexed:
        return IndexingResult(False, f"fraction indexed {frac:.2f} below {opt.min_fraction_indexed:.2f}", **result)
    if not res.rmsd_px <= opt.max_rmsd_px:
        return IndexingResult(False, f"rmsd {res.rmsd_px:.2f} px above {opt.max_rmsd_px:.2f}", **result)
    if not res.rmsd_z_images <= opt.max_rmsd_images:
        return IndexingResult(False, f"rmsd {res.rmsd_z_images:.2f} images above {opt.max_rmsd_images:.2f}", **result)
    log.info("indexed %d/%d spots: %s %s, rmsd %.3f px", ok.sum(), n, lattice,
             " ".join(f"{v:.3f}" for v in final.crystal.unit_cell), res.rmsd_px)
    return IndexingResult(True, "", **result)


def index_still(rlps: np.ndarray, options: IndexingOptions | None = None, tolerance: float = 0.3) -> IndexingResult:
    """Index the reciprocal-lattice points (1/A) of one still: basis search, reciprocal-space fit
    of A, and the highest-symmetry Bravais lattice whose metric distortion is within
    `max_distortion_deg` (no positional refinement: a still has no rotation to refine against)."""
    opt = options or IndexingOptions()
    t0 = time.perf_counter()
    rlps = np.asarray(rlps, dtype=np.float64)
    n = len(rlps)
    if n < opt.min_spots:
        return _failed(f"too few spots ({n} < {opt.min_spots})", n, t0)
    # a still samples reciprocal space on a surface, so nearest neighbours understate the cell:
    # try the estimate and twice and three times it, keeping the basis that indexes most
    estimate = opt.max_cell_A or estimate_max_cell(rlps)
    best = None
    for factor in ((1.0,) if opt.max_cell_A else (1.0, 2.0, 3.0)):
        reduced, max_cell = find_basis(rlps, estimate * factor, opt.min_cell_A)
        if reduced is None:
            continue
        a_red, hkl, ok, _ = index_and_fit(np.linalg.inv(reduced), rlps, tolerances=(tolerance,) * 3)
        if best is None or ok.sum() > best[2].sum():
            best = (a_red, max_cell, ok)
        if ok.mean() >= max(0.7, opt.min_fraction_indexed):
            break  # good enough: skip the longer searches
    if best is None:
        return _failed("no lattice found", n, t0, max_cell_A=estimate)
    a_red, max_cell, ok = best
    reduced, _ = niggli_reduce_basis(np.linalg.inv(a_red))
    # no refinement can test a symmetric cell against a still, so only near-exact metrics count
    solutions = bravais_solutions(reduced, min(opt.max_distortion_deg, 1.0))
    best = max(solutions, key=lambda s: SYMMETRY_ORDER.index(s.lattice))
    crystal = _crystal_for(best.lattice, best.basis)
    hkl, ok = assign_indices(crystal.A_matrix, rlps, tolerance)
    rows = tuple(BravaisRow(s.lattice, s.distortion_deg, symmetrised_cell(s.lattice, s.cell), None, s is best)
                 for s in solutions)
    frac = ok.mean()
    indexed = frac >= opt.min_fraction_indexed
    reason = "" if indexed else f"fraction indexed {frac:.2f} below {opt.min_fraction_indexed:.2f}"
    return IndexingResult(indexed, reason, None, best.lattice, n, int(ok.sum()), bravais=rows, hkl=hkl, indexed_mask=ok,
                          seconds=time.perf_counter() - t0, max_cell_A=max_cell, still_crystal=crystal)


def refine_model(experiment: Experiment, lattice: str, spots: Spots, options: IndexingOptions | None = None,
                 previous: IndexingResult | None = None) -> IndexingResult:
    """Re-refine an accepted model against a (grown) spot list: assign with the current model,
    refine in the same lattice, re-assign. `previous` supplies the Bravais table to carry over."""
    opt = options or IndexingOptions()
    t0 = time.perf_counter()
    n = len(spots)
    rlps = rlps_from_spots(experiment.replace(crystal=None), spots)
    hkl, ok = assign_indices(experiment.crystal.A_matrix, rlps)
    if ok.sum() < opt.min_spots:
        return _failed(f"model indexes only {int(ok.sum())} spots", n, t0)
    span = float(np.ptp(spots.z_image)) * abs(experiment.scan.width_deg)
    electrons = experiment.beam.wavelength_A < 0.1
    refine_distance = opt.refine_distance if opt.refine_distance is not None else not electrons
    refine_tilt = opt.refine_tilt if opt.refine_tilt is not None else (span >= opt.tilt_min_degrees and not electrons)
    obs = _observations(spots, hkl, ok)
    res = refine(experiment, obs, BRAVAIS[lattice], refine_distance=refine_distance, refine_axis=opt.refine_axis,
                 refine_tilt=refine_tilt, max_obs=opt.max_refine_obs)
    final = res.experiment
    rlps = rlps_from_spots(final.replace(crystal=None), spots)
    hkl, ok = assign_indices(final.crystal.A_matrix, rlps)
    result = dict(experiment=final, lattice=lattice, n_spots=n, n_indexed=int(ok.sum()), rmsd_x_px=res.rmsd_x_px,
                  rmsd_y_px=res.rmsd_y_px, rmsd_deg=res.rmsd_deg, bravais=previous.bravais if previous else (),
                  hkl=hkl, indexed_mask=ok, seconds=time.perf_counter() - t0,
                  max_cell_A=previous.max_cell_A if previous else None)
    frac = ok.mean() if n else 0.0
    if frac < opt.min_fraction_indexed:
        return IndexingResult(False, f"fraction indexed {frac:.2f} below {opt.min_fraction_indexed:.2f}", **result)
    if not res.rmsd_px <= opt.max_rmsd_px:
        return IndexingResult(False, f"rmsd {res.rmsd_px:.2f} px above {opt.max_rmsd_px:.2f}", **result)
    return IndexingResult(True, "", **result)
