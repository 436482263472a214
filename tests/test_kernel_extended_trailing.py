"""The extended threshold with its erosion and final test trailing the packed pass
(`kernels.extended_trailing`) against the general float64 pass, which erodes and tests after it.

The trailing steps take bands of core pixels only once the rows their windows reach are final,
so the cases are those where that bookkeeping could slip: spots across the pass's bands
(BAND_ROWS) and the final test's tiles (TILE), in the last rows, in frames shorter than a band
or than a window, windows of other sizes (erosion radius 0 to 3), and frames dense with spots.
Strong pixels, the flag map (1 dispersed, 2 core) and the counts must be the same bit for bit,
and the values the pass takes of its strong pixels those of the image.
The radial sums the pass takes band by band must be those of `radial_sums` after it.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.dispersion import DispersionWorkspace, strong_pixels
from kernels.dispersion_extended import TILE
from kernels.dispersion_int import BAND_ROWS
from kernels.radial import BandedRadial, bin_map, radial_segments, radial_sums


def frame_with_spots(shape, rows, rng, dtype=np.uint16, background=0.3):
    """Poisson background with a 5 x 5 spot centred on each of `rows`, at random columns."""
    image = rng.poisson(background, shape).astype(np.int64)
    for y in rows:
        x = int(rng.integers(0, shape[1]))
        image[max(0, y - 2):y + 3, max(0, x - 2):x + 3] += rng.integers(20, 300)
    return image.astype(dtype)


def trailing_and_general(image, mask, **kw):
    ws = DispersionWorkspace(image.shape)
    view = image.view()
    view.setflags(write=False)
    got = strong_pixels(view, mask, "dispersion_extended", workspace=ws, path="packed", **kw).copy()
    assert ws.last_final == "trailing"
    np.testing.assert_array_equal(ws.strong_values(), image.reshape(-1)[got].astype(np.float64))
    ref_ws = DispersionWorkspace(image.shape)
    want = strong_pixels(image.astype(np.float64), mask, "dispersion_extended", workspace=ref_ws, **kw).copy()
    assert ref_ws.last_path == "general"
    assert ref_ws.strong_values() is None  # taken by the trailing pass only
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ws.flag, ref_ws.flag)
    assert (ws.n_overloads, ws.n_valid, ws.n_valid_nonzero) == (
        ref_ws.n_overloads, ref_ws.n_valid, ref_ws.n_valid_nonzero)
    return got


@pytest.mark.parametrize("kernel_size", [(3, 3), (1, 1), (2, 4), (4, 2)])
def test_spots_across_bands_and_tiles(kernel_size):
    rng = np.random.default_rng(sum(kernel_size))
    ny = 5 * BAND_ROWS + 11
    edges = sorted({b + d for b in range(0, ny, BAND_ROWS) for d in (-3, -1, 0, 1, 4)}
                   | {t + d for t in range(0, ny, TILE) for d in (-6, 5)} | {ny - 1, ny - 3, 0, 2})
    rows = [y for y in edges if 0 <= y < ny]
    image = frame_with_spots((ny, 301), rows, rng)
    mask = np.ones(image.shape, np.uint8)
    mask[:, 150:152] = 0
    got = trailing_and_general(image, mask, kernel_size=kernel_size)
    assert got.size > 0


@pytest.mark.parametrize("shape", [(3, 200), (9, 50), (BAND_ROWS - 1, 64), (BAND_ROWS + 1, 64), (2 * TILE + 7, 33)])
def test_short_frames(shape):
    rng = np.random.default_rng(shape[0])
    image = frame_with_spots(shape, range(0, shape[0], 4), rng, np.uint32)
    trailing_and_general(image, np.ones(shape, np.uint8))


def test_dense_spots_and_one_workspace_for_many_frames():
    """A workspace carries a frame's flags to the next (cleared sparsely): frames dense and
    sparse in turn on one workspace give what each gives on its own, whether they trail the
    packed pass or (the densest, after a dense frame) follow the banded one."""
    rng = np.random.default_rng(7)
    shape = (4 * BAND_ROWS, 257)
    mask = np.ones(shape, np.uint8)
    ws = DispersionWorkspace(shape)
    taken = set()
    for n_spots in (600, 3, 0, 900, 40, 60):
        image = frame_with_spots(shape, rng.integers(0, shape[0], n_spots), rng, np.int32)
        image.setflags(write=False)
        alone = DispersionWorkspace(shape)
        want = strong_pixels(image, mask, workspace=alone).copy()
        got = strong_pixels(image, mask, workspace=ws)
        taken.add(ws.last_final)
        np.testing.assert_array_equal(got, want)
        values = ws.strong_values()  # this frame's, or None where the pass did not take them
        assert (values is None) == (ws.last_final != "trailing")
        if values is not None:
            np.testing.assert_array_equal(values, image.reshape(-1)[got])
        np.testing.assert_array_equal(ws.flag, alone.flag)
    assert "trailing" in taken and len(taken) > 1


def radial_bins(shape, n_bins=9):
    """Rings around a centre off the frame's middle, a few pixels in no bin."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    r = np.hypot(yy - shape[0] / 3, xx - shape[1] / 2)
    r[::17, ::13] = np.inf
    return bin_map(r, np.linspace(0, 0.9 * np.nanmax(r[np.isfinite(r)]), n_bins + 1))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32])
@pytest.mark.parametrize("row_step", [1, 3, 8])
@pytest.mark.parametrize("shape", [(5 * BAND_ROWS + 11, 301), (BAND_ROWS - 1, 64), (3, 40)])
def test_radial_sums_taken_in_the_pass(dtype, row_step, shape):
    """Sums of the pixels not flagged (the dispersed ones), bit for bit those of `radial_sums`
    after the pass, for frames across bands and shorter than one, with masked and saturated
    pixels, two trusted ranges, and one set of sums for frame after frame."""
    rng = np.random.default_rng(shape[0] + row_step)
    mask = (rng.random(shape) > 0.05).astype(np.uint8)
    mask[:, shape[1] // 2:shape[1] // 2 + 2] = 0
    n_bins = 9
    segments = radial_segments(mask, radial_bins(shape, n_bins), n_bins, row_step)
    top = float(np.iinfo(dtype).max)
    excluded = 0
    for trusted in ((-1.0, top), (0.5, 200.5)):
        radial = BandedRadial(segments, np.dtype(dtype), trusted)
        ws = DispersionWorkspace(shape)
        for n_spots in (40, 0, 90):
            image = frame_with_spots(shape, rng.integers(0, shape[0], n_spots), rng, dtype)
            image[rng.random(shape) < 0.003] = np.iinfo(dtype).max
            image.setflags(write=False)
            strong_pixels(image, mask, "dispersion_extended", trusted_range=trusted, workspace=ws, path="packed",
                          radial=radial)
            assert ws.last_final == "trailing" and radial.filled
            mean, counts = radial.result()
            want_mean, want_counts = radial_sums(image, segments, ws.flag, trusted)
            np.testing.assert_array_equal(counts, want_counts)
            assert mean.dtype == np.float32 and mean.tobytes() == want_mean.tobytes()
            excluded += int(np.count_nonzero(ws.flag[::row_step]))
    assert excluded > 0  # spot pixels on the sampled rows were left out


def test_radial_sums_only_where_the_pass_trails():
    shape = (2 * BAND_ROWS, 120)
    rng = np.random.default_rng(3)
    image = frame_with_spots(shape, range(3, shape[0], 9), rng, np.uint32)
    image.setflags(write=False)
    mask = np.ones(shape, np.uint8)
    segments = radial_segments(mask, radial_bins(shape), 9, 2)
    radial = BandedRadial(segments, np.dtype(np.uint32), (-1.0, 1e6))
    strong_pixels(image, mask, "dispersion_extended", trusted_range=(-1.0, 1e6), path="packed", radial=radial)
    assert radial.filled
    for kw in ({"algorithm": "dispersion", "path": "packed"}, {"path": "banded"}, {"path": "packed", "final": "rows"}):
        strong_pixels(image, mask, trusted_range=(-1.0, 1e6), radial=radial, **kw)
        assert not radial.filled
    with pytest.raises(ValueError):  # set up for another pixel type
        strong_pixels(image.astype(np.uint16), mask, radial=radial)
    with pytest.raises(ValueError):  # or shape
        strong_pixels(image[:-1], mask[:-1], radial=radial)
    with pytest.raises(ValueError):
        BandedRadial(segments, np.dtype(np.float32), (-1.0, 1e6))
