"""Choice of three non-coplanar candidate vectors that index the most spots, smallest cell first
(the basis selection of DIALS's fft1d/real-space-grid search, simplified)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from streamer.indexing.fft1d import CandidateVectors


def choose_basis(candidates: CandidateVectors, rlps: np.ndarray, n_best: int = 20, tolerance: float = 0.15,
                 keep_fraction: float = 0.85, min_angle_deg: float = 15.0) -> np.ndarray | None:
    """Real-space basis (rows a, b, c in A, right-handed) or None if no non-coplanar triple exists.

    Every triple of the `n_best` best-scoring candidates is scored by the number of points whose
    three indices t_i.x are all within `tolerance` of integers; among triples within
    `keep_fraction` of the best count, the one with the smallest cell volume wins (this rejects
    supercells, which index the same points with a larger volume).
    """
    if len(candidates) < 3 or len(rlps) == 0:
        return None
    order = np.argsort(-candidates.scores)[:n_best]
    vec = candidates.vectors[order]
    from streamer.indexing.fft1d import phase_offset

    n = rlps @ vec.T - phase_offset(vec, rlps)[None, :]
    good = np.abs(n - np.rint(n)) < tolerance  # (N, M)
    unit = vec / np.linalg.norm(vec, axis=1)[:, None]
    sin_min = math.sin(math.radians(min_angle_deg))
    best: list[tuple[int, float, tuple[int, int, int]]] = []
    for i, j, k in itertools.combinations(range(len(vec)), 3):
        cross = np.cross(unit[i], unit[j])
        if np.linalg.norm(cross) < sin_min:
            continue
        if abs(cross @ unit[k]) / np.linalg.norm(cross) < sin_min:
            continue
        count = int(np.count_nonzero(good[:, i] & good[:, j] & good[:, k]))
        volume = abs(np.linalg.det(vec[[i, j, k]]))
        best.append((count, volume, (i, j, k)))
    if not best:
        return None
    top = max(b[0] for b in best)
    if top == 0:
        return None
    chosen = min((b for b in best if b[0] >= keep_fraction * top), key=lambda b: b[1])
    basis = vec[list(chosen[2])]
    if np.linalg.det(basis) < 0:
        basis = -basis
    return basis
