"""The extended threshold with its erosion and final test trailing the packed pass
(`kernels.extended_trailing`) against the general float64 pass, which erodes and tests after it.

The trailing steps take bands of core pixels only once the rows their windows reach are final,
so the cases are those where that bookkeeping could slip: spots across the pass's bands
(BAND_ROWS) and the final test's tiles (TILE), in the last rows, in frames shorter than a band
or than a window, windows of other sizes (erosion radius 0 to 3), and frames dense with spots.
Strong pixels, the flag map (1 dispersed, 2 core) and the counts must be the same bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.dispersion import DispersionWorkspace, strong_pixels
from kernels.dispersion_extended import TILE
from kernels.dispersion_int import BAND_ROWS


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
    ref_ws = DispersionWorkspace(image.shape)
    want = strong_pixels(image.astype(np.float64), mask, "dispersion_extended", workspace=ref_ws, **kw).copy()
    assert ref_ws.last_path == "general"
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
        np.testing.assert_array_equal(ws.flag, alone.flag)
    assert "trailing" in taken and len(taken) > 1
