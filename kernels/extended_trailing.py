"""The extended threshold in one pass down the frame: erosion and final test trail the packed pass.

Run one after the other, the packed pass (`kernels.dispersion_packed`), the erosion and the
final test (`kernels.dispersion_extended`) each go over the whole frame, and by the time the
final test reads the pixels around the core pixels, the pass has pushed them out of this
core's caches: on a sparse 4M frame the final test took 0.85-1.08 ms in flow against 0.40 ms
when its pixels are cached. Here the three go down the frame together, band of BAND_ROWS rows
by band: after the pass's band, its dispersed pixels are flagged and eroded, and the final
test takes the TILE-row bands of core pixels whose windows lie above the rows not yet final
(a core pixel is final `radius` rows above the last row eroded, the final window reaches
ky + 2 rows down). The final test then reads rows the pass decoded and read a few dozen rows
earlier. Each step is the same code on the same sorted lists as when run apart, so the
strong pixels, core pixels and flags are the same bit for bit.

Measured (find_spots per 4M frame, medians, 6 alternations in one process): 400 spots 7.76-7.95
ms against 8.04-8.20 ms apart; 1000 spots 10.1-10.9 against 11.1-12.4 and 3000 spots 19.0-20.4
against 19.9-20.8 with the rolling rows' final test (`kernels.final_rows`), which the frames
of the packed pass therefore no longer take.

The radial background sums (`kernels.radial.BandedRadial`) are taken here too, band by band,
once a band's dispersed pixels are flagged: its rows were read by the pass moments before.
"""

from __future__ import annotations

import numpy as np

from kernels.dispersion_extended import TILE, erode_bottom, erode_rows, final_bands, final_scratch
from kernels.dispersion_int import BAND_ROWS
from kernels.dispersion_packed import packed_band, packed_scratch, packed_start
from kernels.jit import njit
from kernels.radial import _sums_integer


@njit(boundscheck=False)
def trailing_pass(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count, dispersed, stats,
                  lo1, hs1, hi1, thr1, flagged, vq, alpha, beta, source, flag, core, radius, lo, hi, shift, screen,
                  final_scratch, radial, values):
    """The extended variant's packed pass (arguments as `packed_pass`'s, selecting the
    dispersed pixels into `dispersed`), erosion by `radius` (`erode_rows`, flags 1 and 2 in
    `flag`, which must be clear) and final test over windows of half-sizes kx + 2, ky + 2
    (`final_bands`: lo, hi, shift, screen as `_final_bands` takes them), band by band, and
    the radial sums of each band's segments over its pixels not flagged (`radial`:
    `BandedRadial.start`'s tuple, or `no_radial`'s for none). Returns (ok, dispersed,
    strong), the strong pixels in core[:strong] and their values (float64) in
    values[:strong], read after each band's final test while its pixels are cached (gathered
    after the pass, they cost 0.12 ms per sparse 4M frame); ok False if a block of the source is
    corrupt (then the flags are set at dispersed[:dispersed] only, the radial sums partial)."""
    ny, nx = image.shape
    flat = flag.reshape(-1)
    pixels = image.reshape(-1)
    starts, stops, seg_bins, bounds, n_windowed, window, radial_lo, radial_hi, sums, counts = radial
    scratch = packed_scratch(nx, ky)
    loud_windows = packed_start(image, mask, kx, ky, stats, lo1, hs1, hi1, flagged, vq, source, scratch)
    if loud_windows < 0:
        return False, 0, 0
    count = np.zeros(nx, np.int64)  # the erosion's counts down the columns
    last = np.full(nx, -2, np.int64)
    tiles = final_scratch[0]
    tiles[0, :], tiles[1, :], tiles[2, :], tiles[3, :] = ny, -1, nx, -1
    n, nc, c, ns = 0, 0, 0, 0
    for r0 in range(0, ny, BAND_ROWS):
        r1 = min(r0 + BAND_ROWS, ny)
        n0 = n
        n1, loud_windows = packed_band(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count,
                                       True, dispersed, stats, lo1, hs1, hi1, thr1, flagged, vq, alpha, beta, source,
                                       scratch, r0, r1, n, loud_windows)
        if n1 < 0:
            return False, n, 0
        n = n1
        for t in range(n0, n):
            flat[dispersed[t]] = 1
        b = r0 // BAND_ROWS  # the band's pixels are flagged now as after the whole pass (nonzero: dispersed)
        if b + 1 < bounds.shape[0]:
            _sums_integer(pixels, flat, starts, stops, seg_bins, radial_lo, radial_hi, window, n_windowed, sums,
                          counts, bounds[b], bounds[b + 1])
        nc = erode_rows(flat, count, last, dispersed, n0, n, nx, radius, core, nc)
        if r1 == ny:
            nc = erode_bottom(flat, count, last, ny, nx, radius, core, nc)
        ns0 = ns
        c, ns = final_bands(image, mask, lo, hi, kx + 2, ky + 2, nsig_s, gain, threshold, flag, core, c, nc, ns, core,
                            shift, screen, r1 - radius if r1 < ny else ny, final_scratch)
        for t in range(ns0, ns):
            values[t] = pixels[core[t]]
    stats[1] = -1  # valid and valid nonzero counts: on demand, as after `packed_pass`
    stats[2] = -1
    return True, n, ns


def trailing_scratch(shape: tuple[int, int], kx: int, ky: int) -> tuple:
    """`final_bands`'s scratch for `trailing_pass` on frames of `shape` (kx, ky: the final
    window's half-sizes): runs for the most a band can hold, TILE rows of (nx + 1) // 2."""
    ny, nx = shape
    return final_scratch(ny, nx, kx, ky, max(1, TILE * ((nx + 1) // 2)))
