"""The erosion and final test of DIALS's dispersion_extended threshold, on sparse lists.

The extended variant (DIALS 3.12's default) erodes the map of dispersed pixels: a pixel is
"core" if no non-dispersed pixel lies within Chebyshev distance min(kx, ky) - 1 (pixels
outside the image not counting). A core pixel is strong if v > global_threshold and v >=
mean + sigma_s sqrt(g mean), mean being that of the valid non-core pixels in the
(2*kx+5) x (2*ky+5) window (0 if fewer than 2). Dispersed pixels are a small fraction of a
frame, so both steps work from the passes' sorted lists and the sparse flag map: erosion
separably along runs (`erode_runs`), the final test from summed-area tables over the core
pixels' neighbourhoods (`extended_final_tiles`; `extended_final` slides windows in the order
float sums need).
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit

BIG = float(1 << 24)  # DIALS leaves values at or above this out of the window sums


@njit(boundscheck=False)
def gather_row(sel, sel_words, nx, base, out_index, n):
    """Append base + i for every sel[i] != 0 (i < nx) to out_index, skipping all-zero 8-byte
    words; returns the new count."""
    for w in range(sel_words.shape[0]):
        if sel_words[w] == 0:
            continue
        for i in range(w * 8, min(w * 8 + 8, nx)):
            if sel[i]:
                out_index[n] = base + i
                n += 1
    return n


@njit(boundscheck=False)
def _background_column(image, mask, lower, upper, flag, i, j0, j1):
    """(count, sum) of the valid, non-core pixels of column i in rows [j0, j1)."""
    m = 0.0
    x = 0.0
    if i < 0 or i >= image.shape[1]:
        return m, x
    for jj in range(j0, j1):
        w = np.float64(image[jj, i])
        ok = (flag[jj, i] != 2) & (mask[jj, i] != 0) & (w > lower) & (w < upper) & (w < BIG)
        m += ok
        x += w * ok
    return m, x


@njit(boundscheck=False)
def extended_final(image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index):
    """Strong test of the extended variant at core pixels against the mean of the valid
    non-core pixels in the widened window; returns the number of strong pixels. Along a run
    of consecutive core pixels the window slides by one column (two column sums per step)."""
    ny, nx = image.shape
    n = 0
    m = 0.0
    x = 0.0
    previous = -2
    for t in range(nc):
        p = core[t]
        j = p // nx
        i = p - j * nx
        j0 = max(j - ky, 0)
        j1 = min(j + ky + 1, ny)
        if p == previous + 1 and i > 0:
            m_out, x_out = _background_column(image, mask, lower, upper, flag, i - kx - 1, j0, j1)
            m_in, x_in = _background_column(image, mask, lower, upper, flag, i + kx, j0, j1)
            m += m_in - m_out
            x += x_in - x_out
        else:
            m = 0.0
            x = 0.0
            for ii in range(max(i - kx, 0), min(i + kx + 1, nx)):
                mc, xc = _background_column(image, mask, lower, upper, flag, ii, j0, j1)
                m += mc
                x += xc
        previous = p
        v = np.float64(image[j, i])
        mean = x / m if m >= 2.0 else 0.0
        if (x >= 0.0) & (v > threshold) & (v >= mean + nsig_s * np.sqrt(gain * mean)):
            out_index[n] = p
            n += 1
    return n


@njit(boundscheck=False)
def set_flags(flag, index, n, value):
    """flag.flat[index[:n]] = value (the flag map is kept sparse between frames)."""
    flat = flag.reshape(-1)
    for t in range(n):
        flat[index[t]] = value


@njit(boundscheck=False)
def erode_runs(flag, index, n, radius, core_out):
    """The core pixels of an ascending (row-major) list of the dispersed pixels, separably: a
    pixel whose run of dispersed pixels along its row reaches `radius` columns either side
    (or the image edge) is marked 3, then one with such pixels `radius` rows above and below
    (or the edge) is core. Marks core 2 (the others back to 1); returns how many."""
    ny, nx = flag.shape
    flat = flag.reshape(-1)
    t = 0
    while t < n:
        s = t
        while t + 1 < n and index[t + 1] == index[t] + 1 and index[t + 1] % nx != 0:
            t += 1
        j = index[s] // nx
        c0 = index[s] - j * nx
        c1 = index[t] - j * nx
        for u in range(s, t + 1):
            i = index[u] - j * nx
            if (max(0, i - radius) >= c0) & (min(nx - 1, i + radius) <= c1):
                flat[index[u]] = 3
        t += 1
    nc = 0
    for u in range(n):
        p = index[u]
        if flat[p] != 3:
            continue
        j = p // nx
        i = p - j * nx
        core = True
        for jj in range(max(0, j - radius), min(ny, j + radius + 1)):
            if flat[jj * nx + i] < 3:
                core = False
                break
        if core:
            core_out[nc] = p
            nc += 1
    for u in range(n):
        if flat[index[u]] == 3:
            flat[index[u]] = 1
    for c in range(nc):
        flat[core_out[c]] = 2
    return nc


TILE = 32


@njit(boundscheck=False)
def extended_final_tiles(image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index):
    """`extended_final` with the window sums taken from summed-area tables: the core pixels
    are bucketed into TILE x TILE tiles and each tile's table covers only the bounding box of
    its core pixels widened by the window (spots are compact, so a few hundred pixels per
    spot instead of a full window per pixel). Same results (integer sums are exact in any
    order); out_index may be core (written in place, in order)."""
    ny, nx = image.shape
    nty = (ny + TILE - 1) // TILE
    ntx = (nx + TILE - 1) // TILE
    start = np.zeros(nty * ntx + 1, np.int64)
    for c in range(nc):
        p = core[c]
        j = p // nx
        i = p - j * nx
        start[(j // TILE) * ntx + i // TILE + 1] += 1
    for t in range(nty * ntx):
        start[t + 1] += start[t]
    fill = start[:-1].copy()
    order = np.empty(nc, np.int64)
    for c in range(nc):
        p = core[c]
        j = p // nx
        i = p - j * nx
        t = (j // TILE) * ntx + i // TILE
        order[fill[t]] = c
        fill[t] += 1
    keep = np.zeros(nc, np.uint8)
    h = TILE + 2 * ky + 1
    w = TILE + 2 * kx + 1
    sat_m = np.zeros((h + 1, w + 1), np.int64)
    sat_x = np.zeros((h + 1, w + 1), np.float64)
    for t in range(nty * ntx):
        if start[t + 1] == start[t]:
            continue
        jmin = ny
        jmax = -1
        imin = nx
        imax = -1
        for u in range(start[t], start[t + 1]):
            p = core[order[u]]
            j = p // nx
            i = p - j * nx
            jmin = min(jmin, j)
            jmax = max(jmax, j)
            imin = min(imin, i)
            imax = max(imax, i)
        r0 = max(0, jmin - ky)
        r1 = min(ny, jmax + ky + 1)
        q0 = max(0, imin - kx)
        q1 = min(nx, imax + kx + 1)
        for a in range(r1 - r0):
            row_m = 0
            row_x = 0.0
            for b in range(q1 - q0):
                jj = r0 + a
                ii = q0 + b
                v = np.float64(image[jj, ii])
                ok = (flag[jj, ii] != 2) & (mask[jj, ii] != 0) & (v > lower) & (v < upper) & (v < BIG)
                row_m += ok
                row_x += v * ok
                sat_m[a + 1, b + 1] = sat_m[a, b + 1] + row_m
                sat_x[a + 1, b + 1] = sat_x[a, b + 1] + row_x
        for u in range(start[t], start[t + 1]):
            c = order[u]
            p = core[c]
            j = p // nx
            i = p - j * nx
            a0 = max(0, j - ky) - r0
            a1 = min(ny, j + ky + 1) - r0
            b0 = max(0, i - kx) - q0
            b1 = min(nx, i + kx + 1) - q0
            m = np.float64(sat_m[a1, b1] - sat_m[a0, b1] - sat_m[a1, b0] + sat_m[a0, b0])
            x = sat_x[a1, b1] - sat_x[a0, b1] - sat_x[a1, b0] + sat_x[a0, b0]
            v = np.float64(image[j, i])
            mean = x / m if m >= 2.0 else 0.0
            keep[c] = (x >= 0.0) & (v > threshold) & (v >= mean + nsig_s * np.sqrt(gain * mean))
    n = 0
    for c in range(nc):
        if keep[c]:
            out_index[n] = core[c]
            n += 1
    return n
