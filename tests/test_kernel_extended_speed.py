"""The extended variant's erosion and final test (`kernels.dispersion_extended`) against slow numpy.

`erode_runs` (row runs, running counts down the columns) must give the square erosion of
the dispersed map (pixels outside the image counting as dispersed) and leave the flag map at
1 (dispersed) / 2 (core); `extended_final_tiles` (packed
integer summed-area tables per band, a screen before the division and square root) and
`extended_final_rows` (rolling column sums, `kernels.final_rows`, for dense core pixels) must
give, bit for bit, the float64 test on exact window sums over the valid non-core pixels, in
place over the core list as `strong_pixels` calls it, over integer dtypes, masks, edges,
corners, window sizes, trusted ranges, gains, thresholds and exact ties; float images (and
lower < -1) take `extended_final` unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.dispersion_extended import (
    _strong,
    erode_runs,
    extended_final,
    extended_final_tiles,
)
from kernels.final_rows import extended_final_rows, row_bounds

INT_DTYPES = [np.uint8, np.uint16, np.uint32, np.int16, np.int32]


def eroded(dispersed: np.ndarray, radius: int) -> np.ndarray:
    """Core map: every pixel within Chebyshev distance `radius` dispersed (outside counts)."""
    padded = np.pad(dispersed, radius, constant_values=True)
    window = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1, 2 * radius + 1))
    return dispersed & window.all(axis=(2, 3))


def blobs(shape, rng, n_blobs=6, noise=0.15):
    """Dispersed maps with compact blobs (some on edges and corners) and scattered pixels."""
    ny, nx = shape
    out = rng.random(shape) < noise
    for k in range(n_blobs):
        h, w = rng.integers(1, 14, size=2)
        y = [0, ny - h, rng.integers(0, max(1, ny - h + 1))][k % 3]
        x = [0, nx - w, rng.integers(0, max(1, nx - w + 1))][(k // 3) % 3]
        out[max(0, y):y + h, max(0, x):x + w] = True
    return out


def run_erosion(dispersed, radius, index_dtype=np.int32):
    index = np.flatnonzero(dispersed).astype(index_dtype)
    flag = dispersed.astype(np.uint8)
    core = np.full(len(index), -7, index_dtype)
    nc = erode_runs(flag, index, len(index), radius, core)
    return core[:nc], flag


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 4])
def test_erosion_equals_square_erosion(radius):
    rng = np.random.default_rng(radius)
    shapes = [(40, 53), (1, 30), (30, 1), (2, 2), (3, 9), (9, 3), (2 * radius + 1, 2 * radius + 2), (radius + 1, 40)]
    for shape in shapes:
        for noise, index_dtype in ((0.1, np.int32), (0.6, np.int64), (0.95, np.int32)):
            dispersed = blobs(shape, rng, noise=noise)
            core, flag = run_erosion(dispersed, radius, index_dtype)
            want = eroded(dispersed, radius)
            np.testing.assert_array_equal(core, np.flatnonzero(want), err_msg=f"{shape} {noise}")
            np.testing.assert_array_equal(flag, dispersed.astype(np.uint8) + want)


def test_erosion_edges_full_rows_and_large_radii():
    """Whole rows and columns dispersed, radii beyond the image."""
    rng = np.random.default_rng(11)
    dispersed = np.zeros((12, 17), bool)
    dispersed[:, :] = True
    dispersed[5, 8] = False
    for radius in (0, 1, 5, 11, 16, 40, 126, 127, 300):
        for d in (dispersed, np.ones((7, 4), bool), blobs((150, 140), rng, n_blobs=12, noise=0.9),
                  np.ones((300, 260), bool)):
            core, flag = run_erosion(d, radius)
            want = eroded(d, radius)
            np.testing.assert_array_equal(core, np.flatnonzero(want), err_msg=f"{d.shape} {radius}")
            np.testing.assert_array_equal(flag, d.astype(np.uint8) + want)


def test_erosion_of_nothing_and_of_flags_at_two_elsewhere():
    flag = np.zeros((5, 6), np.uint8)
    assert erode_runs(flag, np.zeros(0, np.int32), 0, 2, np.zeros(0, np.int32)) == 0
    assert not flag.any()
    dispersed = np.ones((9, 9), bool)
    dispersed[0, 4] = False
    flag = dispersed.astype(np.uint8)
    flag[0, 4] = 2  # not in the list: counts as not dispersed, left as it is
    index = np.flatnonzero(dispersed).astype(np.int32)
    core = np.empty(len(index), np.int32)
    nc = erode_runs(flag, index, len(index), 1, core)
    np.testing.assert_array_equal(core[:nc], np.flatnonzero(eroded(dispersed, 1)))
    assert flag[0, 4] == 2 and flag[0, 3] == 1 and flag[4, 4] == 2


def final_reference(image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, core):
    """The strong core pixels: the float64 test on exact window sums (Python integers)."""
    v = image.astype(np.float64)
    valid = (flag != 2) & (mask != 0) & (v > lower) & (v < upper) & (v < 2.0**24)
    ny, nx = image.shape
    keep = []
    for p in core:
        j, i = divmod(int(p), nx)
        window = (slice(max(0, j - ky), j + ky + 1), slice(max(0, i - kx), i + kx + 1))
        ok = valid[window]
        m = float(np.count_nonzero(ok))
        x = float(sum(int(w) for w in image[window][ok]))
        mean = x / m if m >= 2.0 else 0.0
        if (x >= 0.0) & (v[j, i] > threshold) & (v[j, i] >= mean + nsig_s * np.sqrt(gain * mean)):
            keep.append(p)
    return np.array(keep, dtype=np.int64)


def core_frame(shape, dtype, rng, radius=1, background=0.4):
    """(image, mask, flag, core) with spots on a Poisson background, some at the edges."""
    info = np.iinfo(dtype)
    image = rng.poisson(background, shape).astype(np.int64)
    dispersed = blobs(shape, rng, n_blobs=8, noise=0.05)
    image[dispersed] += rng.integers(0, 60, size=np.count_nonzero(dispersed))
    image[rng.random(shape) < 0.01] = info.max  # saturated / gaps
    if info.min < 0:
        image[rng.random(shape) < 0.01] = -1
    if info.max > 2**24:
        image[rng.random(shape) < 0.01] = 2**24 + rng.integers(0, 3)  # valid but left out of the sums
    image = np.clip(image, info.min, info.max).astype(dtype)
    mask = (rng.random(shape) > 0.08).astype(np.uint8)
    want = eroded(dispersed, radius)
    flag = (dispersed.astype(np.uint8) + want).astype(np.uint8)
    return image, mask, flag, np.flatnonzero(want).astype(np.int32)


FINALS = {"tiles": extended_final_tiles, "rows": extended_final_rows}


def run_final(image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, core, final="tiles"):
    """The strong core pixels by one of the final tests ("rows" where `row_bounds` lets it
    run, else the tiles, as `final_path` chooses)."""
    if final == "rows" and row_bounds(image, lower, upper, kx, ky) is None:
        final = "tiles"
    work = core.copy()  # in place, as strong_pixels calls it
    n = FINALS[final](image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag, work, len(core), work)
    return work[:n]


@pytest.mark.parametrize("final", ["tiles", "rows"])
@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kernel", [(1, 1), (2, 2), (3, 3), (5, 5), (7, 3), (3, 7), (6, 6)])
def test_final_equals_reference(dtype, kernel, final):
    kx, ky = kernel
    rng = np.random.default_rng(hash((np.dtype(dtype).str, kernel)) % 2**32)
    for shape in [(61, 75), (40, 1), (1, 50), (3, 4), (70, 33)]:
        image, mask, flag, core = core_frame(shape, dtype, rng, radius=int(rng.integers(0, 3)))
        for lower, upper, nsig_s, gain, threshold in [(-1.0, float(np.iinfo(dtype).max), 3.0, 1.0, 0.0),
                                                      (0.5, 40.5, 2.5, 0.7, 3.0), (-1.0, np.inf, 0.0, 1.3, -2.0),
                                                      (2.0, 2.0**26, 1.0, 2.0, 1.5), (-1.0, np.nan, 3.0, 1.0, 0.0)]:
            args = (image, mask, lower, upper, kx, ky, nsig_s, gain, threshold, flag)
            np.testing.assert_array_equal(run_final(*args, core, final=final), final_reference(*args, core),
                                          err_msg=f"{shape} {lower} {upper} {nsig_s} {gain} {threshold}")


@pytest.mark.parametrize("final", ["tiles", "rows"])
def test_final_exact_ties_and_unscreened_parameters(final):
    """Windows of ones (mean 1) and of fours (mean 4) with sigma_s 3, gain 1 put v = 4 and
    v = 10 exactly on the threshold (strong) and v = 3, 9 just under; gains and sigma_s
    outside the screen's range take the float64 test for every pixel."""
    image = np.ones((40, 50), np.uint16)
    image[20:, :] = 4
    core = np.array([5 * 50 + 5, 5 * 50 + 20, 30 * 50 + 5, 30 * 50 + 20], np.int32)
    image.flat[core] = [4, 3, 10, 9]
    flag = np.zeros(image.shape, np.uint8)
    flag.flat[core] = 2
    mask = np.ones(image.shape, np.uint8)
    got = run_final(image, mask, -1.0, 1e6, 3, 3, 3.0, 1.0, 0.0, flag, core, final=final)
    np.testing.assert_array_equal(got, core[[0, 2]])
    rng = np.random.default_rng(5)
    for nsig_s, gain in [(3.0, 1e-40), (3.0, 1e40), (1e-40, 1.0), (-1.0, 1.0), (1e40, 1.0), (3.0, 0.25)]:
        image, mask, flag, core = core_frame((50, 60), np.uint16, rng)
        args = (image, mask, -1.0, 60000.0, 4, 4, nsig_s, gain, 0.0, flag)
        np.testing.assert_array_equal(run_final(*args, core, final=final), final_reference(*args, core),
                                      err_msg=f"{nsig_s} {gain}")


def test_screen_decides_as_the_float64_test():
    """`_strong` with its screen against the test as written, around the threshold."""
    rng = np.random.default_rng(2)
    for _ in range(3000):
        m = float(rng.integers(0, 200))
        x = float(rng.integers(0, 400) if rng.random() < 0.7 else rng.integers(0, 2**30))
        nsig_s = float(rng.choice([0.0, 1.0, 2.5, 3.0, rng.random() * 10]))
        gain = float(rng.choice([1.0, 0.5, 2.0, rng.random() * 5 + 1e-3]))
        mean = x / m if m >= 2 else 0.0
        edge = mean + nsig_s * np.sqrt(gain * mean)
        for v in {np.floor(edge) - 1, np.floor(edge), np.ceil(edge), np.ceil(edge) + 1, edge, rng.integers(0, 500)}:
            v = float(max(v, 0.0))
            want = (x >= 0.0) & (v > 0.0) & (v >= mean + nsig_s * np.sqrt(gain * mean))
            assert _strong(v, m, x, nsig_s, gain, 0.0, True) == want, (v, m, x, nsig_s, gain)


@pytest.mark.parametrize("lower", [-1.0, -5.0])
def test_float_images_and_negative_values_take_the_sliding_test(lower):
    rng = np.random.default_rng(8)
    image, mask, flag, core = core_frame((45, 52), np.int32, rng)
    for img in (image.astype(np.float64) * 1.1, image.astype(np.float32), image):
        args = (img, mask, lower, 1e9, 5, 5, 3.0, 1.0, 0.0, flag)
        out = np.empty(len(core), np.int32)
        n = extended_final(*args, core, len(core), out)
        np.testing.assert_array_equal(run_final(*args, core), out[:n])
