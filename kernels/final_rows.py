"""The extended threshold's final test on frames with many core pixels: rolling column sums.

`kernels.dispersion_extended.extended_final_tiles` builds a summed-area table around each
group of core pixels: ~9 table cells per core pixel, each a few loads and a serial prefix
sum. When spots are dense (3000 per 4M frame: 126,000 core pixels) those tables cover a
third of the frame and take 4.6-7.4 ms; rolling sums take 3.0-3.4 ms. Here the window's
rows are summed once per row of the frame that a core pixel's window reaches, whole rows at
a time in 32-bit lanes: the background (valid, non-core) pixels of a row are packed as
(value << 4) + 1 into a ring of the window's 2 ky + 1 rows, and a column sum gains the
row entering and loses the row leaving. Each run of core pixels along a row then slides its
window along the column sums (two columns per pixel). Sums are integers, exact in any order,
so the results are `extended_final_tiles`'s bit for bit; which of the two is faster depends
on how many core pixels a row holds (`final_path`).
"""

from __future__ import annotations

import numpy as np

from kernels.dispersion_extended import _packing, _strong, final_screen
from kernels.jit import njit

COUNT_BITS = 4  # a column of up to 15 rows counts its background pixels in the low 4 bits
MAX_ROWS = 2**COUNT_BITS - 1  # 2 ky + 1 at most; values below 2**24 then sum below 2**32
FINAL_TESTS = ("auto", "tiles", "rows")  # what `final_path` may be asked for
CORE_FRACTION = 0.008  # core pixels over the pixels of the rows their windows reach, above which
# the rows are faster: measured on 4M frames with 400-3000 spots (0.004-0.03); real thaumatin 6M
# frames (0.0065-0.0087) take the same time either way


def row_bounds(image: np.ndarray, lower: float, upper: float, kx: int, ky: int) -> tuple | None:
    """(lo, hi) in the image's type for `final_rows`, or None where it does not apply: the
    valid values lo..hi of an integer image must lie in [0, 2**24) (`_packing`) and the
    window have at most MAX_ROWS rows."""
    packed = _packing(image.dtype.kind, image.shape, lower, upper, kx, ky)
    if packed is None or 2 * ky + 1 > MAX_ROWS:
        return None
    _, lo, hi = packed
    top = int(np.iinfo(image.dtype).max)
    if not 0 <= lo <= min(hi, top):
        return None
    return image.dtype.type(lo), image.dtype.type(min(hi, top))


@njit(boundscheck=False)
def rows_reached(core, nc, nx, ny, ky):
    """How many rows of the frame the windows (2 ky + 1 rows) of the core pixels (ascending) reach."""
    rows = 0
    bottom = 0  # rows above this one are counted
    row_end = np.int64(0)  # core pixels before this index lie in rows already seen
    for u in range(nc):
        p = np.int64(core[u])
        if p < row_end:
            continue
        j = p // nx
        row_end = (j + 1) * nx
        top = max(bottom, j - ky)
        end = min(ny, j + ky + 1)
        if end > top:
            rows += end - top
            bottom = end
    return rows


def final_path(image: np.ndarray, lower: float, upper: float, kx: int, ky: int, core: np.ndarray, nc: int,
               want: str = "auto") -> str:
    """"rows" (`extended_final_rows`) where it applies and the core pixels are dense along the
    rows their windows reach (each reached row costs a pass over its width, each core pixel
    ~9 table cells otherwise), else "tiles" (`extended_final_tiles`). `want` "tiles" or
    "rows" forces one where it applies."""
    if want not in FINAL_TESTS:
        raise ValueError(f"unknown final test {want!r}")
    if nc == 0 or want == "tiles" or row_bounds(image, lower, upper, kx, ky) is None:
        return "tiles"
    if want == "rows":
        return "rows"
    ny, nx = image.shape
    return "rows" if nc > CORE_FRACTION * nx * rows_reached(core, nc, nx, ny, ky) else "tiles"


def extended_final_rows(image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index):
    """`extended_final_tiles` by rolling column sums (`final_path` "rows"); out_index may be
    core (written in place, in order). Returns how many core pixels are strong."""
    lo, hi = row_bounds(image, lower, upper, kx, ky)
    return final_rows(image, mask, lo, hi, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index,
                      final_screen(nsig_s, gain))


@njit(boundscheck=False, inline="always")
def _background(v, flag, usable, lo, hi):
    """A pixel's packed contribution: (value << 4) + 1 if valid (lo..hi, usable) and not core, else 0."""
    w = np.uint32((flag != 2) & (usable != 0) & (v >= lo) & (v <= hi))
    return np.uint32(np.uint32(np.uint32(np.uint32(v) * w) << np.uint32(COUNT_BITS)) | w)


@njit(boundscheck=False, inline="always")
def _enter_row(image, mask, flag, r, lo, hi, ring_row, col):
    """ring_row = the packed background pixels of row r; col += ring_row."""
    pixels, usable, flags = image[r], mask[r], flag[r]
    for i in range(col.shape[0]):
        packed = _background(pixels[i], flags[i], usable[i], lo, hi)
        ring_row[i] = packed
        col[i] = np.uint32(col[i] + packed)


@njit(boundscheck=False, inline="always")
def _leave_row(ring_row, col):
    """col -= ring_row (the row leaving the window)."""
    for i in range(col.shape[0]):
        col[i] = np.uint32(col[i] - ring_row[i])


@njit(boundscheck=False, inline="always")
def _next_row(image, mask, flag, r, lo, hi, ring_row, col):
    """The window moves down a row: row r enters in the ring row of the row that leaves."""
    pixels, usable, flags = image[r], mask[r], flag[r]
    for i in range(col.shape[0]):
        packed = _background(pixels[i], flags[i], usable[i], lo, hi)
        col[i] = np.uint32(col[i] + np.uint32(packed - ring_row[i]))
        ring_row[i] = packed


@njit(boundscheck=False)
def final_rows(image, mask, lo, hi, kx, ky, nsig_s, gain, threshold, flag, core, nc, out_index, screen):
    """`extended_final_rows`'s compiled part: lo and hi from `row_bounds`."""
    ny, nx = image.shape
    height = 2 * ky + 1
    ring = np.zeros((height, nx), np.uint32)
    col = np.zeros(nx, np.uint32)
    low = np.uint32(MAX_ROWS)
    top, bottom = 0, 0  # col sums rows [top, bottom); ring[r % height] holds row r's pixels
    n = 0
    u = 0
    while u < nc:
        j = np.int64(core[u]) // nx
        want_top, want_bottom = max(0, j - ky), min(ny, j + ky + 1)
        if want_top >= bottom:  # no row in common with the last window: start afresh
            col[:] = 0
            top, bottom = want_top, want_top
        while top < want_top or bottom < want_bottom:
            if top < want_top and bottom < want_bottom and bottom - top == height:
                _next_row(image, mask, flag, bottom, lo, hi, ring[bottom % height], col)
                top += 1
                bottom += 1
            elif top < want_top:
                _leave_row(ring[top % height], col)
                top += 1
            else:
                _enter_row(image, mask, flag, bottom, lo, hi, ring[bottom % height], col)
                bottom += 1
        row_end = (j + 1) * nx
        while u < nc and core[u] < row_end:
            i = np.int64(core[u]) - j * nx
            m, x = np.int64(0), np.int64(0)
            for b in range(max(0, i - kx), min(nx, i + kx + 1)):
                c = col[b]
                m += np.int64(c & low)
                x += np.int64(c >> np.uint32(COUNT_BITS))
            while True:
                strong = _strong(np.float64(image[j, i]), np.float64(m), np.float64(x), nsig_s, gain,
                                 threshold, screen)
                out_index[n] = core[u]  # n <= u: in place over core is safe
                n += strong
                u += 1
                if u >= nc or core[u] != core[u - 1] + 1 or core[u] >= row_end:
                    break
                if i + kx + 1 < nx:  # slide one column right
                    c = col[i + kx + 1]
                    m += np.int64(c & low)
                    x += np.int64(c >> np.uint32(COUNT_BITS))
                if i - kx >= 0:
                    c = col[i - kx]
                    m -= np.int64(c & low)
                    x -= np.int64(c >> np.uint32(COUNT_BITS))
                i += 1
    return n
