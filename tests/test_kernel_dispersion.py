"""The dispersion threshold kernels against a slow, literal numpy transcription of DIALS 3.12.

The reference uses full-image summed-area tables, DIALS's square-root formulas and, for the
extended variant, scipy's chessboard distance transform for the erosion: an independent
route to the same answer as the streaming kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from kernels.dispersion import BIG, DispersionWorkspace, strong_pixels

DTYPES = [np.uint16, np.uint32, np.int32, np.float32]


def window_sums(values: np.ndarray, weight: np.ndarray, kx: int, ky: int):
    """(m, x, y) over the clipped (2kx+1) x (2ky+1) window, via a summed-area table."""
    ny, nx = values.shape

    def box(a):
        sat = np.zeros((ny + 1, nx + 1))
        sat[1:, 1:] = a.cumsum(0).cumsum(1)
        j = np.arange(ny)
        i = np.arange(nx)
        j0, j1 = np.clip(j - ky, 0, ny), np.clip(j + ky + 1, 0, ny)
        i0, i1 = np.clip(i - kx, 0, nx), np.clip(i + kx + 1, 0, nx)
        return sat[j1][:, i1] - sat[j0][:, i1] - sat[j1][:, i0] + sat[j0][:, i0]

    w = weight.astype(np.float64)
    v = values.astype(np.float64) * w
    return box(w), box(v), box(v * values.astype(np.float64))


def reference(image, mask, algorithm, kernel=(3, 3), nsig_b=6.0, nsig_s=3.0, threshold=0.0, min_count=2, gain=1.0,
              trusted=(-1.0, np.inf)):
    v = image.astype(np.float64)
    valid = (mask != 0) & (v > trusted[0]) & (v < trusted[1])
    kx, ky = kernel
    m, x, y = window_sums(v, valid & (v < BIG), kx, ky)
    with np.errstate(invalid="ignore"):
        ok = valid & (m >= min_count) & (x >= 0)
        a = m * y - x * x - gain * x * (m - 1)
        c = gain * x * nsig_b * np.sqrt(2 * (m - 1))
        dispersed = ok & (a > c)
        if algorithm == "dispersion":
            b = m * v - x
            d = nsig_s * np.sqrt(gain * x * m)
            return np.flatnonzero(dispersed & (b > d) & (v > threshold))
        distance = ndimage.distance_transform_cdt(dispersed, metric="chessboard").astype(np.float64)
        if dispersed.all():  # no non-dispersed pixel anywhere: DIALS's distance is "infinite"
            distance[:] = np.inf
        background = valid & ~(dispersed & (distance >= min(kx, ky)))
        m2, x2, _ = window_sums(v, background & (v < BIG), kx + 2, ky + 2)
        mean = np.where(m2 >= 2, x2 / np.where(m2 > 0, m2, 1), 0.0)
        strong = valid & ~background & (v > threshold) & (v >= mean + nsig_s * np.sqrt(gain * mean))
    return np.flatnonzero(strong)


def frame(shape, dtype, seed=0, n_spots=6, background=2.0, peak=300.0):
    """Poisson background with a few Gaussian spots; integer-valued whatever the dtype."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    lam = np.full(shape, background)
    for _ in range(n_spots):
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        width = rng.uniform(0.5, 1.5)
        lam += rng.uniform(0.2, 1.0) * peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    return rng.poisson(lam).astype(dtype)


@pytest.mark.parametrize("algorithm", ["dispersion", "dispersion_extended"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(61, 47), (33, 128), (9, 9), (3, 40)])
def test_matches_reference_over_dtypes_and_shapes(algorithm, dtype, shape):
    image = frame(shape, dtype, seed=shape[0] * 7 + shape[1])
    mask = np.ones(shape, np.uint8)
    got = strong_pixels(image, mask, algorithm)
    np.testing.assert_array_equal(got, reference(image, mask, algorithm))
    if shape[0] > 9:
        assert got.size > 0  # the spots are found at all


@pytest.mark.parametrize("algorithm", ["dispersion", "dispersion_extended"])
def test_masked_and_saturated_pixels(algorithm):
    image = frame((80, 90), np.int32, seed=3, n_spots=10)
    rng = np.random.default_rng(4)
    mask = (rng.random(image.shape) > 0.05).astype(np.uint8)
    mask[:, 40:45] = 0  # a module gap
    image[rng.random(image.shape) < 0.01] = -1  # PILATUS-style flagged pixels
    image[10, 10:14] = 5000  # saturated, outside the trusted range
    trusted = (-1.0, 4000.0)
    got = strong_pixels(image, mask, algorithm, trusted_range=trusted)
    ref = reference(image, mask, algorithm, trusted=trusted)
    np.testing.assert_array_equal(got, ref)
    v = image.reshape(-1)[got]
    assert np.all(mask.reshape(-1)[got] == 1) and np.all((v > -1) & (v < 4000))


@pytest.mark.parametrize("algorithm", ["dispersion", "dispersion_extended"])
def test_parameters_gain_threshold_kernel(algorithm):
    image = frame((70, 70), np.uint32, seed=9, n_spots=12, background=20.0)
    mask = np.ones(image.shape, np.uint8)
    kw = dict(kernel=(2, 4), nsig_b=4.0, nsig_s=2.5, threshold=25.0, min_count=10, gain=1.7)
    got = strong_pixels(image, mask, algorithm, kernel_size=kw["kernel"], sigma_background=kw["nsig_b"],
                        sigma_strong=kw["nsig_s"], global_threshold=kw["threshold"], min_local=kw["min_count"],
                        gain=kw["gain"])
    np.testing.assert_array_equal(got, reference(image, mask, algorithm, **kw))


@pytest.mark.parametrize("algorithm", ["dispersion", "dispersion_extended"])
def test_empty_and_flat_frames_have_no_strong_pixels(algorithm):
    mask = np.ones((40, 50), np.uint8)
    ws = DispersionWorkspace((40, 50))
    for image in (np.zeros((40, 50), np.uint16), np.full((40, 50), 7, np.uint32)):
        assert strong_pixels(image, mask, algorithm, workspace=ws).size == 0
    assert ws.n_valid == 2000 and ws.n_overloads == 0


def test_workspace_counts_overloads():
    image = frame((30, 30), np.uint32, seed=1)
    image[5, 5] = image[6, 6] = 1000
    mask = np.ones(image.shape, np.uint8)
    mask[6, 6] = 0  # a masked overload is not counted
    ws = DispersionWorkspace(image.shape)
    strong_pixels(image, mask, "dispersion", trusted_range=(-1, 1000), workspace=ws)
    assert ws.n_overloads == 1
    assert ws.n_valid == 900 - 2


def test_bad_arguments_raise_value_error():
    image = np.zeros((10, 10), np.uint16)
    mask = np.ones((10, 10), np.uint8)
    with pytest.raises(ValueError):
        strong_pixels(image, mask[:, :5])
    with pytest.raises(ValueError):
        strong_pixels(image, mask.astype(bool))
    with pytest.raises(ValueError):
        strong_pixels(image.astype(np.complex64), mask)
    with pytest.raises(ValueError):
        strong_pixels(image, mask, "niblack")
    with pytest.raises(ValueError):
        strong_pixels(image, mask, min_local=1)
    with pytest.raises(ValueError):
        strong_pixels(image[:, ::2].copy()[:, :5].T, mask[:5, :10])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), ny=st.integers(1, 40), nx=st.integers(1, 40),
       algorithm=st.sampled_from(["dispersion", "dispersion_extended"]))
def test_property_strong_pixels_are_valid_and_match_reference(seed, ny, nx, algorithm):
    image = frame((ny, nx), np.uint16, seed=seed, n_spots=3)
    mask = (np.random.default_rng(seed).random((ny, nx)) > 0.1).astype(np.uint8)
    got = strong_pixels(image, mask, algorithm)
    assert np.all(np.diff(got) > 0)
    assert np.all(mask.reshape(-1)[got] == 1)
    np.testing.assert_array_equal(got, reference(image, mask, algorithm))


DIALS_SCRIPT = """
import sys, numpy as np
from dials.array_family import flex
from dials.algorithms.image.threshold import DispersionThreshold, DispersionExtendedThreshold
cases = np.load(sys.argv[1])
out = {}
for key in sorted({k.split(':')[0] for k in cases.files}):
    img, mask, params = cases[key + ':image'], cases[key + ':mask'], cases[key + ':params']
    kx, ky, nsig_b, nsig_s, threshold, min_count, gain, extended = params
    im = flex.double(img.astype(np.float64))
    mk = flex.bool(mask.astype(bool))
    cls = DispersionExtendedThreshold if extended else DispersionThreshold
    alg = cls(im.all(), (int(ky), int(kx)), nsig_b, nsig_s, threshold, int(min_count))
    dst = flex.bool(flex.grid(im.all()))
    if gain != 1.0:
        alg(im, mk, flex.double(flex.grid(im.all()), gain), dst)
    else:
        alg(im, mk, dst)
    out[key] = np.flatnonzero(dst.as_numpy_array())
np.savez(sys.argv[2], **out)
"""


@pytest.mark.dials
def test_identical_to_dials_threshold_classes(tmp_path):
    """The kernel against DIALS 3.12's own DispersionThreshold / DispersionExtendedThreshold
    (Debian's DIALS, run on /usr/bin/python3) on frames with spots, gaps and overloads."""
    import shutil
    import subprocess

    if shutil.which("dials.find_spots") is None:
        pytest.skip("DIALS is not installed")
    cases, ours = {}, {}
    settings_list = [(3, 3, 6.0, 3.0, 0.0, 2, 1.0), (2, 4, 4.0, 2.5, 5.0, 8, 1.0), (3, 3, 6.0, 3.0, 0.0, 2, 1.6)]
    for seed in range(3):
        image = frame((150 + seed, 170), np.int32, seed=seed, n_spots=30, background=1.0 + 4 * seed)
        static = np.ones(image.shape, np.uint8)
        static[:, 60:67] = 0
        image[:, 60:67] = -1
        image[70, 10:15] = 7000
        trusted = (-1.0, 6000.0)
        dials_mask = (static == 1) & (image > trusted[0]) & (image < trusted[1])
        for s, (kx, ky, nb, ns, thr, mc, gain) in enumerate(settings_list):
            for extended in (0, 1):
                key = f"s{seed}k{s}e{extended}"
                cases[key + ":image"] = image
                cases[key + ":mask"] = dials_mask
                cases[key + ":params"] = np.array([kx, ky, nb, ns, thr, mc, gain, extended], dtype=np.float64)
                ours[key] = strong_pixels(image, static, "dispersion_extended" if extended else "dispersion", (kx, ky),
                                          nb, ns, thr, mc, gain, trusted).copy()
    np.savez(tmp_path / "cases.npz", **cases)
    command = ["/usr/bin/python3", "-c", DIALS_SCRIPT, str(tmp_path / "cases.npz"), str(tmp_path / "out.npz")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    dials = np.load(tmp_path / "out.npz")
    for key, got in ours.items():
        np.testing.assert_array_equal(got, dials[key], err_msg=key)
    assert sum(len(v) for v in ours.values()) > 100
