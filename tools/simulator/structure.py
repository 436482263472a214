"""True intensities of reflections: a random structure with the space group's symmetry, or an MTZ.

Random structure (Wilson 1949 statistics): each unique reflection of the asymmetric unit gets
I = epsilon * Sigma(s) * X, with Sigma(s) = scale * exp(-2 B s^2), s = sin(theta)/lambda =
1/(2d), epsilon gemmi's epsilon factor, and X ~ Exp(1) for acentric reflections (|F|^2 of a
complex Gaussian F) or X ~ chi^2(1) for centric ones (F real Gaussian). Symmetry mates carry
the same value, systematic absences are zero. With `anomalous` the two Bijvoet halves of an
acentric reflection differ: I(+/-) = I (1 +/- delta), delta ~ N(0, anomalous) clipped to
(-0.9, 0.9); otherwise Friedel mates are equal.

Orbit keys: an index h is mapped to the largest integer key among {h R} over the point-group
operations (and, for the Friedel-equal case, also {-h R}); this names the orbit uniquely and
works for any space-group setting.
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

_OFFSET = 1024  # indices must lie in (-1024, 1024)


def _keys(hkl: np.ndarray) -> np.ndarray:
    h = np.asarray(hkl, dtype=np.int64) + _OFFSET
    return (h[:, 0] * 2048 + h[:, 1]) * 2048 + h[:, 2]


def orbit_keys(space_group: gemmi.SpaceGroup, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key of h's orbit under the point group, key of -h's orbit), each the max over the ops."""
    hkl = np.asarray(hkl, dtype=np.int64)
    plus = np.full(len(hkl), -1, dtype=np.int64)
    minus = np.full(len(hkl), -1, dtype=np.int64)
    for op in space_group.operations().sym_ops:
        rot = np.array(op.rot, dtype=np.int64) // gemmi.Op.DEN
        hr = hkl @ rot
        plus = np.maximum(plus, _keys(hr))
        minus = np.maximum(minus, _keys(-hr))
    return plus, minus


@dataclass(frozen=True)
class IntensityModel:
    """Intensities by orbit key: `keys` sorted, `i_plus`/`i_minus` the Bijvoet halves (equal without anomalous)."""

    space_group: str
    keys: np.ndarray
    i_plus: np.ndarray
    i_minus: np.ndarray

    def intensities(self, hkl: np.ndarray) -> np.ndarray:
        """I of each index (N, 3); 0 for systematic absences and indices not in the model."""
        sg = gemmi.SpaceGroup(self.space_group)
        hkl = np.asarray(hkl, dtype=np.int64)
        plus, minus = orbit_keys(sg, hkl)
        is_minus = minus > plus
        key = np.where(is_minus, minus, plus)
        pos = np.clip(np.searchsorted(self.keys, key), 0, max(len(self.keys) - 1, 0))
        found = self.keys[pos] == key if len(self.keys) else np.zeros(len(key), bool)
        out = np.where(is_minus, self.i_minus[pos], self.i_plus[pos]) if len(self.keys) else np.zeros(len(key))
        out = np.where(found, out, 0.0)
        absent = np.array(sg.operations().systematic_absences(hkl.astype(np.int32)), dtype=bool) if len(hkl) else []
        out[absent] = 0.0
        return out


def wilson_sigma(d: np.ndarray, b_factor: float, scale: float = 1.0) -> np.ndarray:
    """Mean intensity scale * exp(-2 B s^2) with s = 1/(2d) (A, A^2)."""
    s = 0.5 / np.asarray(d, dtype=np.float64)
    return scale * np.exp(-2.0 * b_factor * s * s)


def random_structure(hkl: np.ndarray, d: np.ndarray, space_group: str, b_factor: float, scale: float = 1.0,
                     anomalous: float = 0.0, rng: np.random.Generator | None = None) -> IntensityModel:
    """Random Wilson intensities for the orbits of `hkl` (any indices; their d-spacings `d`)."""
    rng = np.random.default_rng(0) if rng is None else rng
    sg = gemmi.SpaceGroup(space_group)
    ops = sg.operations()
    hkl = np.asarray(hkl, dtype=np.int64)
    plus, minus = orbit_keys(sg, hkl)
    key = np.maximum(plus, minus)
    keys, first = np.unique(key, return_index=True)
    rep = hkl[first].astype(np.int32)
    centric = np.array(ops.centric_flag_array(rep), dtype=bool)
    eps = np.array(ops.epsilon_factor_array(rep), dtype=np.float64)
    sigma = eps * wilson_sigma(d[first], b_factor, scale)
    x = np.where(centric, rng.standard_normal(len(keys)) ** 2, rng.exponential(1.0, len(keys)))
    intensity = sigma * x
    if anomalous > 0:
        delta = np.clip(rng.normal(0.0, anomalous, len(keys)), -0.9, 0.9)
        delta[centric] = 0.0
    else:
        delta = np.zeros(len(keys))
    return IntensityModel(sg.hm, keys, intensity * (1 + delta), intensity * (1 - delta))


def from_mtz(path: str, space_group: str | None = None) -> IntensityModel:
    """Intensities from an MTZ: I(+)/I(-) (K) or F(+)/F(-) (G) pairs, else a J (I) or F column (F^2)."""
    from streamer.errors import BadInput

    try:
        mtz = gemmi.read_mtz_file(str(path))
    except (RuntimeError, OSError, ValueError) as exc:
        raise BadInput(f"cannot read MTZ {path}: {exc}", reason="bad_mtz") from exc
    sg = gemmi.SpaceGroup(space_group) if space_group else mtz.spacegroup
    hkl = np.asarray(mtz.make_miller_array(), dtype=np.int64)
    types = {c.label: c.type for c in mtz.columns}

    def column(label: str) -> np.ndarray:
        return np.asarray(mtz.column_with_label(label), dtype=np.float64)

    def pair(kind: str) -> tuple[str, str] | None:
        labels = [lab for lab, t in types.items() if t == kind]
        ups = [lab for lab in labels if lab.endswith("(+)")]
        for up in ups:
            down = up[:-3] + "(-)"
            if down in labels:
                return up, down
        return None

    square = False
    if (p := pair("K")) or (p := pair("G")):
        square = types[p[0]] == "G"
        ip, im = column(p[0]), column(p[1])
        ip = np.where(np.isnan(ip), im, ip)
        im = np.where(np.isnan(im), ip, im)
    else:
        label = next((lab for lab, t in types.items() if t == "J"), None)
        if label is None:
            label = next((lab for lab, t in types.items() if t == "F"), None)
            square = True
        if label is None:
            raise BadInput(f"{path}: no intensity (J/K) or amplitude (F/G) column", reason="bad_mtz")
        ip = im = column(label)
    if square:
        ip, im = ip * ip, im * im
    good = np.isfinite(ip) & np.isfinite(im)
    hkl, ip, im = hkl[good], np.clip(ip[good], 0, None), np.clip(im[good], 0, None)
    plus, minus = orbit_keys(sg, hkl)
    # an MTZ lists the asymmetric unit: h's own orbit is I(+), its Friedel orbit I(-)
    keys = np.concatenate([plus, minus])
    values_p = np.concatenate([ip, im])
    values_m = np.concatenate([im, ip])
    keys, first = np.unique(keys, return_index=True)
    # one model keyed by max(plus, minus): store per canonical key which half it is
    canon_plus, canon_minus = orbit_keys(sg, _unkey(keys))
    canon = np.maximum(canon_plus, canon_minus)
    is_minus = canon_minus > canon_plus
    order = np.argsort(canon, kind="stable")
    canon, is_minus, vp, vm = canon[order], is_minus[order], values_p[first][order], values_m[first][order]
    ukeys, start = np.unique(canon, return_index=True)
    i_plus = np.where(is_minus[start], vm[start], vp[start])
    i_minus = np.where(is_minus[start], vp[start], vm[start])
    return IntensityModel(sg.hm, ukeys, i_plus, i_minus)


def _unkey(keys: np.ndarray) -> np.ndarray:
    l = keys % 2048
    k = (keys // 2048) % 2048
    h = keys // (2048 * 2048)
    return np.stack([h, k, l], axis=1) - _OFFSET
