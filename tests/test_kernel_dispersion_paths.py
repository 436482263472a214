"""The integer fast passes of the dispersion threshold against its general float64 pass.

`strong_pixels` takes the packed pass (one packed column sum of the quiet pixels, the loud
ones added sparsely) or the banded pass (three exact 32-bit column sums), both with a float32
screen and the float64 test where the screen is unsure, for integer images with nonnegative
summed values, and the general pass otherwise. Each integer image runs through both fast
passes (forced) and the same counts as float64 through the general pass: all must give the
same pixels, flags and counts bit for bit, over integer dtypes, kernel sizes, edge-sized
shapes, masks, saturation, gains and thresholds, and at exact ties of the tests, where only
the float64 test can decide.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.dispersion import (
    DispersionWorkspace,
    _bounds,
    _native_bounds,
    strong_pixels,
)

INT_DTYPES = [np.uint8, np.uint16, np.uint32, np.int16, np.int32]
ALGORITHMS = ["dispersion", "dispersion_extended"]


def both_paths(image, mask, algorithm, **kw):
    """(indices, flag, stats) of the integer image through the fast passes (a list, one per
    pass that applies) and of the same counts as float64 (the general pass)."""
    fast = []
    for path in ("packed", "banded", "auto"):
        ws = DispersionWorkspace(image.shape)
        try:
            idx = strong_pixels(image, mask, algorithm, workspace=ws, path=path, **kw).copy()
        except ValueError:
            assert path == "packed"  # the packed pass needs a quiet bound: windows <= 63 pixels
            continue
        fast.append((idx, ws.flag.copy(), counts(ws)))
    ws = DispersionWorkspace(image.shape)
    idx = strong_pixels(image.astype(np.float64), mask, algorithm, workspace=ws, **kw).copy()
    assert ws.last_path == "general"
    return fast, (idx, ws.flag.copy(), counts(ws))


def counts(ws):
    return np.array([ws.n_overloads, ws.n_valid, ws.n_valid_nonzero])


def assert_same(fast, general):
    for result in fast:
        np.testing.assert_array_equal(result[0], general[0])
        np.testing.assert_array_equal(result[1], general[1])
        np.testing.assert_array_equal(result[2], general[2])


def spotty(shape, dtype, rng, background=0.5, n_spots=4):
    ny, nx = shape
    img = rng.poisson(background, shape).astype(np.int64)
    for _ in range(n_spots):
        y, x = rng.integers(0, ny), rng.integers(0, nx)
        img[max(0, y - 1):y + 2, max(0, x - 1):x + 2] += rng.integers(3, 200)
    return np.clip(img, 0, np.iinfo(dtype).max).astype(dtype)


def test_fast_path_applies_to_detector_frames_only():
    """Integer frames with DIALS's trusted range take the screened pass; negative summed
    values, an empty valid range or a threshold above the type's range do not."""
    def native(dtype, lower, upper, threshold=0.0):
        lo, hi, hs = _bounds(np.dtype(dtype), lower, upper)
        return _native_bounds(np.dtype(dtype), lo, hi, hs, threshold)

    assert native(np.uint32, -1.0, 2.0**32 - 2) == (0, 2**24 - 1, 2**32 - 3, 1)
    assert native(np.int32, -1.0, 1e6, 2.5) == (0, 999_999, 999_999, 3)
    assert native(np.uint16, -1.0, np.inf) == (0, 65535, 65535, 1)
    assert native(np.int32, -10.0, 1e6) is None  # negative values would be summed
    assert native(np.uint16, -1.0, 0.5) == (0, 0, 0, 1)  # only 0 is below 0.5
    assert native(np.uint16, -1.0, 0.0) is None  # nothing valid
    assert native(np.uint8, -1.0, np.inf, 300.0) is None  # threshold above every value
    assert native(np.uint8, -1.0, np.inf, -5.0) == (0, 255, 255, 0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kernel", [(3, 3), (2, 4), (1, 1), (4, 2)])
def test_fast_path_equals_float_path(algorithm, dtype, kernel):
    rng = np.random.default_rng(hash((algorithm, np.dtype(dtype).str, kernel)) % 2**32)
    for shape in [(57, 83), (7, 2 * kernel[0] + 1), (5, 2 * kernel[0] + 2), (2, 30), (40, 1)]:
        image = spotty(shape, dtype, rng)
        mask = (rng.random(shape) > 0.05).astype(np.uint8)
        fast, general = both_paths(image, mask, algorithm, kernel_size=kernel, min_local=2)
        assert_same(fast, general)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_fast_path_saturation_gain_threshold(algorithm):
    rng = np.random.default_rng(7)
    image = spotty((64, 96), np.uint32, rng, background=3.0, n_spots=10)
    image[rng.random(image.shape) < 0.01] = 0xFFFFFFFF  # gaps / bad pixels at the type's maximum
    image[10:13, 20:23] = 2**25  # valid but too large for the window sums (DIALS's 2**24 bound)
    mask = np.ones(image.shape, np.uint8)
    for gain, threshold, trusted in [(1.0, 0.0, (-1.0, 2.0**32 - 2)), (0.7, 2.5, (-1.0, 150.0)),
                                     (2.3, 10.0, (0.5, 2.0**26)), (1.0, -3.0, (-1.0, np.inf))]:
        fast, general = both_paths(image, mask, algorithm, gain=gain, global_threshold=threshold,
                                   trusted_range=trusted)
        assert_same(fast, general)
        if trusted[1] == 2.0**32 - 2:
            assert fast[0][2][0] == np.count_nonzero(image == 0xFFFFFFFF)  # overloads: the maximum-valued pixels


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_exact_ties_are_decided_by_the_float64_test(algorithm):
    """3x3 windows (kernel 1) with sigma_b = sigma_s = 3 make both thresholds exact integers:
    t = sqrt(2 * 9 * 8) x = 12 x and s = sqrt(9 x m); windows at a = t or b = s exactly are
    ties that the float32 screen cannot decide and the float64 test rejects."""
    image = np.zeros((9, 9), np.uint16)
    image[3:6, 3:6] = [[0, 0, 0], [4, 2, 1], [0, 0, 0]]  # the window of (4, 4): x = 7, y = 21: 9y = x^2 + 20x
    kw = {"kernel_size": (1, 1), "sigma_background": 3.0, "sigma_strong": 3.0, "min_local": 2}
    fast, general = both_paths(image, np.ones_like(image, dtype=np.uint8), algorithm, **kw)
    assert_same(fast, general)
    assert general[1][4, 4] == 0  # a = t exactly: not dispersed
    rng = np.random.default_rng(3)
    for _ in range(30):
        image = rng.choice([0, 1, 2, 4], size=(12, 15), p=[0.55, 0.25, 0.15, 0.05]).astype(np.uint16)
        fast, general = both_paths(image, np.ones(image.shape, np.uint8), algorithm, **kw)
        assert_same(fast, general)


def test_workspace_reuse_leaves_no_flags_behind():
    ws = DispersionWorkspace((48, 64))
    mask = np.ones((48, 64), np.uint8)
    for algorithm in ALGORITHMS:
        for seed in range(3):
            image = spotty((48, 64), np.uint16, np.random.default_rng(seed), n_spots=6)
            reused = strong_pixels(image, mask, algorithm, workspace=ws).copy()
            fresh_ws = DispersionWorkspace(image.shape)
            fresh = strong_pixels(image, mask, algorithm, workspace=fresh_ws)
            np.testing.assert_array_equal(reused, fresh)
            np.testing.assert_array_equal(ws.flag, fresh_ws.flag)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), ny=st.integers(1, 30), nx=st.integers(1, 30), kx=st.integers(1, 4),
       ky=st.integers(1, 4), algorithm=st.sampled_from(ALGORITHMS), dtype=st.sampled_from(INT_DTYPES),
       gain=st.sampled_from([1.0, 0.5, 1.7]))
def test_property_fast_path_equals_float_path(seed, ny, nx, kx, ky, algorithm, dtype, gain):
    rng = np.random.default_rng(seed)
    background = float(rng.choice([0.0, 0.02, rng.uniform(0.1, 4.0)]))  # zero windows are common at low background
    image = spotty((ny, nx), dtype, rng, background=background, n_spots=int(rng.integers(0, 4)))
    mask = (rng.random((ny, nx)) > 0.1).astype(np.uint8)
    fast, general = both_paths(image, mask, algorithm, kernel_size=(kx, ky), gain=gain, min_local=2)
    assert_same(fast, general)


@pytest.mark.parametrize("gap", ["masked", "all-ones", "zeros"])
@pytest.mark.parametrize("background", [0.0, 0.02, 0.3])
def test_module_gaps_and_empty_background(gap, background):
    """Bands of gap pixels (masked, at the all-ones invalid value, or zero) across a frame of
    little or no background, as a fast EIGER frame looks: same pixels on every pass."""
    rng = np.random.default_rng(int(background * 100) + len(gap))
    image = spotty((120, 150), np.uint32, rng, background=background, n_spots=12)
    mask = np.ones(image.shape, np.uint8)
    gaps = np.zeros(image.shape, bool)
    gaps[50:62, :] = True
    gaps[:, 70:74] = True
    if gap == "masked":
        mask[gaps] = 0
    image[gaps] = {"masked": 0, "all-ones": 0xFFFFFFFF, "zeros": 0}[gap]
    for algorithm in ALGORITHMS:
        fast, general = both_paths(image, mask, algorithm, trusted_range=(-1.0, 2.0**32 - 2))
        assert_same(fast, general)
        assert general[0].size > 0


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**31), m=st.integers(0, 49), gain=st.sampled_from([1.0, 0.5, 1.7, 3.0]),
       nsig_b=st.sampled_from([6.0, 3.0, 1.0]), scale=st.sampled_from([0.0, 0.05, 1.0, 5.0, 25.0]))
def test_packed_screen_is_necessary_and_rejects_empty_windows(seed, m, gain, nsig_b, scale):
    """`_possible` (the packed pass's float32 screen of a 7 x 7 window) lets through every
    window the float64 dispersion test selects, and no window whose sum is zero."""
    from kernels.packed_sums import X_BITS, Y_SHIFT, _possible, candidate_bounds, quiet_value
    from kernels.dispersion_tests import selected64

    rng = np.random.default_rng(seed)
    values = np.minimum(rng.poisson(scale, m), quiet_value(49)).astype(np.int64)
    if m and rng.random() < 0.3:
        values[rng.integers(m)] = quiet_value(49)  # an outlier: dispersed windows
    x, y = int(values.sum()), int((values**2).sum())
    p = np.uint32(x | (m << X_BITS) | (y << Y_SHIFT))
    alpha, beta = candidate_bounds(49, nsig_b, gain)
    exact = selected64(0.0, True, float(m), float(x), float(y), 2.0 * nsig_b**2, 9.0, gain, 0.0, 2.0, True)
    screen = _possible(p, alpha, beta)
    if exact:
        assert screen, (m, x, y)
    if x == 0:
        assert not screen


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**31), m=st.integers(1, 49), gain=st.sampled_from([1.0, 0.5, 1.7, 3.0]),
       nsig_b=st.sampled_from([6.0, 3.0, 1.0]), nsig_s=st.sampled_from([3.0, 1.0]),
       scale=st.sampled_from([0.3, 5.0, 20.0]), top=st.sampled_from([60, 5000, 2**24 - 1]))
def test_loud_screen_is_necessary(seed, m, gain, nsig_b, nsig_s, scale, top):
    """`_candidates_7_loud`'s test (quiet packed sums plus exact loud sums, in float32) lets
    through every pixel the float64 tests select: dispersion alone (extended) and with the
    strong test (classic), up to values of 2**24 - 1, whose squares round in float32."""
    from kernels.packed_sums import X_BITS, Y_SHIFT, _possible_loud, candidate_bounds, quiet_value
    from kernels.dispersion_tests import selected64

    rng = np.random.default_rng(seed)
    vq = quiet_value(49)
    values = rng.poisson(scale, m).astype(np.int64)
    n_loud = int(rng.integers(1, m + 1))
    values[:n_loud] = rng.integers(vq + 1, top + 1, n_loud)
    quiet, loud = values[values <= vq], values[values > vq]
    xq, yq = int(quiet.sum()), int((quiet**2).sum())
    p = np.uint32(xq | (quiet.size << X_BITS) | (yq << Y_SHIFT))
    alpha, beta = candidate_bounds(49, nsig_b, gain)
    possible, mf, xf = _possible_loud(p, np.int32(loud.size), np.int32(loud.sum()), np.int64((loud**2).sum()),
                                      alpha, beta)
    v = float(values[int(rng.integers(m))])
    args = (True, float(m), float(values.sum()), float((values**2).sum()), 2.0 * nsig_b**2, nsig_s**2 * gain, gain,
            0.0, 2.0)
    if selected64(v, *args, True):
        assert possible
    if selected64(v, *args, False):
        assert possible and np.float32(v) * mf * np.float32(1.0001) >= xf


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_rows_with_many_loud_windows_screen_the_whole_sums(dtype):
    """Background 14 to 18 photons: most rows' windows hold loud pixels, screened on their whole
    sums (`_candidates_7_loud`, for windows 7 wide and 5, 7 or 9 high) in the packed pass; its
    answers are the general pass's."""
    rng = np.random.default_rng(21)
    shape = (96, 300)
    mask = np.ones(shape, np.uint8)
    mask[40:44, :] = 0
    for background in (14.0, 16.0, 18.0):
        image = spotty(shape, dtype, rng, background=background, n_spots=6)
        image[rng.random(shape) < 0.002] = 3000  # bright outliers, far above the quiet bound
        for algorithm in ALGORITHMS:
            for gain, kernel in ((1.0, (3, 3)), (1.7, (3, 3)), (1.0, (3, 2)), (1.0, (3, 4))):
                fast, general = both_paths(image, mask, algorithm, gain=gain, kernel_size=kernel)
                assert_same(fast, general)
                assert general[0].size > 0


def test_auto_path_follows_the_background():
    """A low-background detector frame takes the packed pass, and so does background 14 (4
    pixels in a thousand above the quiet bound, `_candidates_7_loud`); a high-background one
    (background 20: one in ten, or most) the banded pass, floats the general pass; same answers."""
    rng = np.random.default_rng(11)
    shape = (192, 256)  # 4 spots: one per 12,000 pixels, as 400 on a 4M frame
    mask = np.ones(shape, np.uint8)
    for background, expected in [(0.3, "packed"), (14.0, "packed"), (20.0, "banded"), (60.0, "banded")]:
        image = spotty(shape, np.uint32, rng, background=background, n_spots=4)
        ws = DispersionWorkspace(image.shape)
        strong_pixels(image, mask, "dispersion_extended", workspace=ws)
        assert ws.last_path == expected
        fast, general = both_paths(image, mask, "dispersion_extended")
        assert_same(fast, general)
    # after a frame with many dispersed pixels (noisy), the next takes the banded pass
    image = spotty(shape, np.uint32, rng, background=0.3, n_spots=4)
    ws = DispersionWorkspace(image.shape)
    quiet = strong_pixels(image, mask, "dispersion_extended", workspace=ws).copy()
    assert ws.last_path == "packed" and 0 < ws.dispersed_fraction
    ws.dispersed_fraction = 0.2  # as a noisy frame leaves it
    again = strong_pixels(image, mask, "dispersion_extended", workspace=ws)
    assert ws.last_path == "banded"
    np.testing.assert_array_equal(quiet, again)
    with pytest.raises(ValueError):
        strong_pixels(image.astype(np.float32), mask, path="packed")


def test_classic_algorithm_keeps_the_packed_pass_with_more_loud_pixels():
    """The classic algorithm's crossover is its own: a sparse frame with 16 loud pixels in a
    thousand takes the packed pass there (the extended algorithm rightly takes the banded one;
    before, its crossover sent classic frames with 1 in a thousand to the slower banded pass),
    30 in a thousand the banded one; same answers."""
    rng = np.random.default_rng(5)
    shape = (256, 512)
    mask = np.ones(shape, np.uint8)
    for loud, classic, extended in [(0.003, "packed", "packed"), (0.016, "packed", "banded"),
                                    (0.03, "banded", "banded")]:  # extended: 0.016 has 17% dispersed
        image = rng.poisson(8.0, shape).astype(np.uint32)
        image[rng.random(shape) < loud] = 27  # above the quiet bound (25 for 7 x 7), hardly dispersed
        for algorithm, expected in [("dispersion", classic), ("dispersion_extended", extended)]:
            ws = DispersionWorkspace(shape)
            strong_pixels(image, mask, algorithm, workspace=ws)  # the first frame of a series
            strong_pixels(image, mask, algorithm, workspace=ws)  # knows the last one's fractions
            assert ws.last_path == expected, (loud, algorithm)
            fast, general = both_paths(image, mask, algorithm)
            assert_same(fast, general)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("algorithm", ["dispersion", "dispersion_extended"])
def test_the_detector_flag_of_inactive_pixels_is_not_an_overload(dtype, algorithm):
    """A DECTRIS frame without its mask: gap columns at the all-ones value, a few pixels at
    the count cutoff. Every pass finds the same pixels with or without `flagged`, and with it
    counts only the pixels above the cutoff that are not flagged, as numpy counts them."""
    rng = np.random.default_rng(11)
    image = spotty((60, 90), dtype, rng, background=0.6, n_spots=6)
    flagged = int(np.iinfo(dtype).max)
    cutoff = 5000
    image[:, 40:43] = flagged  # a module gap
    image[10, 10] = image[30, 70] = image[50, 5] = cutoff + 7  # saturated
    mask = np.ones(image.shape, np.uint8)
    mask[50, 5] = 0
    kw = dict(trusted_range=(-1.0, float(cutoff)))
    expected = int(np.count_nonzero((mask != 0) & (image >= cutoff) & (image != flagged)))
    assert expected == 2
    for path in ("packed", "banded", "auto", "general"):
        ws, plain = DispersionWorkspace(image.shape), DispersionWorkspace(image.shape)
        source = image.astype(np.float64) if path == "general" else image
        chosen = "auto" if path == "general" else path
        got = strong_pixels(source, mask, algorithm, workspace=ws, path=chosen, flagged=flagged, **kw).copy()
        want = strong_pixels(source, mask, algorithm, workspace=plain, path=chosen, **kw)
        np.testing.assert_array_equal(got, want)
        assert ws.n_overloads == expected, path
        assert plain.n_overloads == expected + 3 * 60, path  # without it the gap counts as saturated
        assert ws.n_valid == plain.n_valid


def test_a_trusted_range_below_minus_one_takes_the_integer_passes_when_no_count_is_negative():
    """Negative counts trusted (pedestal-subtracted or NeXus signed images): a frame whose usable
    pixels hold none tests as with the usual (-1, ...) bound, on the integer passes; one that
    holds some takes the general pass, which counts them. `any_negative` against numpy."""
    from kernels.dispersion_general import any_negative

    rng = np.random.default_rng(11)
    image = spotty((60, 70), np.int32, rng, background=2.0)
    mask = np.ones(image.shape, np.uint8)
    mask[:, 30:33] = 0
    image[:, 30:33] = -1  # masked gap pixels of a PILATUS-like int32 image
    for trial in (image, image.astype(np.uint16)):
        assert any_negative(trial, mask) == bool(np.any((trial < 0) & (mask != 0)))
    wide, usual = DispersionWorkspace(image.shape), DispersionWorkspace(image.shape)
    got = strong_pixels(image, mask, workspace=wide, trusted_range=(-0x7FFFFFFF - 1, 1e6)).copy()
    expected = strong_pixels(image, mask, workspace=usual, trusted_range=(-1.0, 1e6)).copy()
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(counts(wide), counts(usual))
    assert wide.last_path != "general" and len(got) > 0
    noisy = image - 3 * (rng.random(image.shape) < 0.2).astype(np.int32)  # read noise below 0
    assert any_negative(noisy, mask) == bool(np.any((noisy < 0) & (mask != 0))) is True
    ws = DispersionWorkspace(image.shape)
    got = strong_pixels(noisy, mask, workspace=ws, trusted_range=(-0x7FFFFFFF - 1, 1e6)).copy()
    assert ws.last_path == "general"
    reference = DispersionWorkspace(image.shape)
    np.testing.assert_array_equal(got, strong_pixels(noisy.astype(np.float64), mask, workspace=reference,
                                                     trusted_range=(-0x7FFFFFFF - 1, 1e6)))
    assert counts(ws)[1] == np.count_nonzero(mask)  # the negative counts are valid
