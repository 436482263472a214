"""Candidate real-space lattice vectors from 1D FFTs of projections (Steller, Bolotovsky &
Rossmann 1997, J. Appl. Cryst. 30, 1036; the method of DIALS's fft1d and of DPS/MOSFLM).

Reciprocal-lattice points x (1/A) of a lattice with real-space vector t lie on planes t.x = n.
Projected onto a direction d parallel to t, their density is periodic with period 1/|t|; the
Fourier transform of the projected histogram then peaks at frequency index m = |t| * (range of
the projection). The strongest peaks over a hemisphere of directions give candidate vectors,
which are then refined by least squares on t.x = round(t.x) over all spots.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

_GOLDEN = (1.0 + 5.0**0.5) / 2.0


@dataclass(frozen=True)
class CandidateVectors:
    """Refined candidate real-space vectors (rows, A) with the fraction of spots they index."""

    vectors: np.ndarray  # (M, 3) A
    scores: np.ndarray  # (M,) fraction of spots with |t.x - round(t.x)| < tolerance

    def __len__(self) -> int:
        return len(self.vectors)


def hemisphere_directions(n: int) -> np.ndarray:
    """About `n` unit vectors spread evenly over the hemisphere z >= 0 (Fibonacci lattice)."""
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - i / n  # uniform in z over (0, 1] gives uniform area on the hemisphere
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    az = 2.0 * math.pi * i / _GOLDEN
    return np.column_stack([r * np.cos(az), r * np.sin(az), z])


def estimate_max_cell(rlps: np.ndarray, multiplier: float = 1.5) -> float:
    """Largest cell edge (A) to search, from nearest-neighbour distances in reciprocal space.

    Neighbouring reflections along the longest real axis are 1/a_max apart, so the most common
    nearest-neighbour distance gives a_max; the mode (on a log scale) resists split spots and
    side-lobe fragments, which make a small tail of very short distances (after DIALS's
    find_max_cell, which also bins nearest-neighbour distances).
    """
    from scipy.spatial import cKDTree

    if len(rlps) < 3:
        return 100.0
    dist, _ = cKDTree(rlps).query(rlps, k=2)
    nn = dist[:, 1]
    nn = nn[nn > 1e-5]  # the same reflection split over images
    if len(nn) == 0:
        return 100.0
    edges = np.geomspace(5.0, 2000.0, 301)  # 2 % bins of the real-space length 1/nn
    hist, _ = np.histogram(1.0 / nn, bins=edges)
    hist = np.convolve(hist, np.ones(5) / 5.0, mode="same")
    k = int(np.argmax(hist))
    mode = float(np.sqrt(edges[k] * edges[k + 1]))
    return float(np.clip(multiplier * mode, 10.0, 1000.0))


def _projection_peaks(x: np.ndarray, directions: np.ndarray, q_range: float, n_bins: int,
                      m_lo: int, m_hi: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Best peak prominence (in units of sqrt(N), the noise level) and its frequency per direction.

    The projected distribution's smooth envelope (the shape of the sampled wedge of reciprocal
    space, different for every direction) dominates the lowest frequencies; a lattice gives a
    peak one frequency bin wide. Prominence is the amplitude minus the mean of the amplitudes
    two bins either side, which removes the envelope's local trend.
    """
    prom = np.empty((len(directions), m_hi - m_lo + 1))
    scale = n_bins / (2.0 * q_range)
    for start in range(0, len(directions), chunk):
        d = directions[start:start + chunk]
        p = x @ d.T  # (N, nd)
        b = np.clip(((p + q_range) * scale).astype(np.int64), 0, n_bins - 1)
        b += (np.arange(len(d)) * n_bins)[None, :]
        hist = np.bincount(b.ravel(), minlength=len(d) * n_bins).reshape(len(d), n_bins)
        spec = np.abs(np.fft.rfft(hist, axis=1))
        m = np.arange(m_lo, m_hi + 1)
        prom[start:start + chunk] = spec[:, m] - 0.5 * (spec[:, m - 2] + spec[:, m + 2])
    k = np.argmax(prom, axis=1)
    return prom[np.arange(len(directions)), k] / math.sqrt(len(x)), k + m_lo


def phase_offset(vectors: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Per vector t, the fractional offset c (circular mean of t.x mod 1) so that t.x - c is
    nearest integers. A wrong beam centre shifts every reciprocal-lattice point by about the same
    vector; the projections keep their period but lose their origin, which c restores."""
    n = x @ np.atleast_2d(vectors).T
    z = np.exp(2j * np.pi * n).mean(axis=0)
    return np.angle(z) / (2.0 * np.pi)


def refine_vector(t: np.ndarray, x_low: np.ndarray, x_all: np.ndarray, tolerances=(0.25, 0.15, 0.1)) -> np.ndarray:
    """Least-squares refinement of a real-space vector t so that t.x is integral (DPS refinement):
    first on the low-resolution points, where an approximate t still rounds correctly, then on all.

    Refined twice, with the origin fixed and with a free origin offset c (t.x - c integral, for
    a wrong beam centre); the offset is kept only if it indexes clearly more points, because in
    a narrow wedge c and the length of t can trade against each other."""
    fixed = _refine(t, x_low, x_all, tolerances, free_origin=False)
    free = _refine(t, x_low, x_all, tolerances, free_origin=True)
    score = integral_fraction(np.array([fixed, free]), x_all)
    return free if score[1] > 1.2 * score[0] else fixed


def _refine(t: np.ndarray, x_low: np.ndarray, x_all: np.ndarray, tolerances, free_origin: bool) -> np.ndarray:
    for pts in (x_low, x_all):
        c = float(phase_offset(t, pts)[0]) if free_origin else 0.0
        design = np.column_stack([pts, -np.ones(len(pts))]) if free_origin else pts
        for tol in tolerances:
            n = pts @ t - c
            sel = np.abs(n - np.rint(n)) < tol
            if sel.sum() < 6:
                return t
            sol, *_ = np.linalg.lstsq(design[sel], np.rint(n[sel]), rcond=None)
            t = sol[:3]
            if free_origin:
                c = sol[3]
    return t


def integral_fraction(vectors: np.ndarray, x: np.ndarray, tolerance: float = 0.1) -> np.ndarray:
    """Fraction of points x with |t.x - c - round(t.x - c)| < tolerance for each row t of
    `vectors`, with c its phase offset (zero for a correct beam centre)."""
    n = x @ np.atleast_2d(vectors).T - phase_offset(vectors, x)[None, :]
    return np.mean(np.abs(n - np.rint(n)) < tolerance, axis=0)


def find_candidate_vectors(rlps: np.ndarray, max_cell_A: float, n_directions: int = 16000,
                           max_spots: int = 4000, n_peaks: int = 60, min_cell_A: float = 3.0,
                           seed: int = 0) -> CandidateVectors:
    """Candidate real-space vectors (A) of the lattice behind the reciprocal-lattice points.

    Directions are spaced ~sqrt(2 pi / n_directions) rad apart; only points with |x| below
    q_cut = 0.35 / (spacing * max_cell_A) enter the FFT so that a direction that misses a cell
    edge by half the spacing still keeps its projected planes within a third of a period.
    """
    x = np.asarray(rlps, dtype=np.float64)
    spacing = math.sqrt(2.0 * math.pi / n_directions)
    q_cut = 0.35 / (spacing * max_cell_A)
    qlen_all = np.linalg.norm(x, axis=1)
    low_all = qlen_all <= q_cut
    if low_all.sum() < min(200, len(x)):
        low_all = qlen_all <= np.sort(qlen_all)[min(200, len(x)) - 1]
    rng = np.random.default_rng(seed)
    x_low = x[low_all]
    if len(x_low) > max_spots:
        x_low = x_low[rng.choice(len(x_low), max_spots, replace=False)]
    if len(x) > max_spots:
        x = x[rng.choice(len(x), max_spots, replace=False)]
    qlen = np.linalg.norm(x_low, axis=1)
    low = slice(None)
    q_range = float(qlen[low].max()) * 1.0001
    m_hi = int(math.ceil(2.0 * q_range * max_cell_A))
    m_lo = max(3, int(math.floor(2.0 * q_range * min_cell_A)))
    m_hi = max(m_hi, m_lo + 1)
    n_bins = max(256, 1 << int(math.ceil(math.log2(4 * m_hi + 8))))
    directions = hemisphere_directions(n_directions)
    amp, freq = _projection_peaks(x_low, directions, q_range, n_bins, m_lo, m_hi)
    # local maxima over directions: the strongest first, suppressing neighbours within 3 spacings
    from scipy.spatial import cKDTree

    tree = cKDTree(np.vstack([directions, -directions]))
    order = np.argsort(-amp)
    taken = np.zeros(len(directions), dtype=bool)
    peaks = []
    for i in order:
        if taken[i]:
            continue
        peaks.append(i)
        near = np.asarray(tree.query_ball_point(directions[i], 3.0 * spacing)) % len(directions)
        taken[near] = True
        if len(peaks) >= n_peaks:
            break
    vectors = []
    for i in peaks:
        t0 = directions[i] * freq[i] / (2.0 * q_range)
        vectors.append(refine_vector(t0, x_low, x))
    vectors = np.array(vectors).reshape(-1, 3)
    length = np.linalg.norm(vectors, axis=1)
    ok = (length >= min_cell_A) & (length <= 1.2 * max_cell_A)
    vectors = vectors[ok]
    scores = integral_fraction(vectors, x)
    return _unique(vectors, scores)


def _unique(vectors: np.ndarray, scores: np.ndarray, angle_deg: float = 3.0, rel_len: float = 0.05) -> CandidateVectors:
    """Drop duplicates (parallel or antiparallel, same length) keeping the best-scoring one."""
    order = np.argsort(-scores)
    keep: list[int] = []
    cos_lim = math.cos(math.radians(angle_deg))
    for i in order:
        v = vectors[i]
        lv = np.linalg.norm(v)
        dup = False
        for j in keep:
            w = vectors[j]
            lw = np.linalg.norm(w)
            if abs(v @ w) / (lv * lw) > cos_lim and abs(lv - lw) < rel_len * max(lv, lw):
                dup = True
                break
        if not dup:
            keep.append(i)
    return CandidateVectors(vectors[keep], scores[keep])
