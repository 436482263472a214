"""The erosion and final test of DIALS's dispersion_extended threshold, on sparse lists.

The extended variant (DIALS 3.12's default) erodes the map of dispersed pixels: a pixel is
"core" if no non-dispersed pixel lies within Chebyshev distance min(kx, ky) - 1 (pixels
outside the image not counting). A core pixel is strong if v > global_threshold and v >=
mean + sigma_s sqrt(g mean), mean being that of the valid non-core pixels in the
(2*kx+5) x (2*ky+5) window (0 if fewer than 2). Dispersed pixels are a small fraction of a
frame, so both steps work from the passes' sorted lists and the sparse flag map: erosion
separably on row runs with running counts down the columns (`erode_runs`), the final test
of integer images from packed integer summed-area tables over the core pixels'
neighbourhoods (`extended_final_tiles`; `extended_final` slides windows in the order float
sums need).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

from kernels.jit import njit

BIG = float(1 << 24)  # DIALS leaves values at or above this out of the window sums
TILE = 32  # core pixels are grouped in bands of TILE rows, and within a band by TILE columns
MARGIN = 1e-9  # relative; far above the float rounding of the screens and of the final test


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
def _erode_run(flat, count, last, i0, i1, j, nx, radius, core_out, nc):
    """Columns i0..i1 of row j are row-eroded: extend the per-column counts of row-eroded
    pixels ending at row j (rows above the image counting, at most 2 radius + 1); where a
    count is full the pixel `radius` rows up is core (flag 2, appended to core_out)."""
    full = 2 * radius + 1
    up = radius * nx if j >= radius else 0  # a full count needs j >= radius
    start = 1 + (radius if j == 0 else 0)
    for i in range(i0, i1 + 1):
        c = min(count[i] * (last[i] == j - 1) + start, full)
        count[i] = c
        last[i] = j
        core = c == full
        q = j * nx + i - up * core  # not core: the pixel itself, already 1
        flat[q] = 1 + core
        core_out[nc] = q
        nc += core
    return nc


@njit(boundscheck=False)
def erode_runs(flag, index, n, radius, core_out):
    """The core pixels of an ascending (row-major) list of the dispersed pixels, separably: a
    pixel whose run of dispersed pixels along its row reaches `radius` columns either side
    (or the image edge) is row-eroded, then one with row-eroded pixels `radius` rows above
    and below (or the edge) is core. flag: 1 at index[:n] (not read); marks core 2; returns
    how many, ascending in core_out. One pass over the list (`erode_rows`), then the bottom
    `radius` rows (`erode_bottom`)."""
    ny, nx = flag.shape
    flat = flag.reshape(-1)
    count = np.zeros(nx, np.int64)
    last = np.full(nx, -2, np.int64)  # the row of count[i]
    nc = erode_rows(flat, count, last, index, 0, n, nx, radius, core_out, 0)
    return erode_bottom(flat, count, last, ny, nx, radius, core_out, nc)


@njit(boundscheck=False)
def erode_rows(flat, count, last, index, t0, t1, nx, radius, core_out, nc):
    """Erosion of the dispersed pixels index[t0:t1], whole rows of them (the first of a row
    at t0, the last at t1 - 1), after those of the rows above: run by run (a division per new
    row), with the counts down the columns (`count`, `last`: zeros and -2 before the first
    row) carried from call to call (`_erode_run`). After the rows up to j, the core pixels
    of the rows up to j - radius are in core_out[:nc]; returns nc."""
    s, prev, row, row_start, row_end = np.int64(-1), np.int64(-2), np.int64(-1), np.int64(0), np.int64(0)
    for t in range(t0, t1 + 1):
        p = np.int64(index[t]) if t < t1 else np.int64(-1)
        if (p != prev + 1) | (p >= row_end):
            if t > t0:
                a = s if s == row_start else s + radius
                b = prev if prev == row_end - 1 else prev - radius
                nc = _erode_run(flat, count, last, a - row_start, b - row_start, row, nx, radius, core_out, nc)
            if p >= row_end:
                row = p // nx
                row_start = row * nx
                row_end = row_start + nx
            s = p
        prev = p
    return nc


@njit(boundscheck=False)
def erode_bottom(flat, count, last, ny, nx, radius, core_out, nc):
    """The core pixels of the bottom `radius` rows, once `erode_rows` has seen every row:
    core if the last row's count reaches row j0 - radius (rows below the image counting)."""
    for j0 in range(max(0, ny - radius), ny):
        for i in range(nx):
            if (last[i] == ny - 1) & (count[i] >= ny + radius - j0):
                flat[j0 * nx + i] = 2
                core_out[nc] = j0 * nx + i
                nc += 1
    return nc


@intrinsic
def _prefetch(typingctx, array, i):
    """Hint that array.flat[i] will be read soon (llvm.prefetch: no wait, no fault)."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(builder.gep(data, [args[1]]), byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()
    return types.void(array, i), codegen


@njit(boundscheck=False)
def _strong(v, m, x, nsig_s, gain, threshold, screen):
    """The final test of a core pixel of value v, window count m and sum x. With `screen` (x >=
    0, nsig_s 0 or in [1e-30, 1e30], gain in [1e-30, 1e30]) most pixels are decided without
    the division and square root, from sqrt(y) <= (y + 1) / 2 (surely strong) and sqrt(y) >=
    min(y, 1) (surely not), by a margin far above the rounding of both sides; ties and the
    rest take the float64 test as written."""
    if screen and m >= 2.0:
        vm = v * m
        sure = vm >= (1.0 + MARGIN) * (x * (1.0 + 0.5 * nsig_s * gain) + 0.5 * nsig_s * m)
        never = vm < (1.0 - MARGIN) * (x + nsig_s * min(gain * x, m))
        if sure | never:
            return sure & (v > threshold)
    mean = x / m if m >= 2.0 else 0.0
    return (x >= 0.0) & (v > threshold) & (v >= mean + nsig_s * np.sqrt(gain * mean))


@njit(boundscheck=False)
def _band(core, c, nc, nx, ny, kx, ky, tiles, runs, groups, tile_group):
    """The band of TILE rows holding core[c]: its row runs (row, first column, first core
    index, length) in runs; in groups one table (first row, first column, width + 1, offset
    in the buffer, rows) per set of occupied TILE-column tiles whose windows touch, named by
    tile_group. tiles: scratch, (ny, -1, nx, -1) in and out. Returns (band end, runs,
    groups, buffer size)."""
    row = np.int64(core[c]) // nx
    row_end = (row + 1) * nx
    band_end = min(ny, (row // TILE + 1) * TILE) * nx
    nr = 0
    u = c
    while u < nc and core[u] < band_end:
        p = np.int64(core[u])
        if p >= row_end:
            row = p // nx
            row_end = (row + 1) * nx
        v = u + 1
        while v < nc and core[v] == p + (v - u) and core[v] < row_end:
            v += 1
        i0 = p - row * nx
        runs[nr, 0], runs[nr, 1], runs[nr, 2], runs[nr, 3] = row, i0, u, v - u
        nr += 1
        for t in range(i0 // TILE, (i0 + v - u - 1) // TILE + 1):
            tiles[0, t] = min(tiles[0, t], row)
            tiles[1, t] = row
            tiles[2, t] = min(tiles[2, t], max(i0, t * TILE))
            tiles[3, t] = max(tiles[3, t], min(i0 + v - u - 1, t * TILE + TILE - 1))
        u = v
    ng, size, t, ntx = 0, 0, 0, tiles.shape[1]
    while t < ntx:
        if tiles[1, t] < 0:
            t += 1
            continue
        g0, g1, h0, h1 = tiles[0, t], tiles[1, t], tiles[2, t], tiles[3, t]
        tile_group[t] = ng
        t += 1
        while t < ntx and (tiles[1, t] < 0 or tiles[2, t] - h1 <= 2 * kx + 1):
            if tiles[1, t] >= 0:
                g0, g1, h1 = min(g0, tiles[0, t]), max(g1, tiles[1, t]), tiles[3, t]
                tile_group[t] = ng
            t += 1
        r0, q0 = max(0, g0 - ky), max(0, h0 - kx)
        h, w = min(ny, g1 + ky + 1) - r0, min(nx, h1 + kx + 1) - q0
        groups[ng, 0], groups[ng, 1], groups[ng, 2], groups[ng, 3], groups[ng, 4] = r0, q0, w + 1, size, h
        size += (h + 1) * (w + 1)
        ng += 1
    tiles[0, :], tiles[1, :], tiles[2, :], tiles[3, :] = ny, -1, nx, -1
    return u, nr, ng, size


@njit(boundscheck=False)
def _prefetch_groups(image, mask, flag, groups, ng):
    """Prefetch the pixels the band's tables read (after the pass over the frame most are out
    of this core's caches, and a table reads them row after row)."""
    nx = image.shape[1]
    step = max(1, 64 // image.itemsize)
    for g in range(ng):
        r0, q0, w = groups[g, 0], groups[g, 1], groups[g, 2] - 1
        for p in range(r0 * nx + q0, (r0 + groups[g, 4]) * nx + q0, nx):
            for i in range(p, p + w, step):
                _prefetch(image, i)
            for q in (p, p + w - 1):
                _prefetch(image, q)
                _prefetch(flag, q)
                _prefetch(mask, q)


@njit(boundscheck=False)
def _packed_table(image, mask, lo, hi, flag, r0, r1, q0, q1, shift, sat, base, row_buf):
    """Summed-area table at sat[base:] of the valid (mask set, lo <= value <= hi) non-core
    pixels of rows [r0, r1) x columns [q0, q1), each adding (value << shift) + 1 (sum and
    count in one int64): sat[base + a w + b] covers rows r0..r0+a-1 x columns q0..q0+b-1,
    w = q1 - q0 + 1."""
    w = q1 - q0 + 1
    sat[base:base + w] = 0
    for a in range(r1 - r0):
        pixels = image[r0 + a, q0:q1]
        flags = flag[r0 + a, q0:q1]
        usable = mask[r0 + a, q0:q1]
        for b in range(q1 - q0):
            value = np.int64(pixels[b])
            ok = (flags[b] != 2) & (usable[b] != 0) & (value >= lo) & (value <= hi)
            row_buf[b] = ((value << shift) + 1) * ok
        previous = sat[base + a * w + 1:base + (a + 1) * w]
        current = sat[base + (a + 1) * w + 1:base + (a + 2) * w]
        sat[base + (a + 1) * w] = 0
        run = np.int64(0)
        for b in range(q1 - q0):
            run += row_buf[b]
            current[b] = previous[b] + run


@njit(boundscheck=False)
def _final_bands(image, mask, lo, hi, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index, shift, screen):
    """`extended_final_tiles` for integer images whose valid values lo..hi lie in [0, 2**24),
    band by band (`final_bands` on scratch of its own)."""
    ny, nx = image.shape
    _, n = final_bands(image, mask, lo, hi, kx, ky, nsig_s, gain, threshold, flag, core, 0, nc, 0, out_index, shift,
                       screen, ny, final_scratch(ny, nx, kx, ky, max(nc, 1)))
    return n


@njit
def final_scratch(ny, nx, kx, ky, max_runs):
    """Scratch of `final_bands` for a frame of ny x nx and windows of half-sizes kx, ky:
    tiles (cleared as `_band` wants them), runs (max_runs: at most the core pixels of a band,
    which never exceed TILE (nx + 1) // 2 runs), groups, tile_group, the tables' buffer and a row."""
    ntx = (nx + TILE - 1) // TILE
    tiles = np.empty((4, ntx), np.int64)
    tiles[0, :], tiles[1, :], tiles[2, :], tiles[3, :] = ny, -1, nx, -1
    ntx1 = max(ntx, 1)
    cells = (min(ny, TILE + 2 * ky) + 1) * (nx + ntx * (2 * kx + 2))
    return (tiles, np.empty((max_runs, 4), np.int64), np.empty((ntx1, 5), np.int64), np.empty(ntx1, np.int64),
            np.empty(max(cells, 4096), np.int64), np.empty(nx, np.int64))


@njit(boundscheck=False)
def final_bands(image, mask, lo, hi, kx, ky, nsig_s, gain, threshold, flag, core, c, nc, n, out_index, shift, screen,
                row_limit, scratch):
    """The final test of core[c:nc] (ascending), band of TILE rows by band (`_band`): one
    summed-area table per group of touching tiles, packed (value << shift) + 1 (`_packed_table`),
    then the core pixels' windows from their corners. Stops before a band whose windows reach
    row_limit or below (the flags there not final yet) unless row_limit >= ny. Strong pixels go
    to out_index[n:] (may be core itself: in place, in order). Returns (c, n) to carry on."""
    ny, nx = image.shape
    tiles, runs, groups, tile_group, sat, row_buf = scratch
    low = (np.int64(1) << shift) - 1
    while c < nc:
        band_end = min(ny, (np.int64(core[c]) // nx // TILE + 1) * TILE)
        if row_limit < ny and band_end + ky > row_limit:
            break
        c, nr, ng, size = _band(core, c, nc, nx, ny, kx, ky, tiles, runs, groups, tile_group)
        _prefetch_groups(image, mask, flag, groups, ng)
        if size > sat.shape[0]:  # never with `final_scratch`'s bound; the tables are written unchecked
            sat = np.empty(2 * size, np.int64)
        for g in range(ng):
            r0, q0, w1, base, h = groups[g, 0], groups[g, 1], groups[g, 2], groups[g, 3], groups[g, 4]
            _packed_table(image, mask, lo, hi, flag, r0, r0 + h, q0, q0 + w1 - 1, shift, sat, base, row_buf)
        for k in range(nr):
            j, i0, u0, length = runs[k, 0], runs[k, 1], runs[k, 2], runs[k, 3]
            g = tile_group[i0 // TILE]
            r0, q0, w1, base = groups[g, 0], groups[g, 1], groups[g, 2], groups[g, 3]
            a0, a1 = base + (max(0, j - ky) - r0) * w1, base + (min(ny, j + ky + 1) - r0) * w1
            for d in range(length):
                i = i0 + d
                b0, b1 = max(0, i - kx) - q0, min(nx, i + kx + 1) - q0
                s = sat[a1 + b1] - sat[a0 + b1] - sat[a1 + b0] + sat[a0 + b0]
                strong = _strong(np.float64(image[j, i]), np.float64(s & low), np.float64(s >> shift), nsig_s, gain,
                                 threshold, screen)
                out_index[n] = core[u0 + d]  # n <= u0 + d: in place over core is safe
                n += strong
    return c, n


@functools.lru_cache(maxsize=64)  # per series, asked per frame
def _packing(kind, shape, lower, upper, kx, ky):
    """(shift, lo, hi) for `_final_bands`, or None, for images of dtype kind `kind` and `shape`:
    integer images with valid values (lower < v < upper, v < 2**24) lo..hi in [0, 2**24)
    (lower >= -1), tables of (value << shift) + 1 (shift: bits of the window's pixel count)
    below 2**62 over a band's widest group."""
    if kind not in "iu" or not lower >= -1.0:
        return None
    ny, nx = shape
    shift = ((2 * int(kx) + 1) * (2 * int(ky) + 1)).bit_length()
    if min(ny, TILE + 2 * ky) * nx >= 2 ** (62 - 24 - shift):
        return None
    lo = int(math.floor(min(lower, BIG))) + 1
    top = min(upper, BIG) if upper == upper else 0.0
    hi = int(math.ceil(max(top, 0.0))) - 1
    return shift, lo, hi


def extended_final_tiles(image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index):
    """`extended_final` with the window sums taken from summed-area tables over the core
    pixels' neighbourhoods (spots are compact: ~7 table cells per core pixel instead of a
    window each), for integer images; out_index may be core (written in place, in order).
    Integer sums are exact in any order, so the results are `extended_final`'s; other
    images (floats, lower < -1, huge windows) take `extended_final` itself."""
    packed = _packing(image.dtype.kind, image.shape, lower, upper, kx, ky)
    if packed is None:
        return extended_final(image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index)
    shift, lo, hi = packed
    return _final_bands(image, mask, np.int64(lo), np.int64(hi), kx, ky, nsig_s, gain, threshold, flag, core, nc,
                        out_index, shift, final_screen(nsig_s, gain))


def final_screen(nsig_s: float, gain: float) -> bool:
    """Whether `_strong` may decide pixels by its screen (parameters in the range its margins hold for)."""
    return (nsig_s == 0.0 or 1e-30 <= nsig_s <= 1e30) and 1e-30 <= gain <= 1e30
