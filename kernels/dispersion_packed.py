"""The quiet-frame pass of the dispersion thresholds: one packed 32-bit column sum.

The quiet pixels of each row entering the window are packed into one uint32 column sum
(`kernels.packed_sums`), so a rolling column sum and one window sum give the exact count, sum
and sum of squares of a window's quiet pixels. Invalid pixels add nothing (they are not
counted, as in DIALS). The few "loud" pixels (summed, value above the quiet bound) are
listed per row as they enter; their exact sums are added to the loud sums of the windows
within reach as the row enters and taken off as it leaves (`_loud_windows`). The float32
screens of `kernels.packed_sums` leave about one pixel in a hundred, on which the float64
reference test (`kernels.dispersion_tests.selected64`) runs on the exact sums: results are
the reference's bit for bit. The quiet screen passes every window holding a loud pixel,
unless the row has many of those (over `LOUD_SCREEN`, counted as the loud sums change): then
the screen reads the whole sums (`_candidates_7_loud`; a background of 14-16 photons:
6.6-13.9 -> 4.1-6.3 ms per 4M frame). Frames with more loud pixels (backgrounds of 17
photons and more) take the three-sum pass (`kernels.dispersion_int.banded_pass`), chosen by
`loud_fraction`.
"""

from __future__ import annotations

import numpy as np

from kernels.bit_flags import GATHER_BITS, LOW_BITS, gather_flags, lowest_bit
from kernels.bslz4_native import ELEM_SIZE, N_BLOCKS, decode_upto
from kernels.dispersion_int import BAND_ROWS, _touch_both
from kernels.dispersion_tests import selected64
from kernels.jit import njit
from kernels.packed_sums import X_BITS, Y_SHIFT, _candidates_7_loud, _candidates_row, _packed, _possible

DENSE_LOUD = 16  # rows with more than 1 in DENSE_LOUD pixels above the quiet bound sort them vectorised
LOUD_SCREEN = 128  # rows with more windows holding loud pixels screen the whole sums (`_candidates_7_loud`);
# rows with a few spots (whose loud windows are mostly dispersed anyway) keep the cheaper quiet screen


@njit(boundscheck=False)
def loud_fraction(image, mask, lo1, vq, hs1, row_step):
    """Fraction of the sampled rows' usable pixels that are loud (summed, above vq)."""
    ny, nx = image.shape
    loud = 0
    total = 0
    for j in range(0, ny, row_step):
        row = image[j]
        mrow = mask[j]
        for i in range(nx):
            v = row[i]
            usable = mrow[i] != 0
            loud += np.int32(usable & (v > vq) & (v >= lo1) & (v <= hs1))
            total += np.int32(usable)
    return loud / max(total, 1)


@njit(boundscheck=False, inline="always")
def _update_packed(image, mask, enter, lo1, vq, hs1, hi1, flagged, col, packed_in, packed_out, loud):
    """col += packed(row enter) - packed_out (the packed values of the row leaving, kept from
    when it entered; zeros while no row leaves); the entering row's packed values go to
    packed_in, and loud (uint8) flags its pixels above the quiet bound (usable, above vq, not
    the detector's `flagged` value), which `_list_loud` sorts into loud (summed) pixels and
    overloads (above hi1). One comparison more here, not the five that would sort them: the
    flagged pixels are a few in a hundred (measured: the row loop 2.0-2.1 -> 1.6-1.7 ms per
    4M frame), and the `flagged` test keeps a frame's gap pixels (260,000 per 4M frame when
    no mask came) out of the list. hs1 and hi1 are `_list_loud`'s. enter -1: only the
    leaving row is removed."""
    nx = col.shape[0]
    if enter >= 0:
        rin = image[enter]
        min_ = mask[enter]
        for i in range(nx):
            v = rin[i]
            usable = min_[i] != 0
            loud[i] = np.uint8(usable & (v > vq) & (v != flagged))
            pv = _packed(v, usable, lo1, vq)
            packed_in[i] = pv
            col[i] = np.uint32(col[i] + np.uint32(pv - packed_out[i]))
    else:
        for i in range(nx):
            col[i] = np.uint32(col[i] - packed_out[i])


@njit(boundscheck=False, inline="always")
def _list_loud(image, mask, j, lo1, vq, hs1, hi1, flagged, loud_words, loud_bits, ring_cols, ring_vals, slot, stats):
    """The loud pixels of row j (flagged in loud_words by `_update_packed`, and summed: lo1
    <= value <= hs1) listed by column and value in ring slot `slot`, its overloads (above
    hi1) counted into stats[0]; returns how many are listed. loud_bits: a scratch for the
    flags gathered as bits. A row with many flagged pixels (a saturated streak, a dense
    powder ring) is sorted by a vectorised loop first, so that few go one by one. (2D arrays
    and indices, not row views: a view costs reference counting, per row.)"""
    nx = image.shape[1]
    flagged_pixels = np.uint64(0)
    for w in range(loud_words.shape[0]):
        word = loud_words[w]
        loud_bits[w] = np.uint8((word * GATHER_BITS) >> np.uint64(56))
        flagged_pixels += (word * LOW_BITS) >> np.uint64(56)  # the bytes' sum
    if flagged_pixels > np.uint64(nx // DENSE_LOUD):
        overloads = _sort_loud_row(image, mask, j, lo1, vq, hs1, hi1, flagged, loud_words, loud_bits)
        stats[0] += overloads
        dense = True
    else:
        dense = False
    bit_words = loud_bits.view(np.uint64)
    n = 0
    for q in range(bit_words.shape[0]):
        word = bit_words[q]
        while word != 0:
            i = q * 64 + lowest_bit(word)
            word &= word - np.uint64(1)
            v = image[j, i]
            if dense or ((v >= lo1) & (v <= hs1)):
                ring_cols[slot, n] = i
                ring_vals[slot, n] = np.int32(v)
                n += 1
            else:
                stats[0] += np.int64(v > hi1)
    return n


@njit(boundscheck=False, inline="always")
def _sort_loud_row(image, mask, j, lo1, vq, hs1, hi1, flagged, loud_words, loud_bits):
    """`_list_loud`'s vectorised sorting of a row with many flagged pixels: loud_bits
    regathered from its loud (summed) pixels only; returns the count of its overloads."""
    loud = loud_words.view(np.uint8)
    overloads = 0
    for i in range(image.shape[1]):
        v = image[j, i]
        usable = mask[j, i] != 0
        loud[i] = np.uint8(usable & (v > vq) & (v >= lo1) & (v <= hs1))
        overloads += np.int32(usable & (v > hi1) & (v != flagged))
    gather_flags(loud_words, loud_bits)
    return overloads


@njit(boundscheck=False, inline="always")
def _loud_windows(ring_cols, ring_vals, slot, n, sign, kx, dm, dx, dy):
    """Add (sign 1) or remove (sign -1) one row's listed loud pixels (ring slot `slot`) to the
    loud sums (count dm, sum dx, square dy, all exact integers) of every window within kx
    columns of them: kept up to date as rows enter and leave the window, not rebuilt per row.
    Returns the change in the number of windows with loud pixels."""
    nx = dm.shape[0]
    change = 0
    for t in range(n):
        i = ring_cols[slot, t]
        v = np.int64(ring_vals[slot, t])
        x = np.int32(sign * v)
        y = sign * v * v
        for c in range(max(0, i - kx), min(nx, i + kx + 1)):
            before = dm[c]
            dm[c] = before + sign
            dx[c] += x
            dy[c] += y
            change += np.int64(before + sign != 0) - np.int64(before != 0)
    return change


@njit(boundscheck=False, inline="always")
def _exact(image, mask, j, i, p, dm, dx, dy, lower, upper, nb2, ns2, gain, threshold, min_count, dispersion_only):
    """The float64 reference test of pixel (j, i) whose window holds the packed quiet sums p
    and the loud corrections dm, dx, dy at i (all exact)."""
    m = np.float64(np.int64((p >> X_BITS) & 63) + dm[i])
    x = np.float64(np.int64(p & 2047) + dx[i])
    y = np.float64(np.int64(p >> Y_SHIFT) + dy[i])
    v = np.float64(image[j, i])
    ok = (mask[j, i] != 0) & (v > lower) & (v < upper)
    return selected64(v, ok, m, x, y, nb2, ns2, gain, threshold, min_count, dispersion_only)


@njit(boundscheck=False)
def packed_pass(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count, dispersion_only,
                out_index, stats, lo1, hs1, hi1, thr1, flagged, vq, alpha, beta, source):
    """The selected pixels (dispersion_only: dispersed; else strong) as ascending flat
    indices in out_index; returns how many. lower/upper: the trusted range (open);
    lo1/hs1/hi1/thr1: inclusive valid, summed, valid and global-threshold bounds in the
    image's type; flagged: a value above hi1 that is not an overload (the detector's flag of
    inactive pixels; else 0); vq: `quiet_value` of the window, at most hs1; alpha, beta:
    `candidate_bounds`. stats (int64 [overloads, valid, valid nonzero, loud]) is added to.
    source: a band source (`kernels.bslz4_native`) that fills the image's rows just before
    the pass reads them (none left: the image is decoded); returns -1 if a block of it is
    corrupt. Allocates the row scratch; `_packed_rows` does the pass."""
    scratch = packed_scratch(image.shape[1], ky)
    return _packed_rows(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count,
                        dispersion_only, out_index, stats, lo1, hs1, hi1, thr1, flagged, vq, alpha, beta, source,
                        scratch)


@njit
def packed_scratch(nx, ky):
    """The pass's row scratch for rows of nx pixels and windows of 2 ky + 1 rows, cleared."""
    n_words = (nx + 7) // 8
    period = 2 * ky + 1
    return (np.zeros(n_words * 8, np.uint8),  # sel: the candidates of the row, a byte each
            np.zeros(n_words * 8, np.uint8),  # loud: the entering row's loud / overload flags
            np.zeros((n_words + 7) // 8 * 8, np.uint8),  # sel or loud gathered, a bit per pixel (`gather_flags`)
            np.zeros(nx, np.uint32),  # col: the packed column sums
            np.zeros(nx, np.uint32),  # wsum_px: packed window sums by pixel column
            np.zeros(nx, np.int32),  # dm, dx, dy: loud pixels in the window of each pixel of the
            np.zeros(nx, np.int32),  # row: count, sum (< 63 * 2**24)
            np.zeros(nx, np.int64),  # and sum of squares
            np.zeros((period, nx), np.int32),  # ring_cols, ring_vals, ring_n: the loud pixels
            np.zeros((period, nx), np.int32),  # listed per row of the window
            np.zeros(period, np.int64),
            np.zeros((period + 1, nx), np.uint32),  # ring_packed: the packed values of its rows
            np.zeros(nx, np.uint32))  # no_row: what the top rows' windows lose: nothing


@njit(boundscheck=False, _nrt=False)
def _packed_rows(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count, dispersion_only,
                 out_index, stats, lo1, hs1, hi1, thr1, flagged, vq, alpha, beta, source, scratch):
    """`packed_pass` on its scratch arrays: `packed_start`, then `packed_band` band by band."""
    ny = image.shape[0]
    loud_windows = packed_start(image, mask, kx, ky, stats, lo1, hs1, hi1, flagged, vq, source, scratch)
    if loud_windows < 0:
        return -1
    n = 0
    for r0 in range(0, ny, BAND_ROWS):
        n, loud_windows = packed_band(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count,
                                      dispersion_only, out_index, stats, lo1, hs1, hi1, thr1, flagged, vq, alpha,
                                      beta, source, scratch, r0, min(r0 + BAND_ROWS, ny), n, loud_windows)
        if n < 0:
            return -1
    stats[1] = -1  # valid and valid nonzero counts: on demand (`count_valid`)
    stats[2] = -1
    return n


@njit(boundscheck=False, _nrt=False)
def packed_start(image, mask, kx, ky, stats, lo1, hs1, hi1, flagged, vq, source, scratch):
    """Start a pass on the cleared scratch of `packed_pass`: the first ky rows decoded (when
    fused) and entered into the window; returns the count of windows with loud pixels that
    `packed_band` carries on, or -1 if a block is corrupt."""
    ny = image.shape[0]
    sel, loud, flag_bits, col, wsum_px, dm, dx, dy, ring_cols, ring_vals, ring_n, ring_packed, no_row = scratch
    src, dst, block_scratch, functions, state = source
    if state[N_BLOCKS] > 0 and not decode_upto(src, dst, block_scratch, functions, state,
                                               min(ky, ny) * image.shape[1] * state[ELEM_SIZE]):
        return -1
    loud_words = loud.view(np.uint64)
    period = ring_n.shape[0]  # 2 * ky + 1 rows of loud pixels
    loud_windows = 0
    for j in range(0, min(ky, ny)):
        s = j % period
        _update_packed(image, mask, j, lo1, vq, hs1, hi1, flagged, col, ring_packed[j % (period + 1)], no_row, loud)
        ring_n[s] = _list_loud(image, mask, j, lo1, vq, hs1, hi1, flagged, loud_words, flag_bits, ring_cols,
                               ring_vals, s, stats)
        stats[3] += ring_n[s]
        loud_windows += _loud_windows(ring_cols, ring_vals, s, ring_n[s], 1, kx, dm, dx, dy)
    return loud_windows


@njit(boundscheck=False, _nrt=False)
def packed_band(image, mask, lower, upper, kx, ky, nsig_b, nsig_s, gain, threshold, min_count, dispersion_only,
                out_index, stats, lo1, hs1, hi1, thr1, flagged, vq, alpha, beta, source, scratch, r0, r1, n,
                loud_windows):
    """Rows [r0, r1) of the pass (after `packed_start` and the rows above), the rows they
    need decoded first when fused: the selected pixels appended to out_index[n:]. Returns
    (n, loud_windows) carried on, n -1 if a block is corrupt. Compiled without numba's
    reference counting (`_nrt=False`: it allocates nothing). Every row view and every array
    handed to an inlined helper would otherwise cost an atomic increment and decrement, ~50
    per row, each a barrier to the stream of loads and stores: 10% of the profile samples of
    a 4M frame's find_spots, though most of that stall moves elsewhere without them
    (measured: 5.71 against 5.83 ms per frame, 8 alternations)."""
    ny, nx = image.shape
    sel, loud, flag_bits, col, wsum_px, dm, dx, dy, ring_cols, ring_vals, ring_n, ring_packed, no_row = scratch
    src, dst, block_scratch, functions, state = source
    if state[N_BLOCKS] > 0:  # decoded now, read while in L2 (the mask streams in fine on its own: touching it
        # cost 0.5 ms)
        if not decode_upto(src, dst, block_scratch, functions, state, min(r1 + ky, ny) * nx * state[ELEM_SIZE]):
            return -1, loud_windows
    else:
        _touch_both(image, mask, min(r0 + ky, ny), min(r1 + ky, ny))
    sel_words = sel.view(np.uint64)
    loud_words = loud.view(np.uint64)
    sel_bits = flag_bits.view(np.uint64)
    n_left = min(kx, nx)
    right = max(nx - kx, kx)
    n_edge = n_left + max(0, nx - right)
    period = ring_n.shape[0]
    nb2 = 2.0 * nsig_b * nsig_b
    ns2 = nsig_s * nsig_s * gain
    for r in range(r0, r1):
        enter = r + ky if r + ky < ny else -1
        leave = r - ky - 1 if r - ky - 1 >= 0 else -1
        # the packed ring has one slot more than the window, so the entering and the
        # leaving rows never share one (no aliasing: the update loop vectorises)
        packed_in = ring_packed[(r + ky) % (period + 1)]
        packed_out = ring_packed[leave % (period + 1)] if leave >= 0 else no_row
        _update_packed(image, mask, enter, lo1, vq, hs1, hi1, flagged, col, packed_in, packed_out, loud)
        if leave >= 0:
            s = leave % period
            loud_windows += _loud_windows(ring_cols, ring_vals, s, ring_n[s], -1, kx, dm, dx, dy)
            ring_n[s] = 0
        if enter >= 0:
            s = enter % period
            ring_n[s] = _list_loud(image, mask, enter, lo1, vq, hs1, hi1, flagged, loud_words, flag_bits,
                                   ring_cols, ring_vals, s, stats)
            stats[3] += ring_n[s]
            loud_windows += _loud_windows(ring_cols, ring_vals, s, ring_n[s], 1, kx, dm, dx, dy)
        row = image[r]
        if nx > 2 * kx and kx == 3 and loud_windows > LOUD_SCREEN:
            _candidates_7_loud(col, row[kx:], dm[kx:], dx[kx:], dy[kx:], alpha, beta, dispersion_only,
                               wsum_px[kx:], sel[kx:], nx - 2 * kx)
        elif nx > 2 * kx:
            _candidates_row(row, col, kx, dm, alpha, beta, dispersion_only, wsum_px[kx:], sel)
        for e in range(n_edge):  # the clipped windows at the row's ends
            i = e if e < n_left else right + e - n_left
            p = np.uint32(0)
            for c in range(max(0, i - kx), min(nx, i + kx + 1)):
                p = np.uint32(p + col[c])
            wsum_px[i] = p
            sel[i] = _possible(p, alpha, beta) | (dm[i] != 0)
        base = r * nx
        gather_flags(sel_words, flag_bits)  # sel is written anew for every pixel of every row
        for q in range(sel_bits.shape[0]):
            word = sel_bits[q]
            while word != 0:
                i = q * 64 + lowest_bit(word)
                word &= word - np.uint64(1)
                if _exact(image, mask, r, i, wsum_px[i], dm, dx, dy, lower, upper, nb2, ns2, gain,
                          threshold, min_count, dispersion_only):
                    out_index[n] = base + i
                    n += 1
    return n, loud_windows
