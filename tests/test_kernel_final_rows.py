"""The final test by rolling column sums (`kernels.final_rows`): where it applies, which final
test `strong_pixels` takes, and that both give the same strong pixels.

Bit-for-bit equality with the float64 reference over dtypes, windows, edges, trusted ranges
and ties is in tests/test_kernel_extended_speed.py (both final tests run there).
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels.dispersion import DispersionWorkspace, strong_pixels
from kernels.final_rows import extended_final_rows, final_path, row_bounds, rows_reached


def test_rows_reached_counts_the_rows_of_the_windows():
    rng = np.random.default_rng(3)
    for ny, nx, ky, n in [(50, 20, 5, 12), (50, 20, 0, 7), (9, 4, 6, 3), (200, 7, 2, 60), (30, 30, 3, 0)]:
        core = np.unique(rng.integers(0, ny * nx, n)).astype(np.int32)
        want = set()
        for p in core:
            j = int(p) // nx
            want.update(range(max(0, j - ky), min(ny, j + ky + 1)))
        assert rows_reached(core, len(core), nx, ny, ky) == len(want), (ny, nx, ky, n)


def test_row_bounds_only_where_the_packed_columns_hold():
    image = np.zeros((40, 30), np.uint16)
    lo, hi = row_bounds(image, -1.0, 65535.0, 5, 5)
    assert (lo, hi) == (0, 65534) and type(lo) is np.uint16 and type(hi) is np.uint16
    assert row_bounds(image.astype(np.uint8), -1.0, 1e6, 5, 5) == (0, 255)  # clamped to the type
    assert row_bounds(image.astype(np.uint32), 2.5, 2.0**30, 5, 5) == (3, 2**24 - 1)  # DIALS's 2**24 cut
    assert row_bounds(image, -1.0, 65535.0, 5, 7) is not None  # 15 rows: counts fit 4 bits
    assert row_bounds(image, -1.0, 65535.0, 5, 8) is None  # 17 rows
    assert row_bounds(image.astype(np.float32), -1.0, 65535.0, 5, 5) is None
    assert row_bounds(image, -3.0, 65535.0, 5, 5) is None  # negative values summed
    assert row_bounds(image, -1.0, np.nan, 5, 5) is None  # nothing valid
    assert row_bounds(image.astype(np.uint8), 300.0, 1e6, 5, 5) is None  # nothing valid in the type


def spotty_frame(shape, n_spots, rng, dtype=np.uint16):
    """Poisson background 0.3 with n_spots Gaussian spots (some on the edges) and a masked strip."""
    ny, nx = shape
    image = rng.poisson(0.3, shape).astype(np.float64)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for _ in range(n_spots):
        y, x = rng.uniform(-1, ny), rng.uniform(-1, nx)
        image += rng.uniform(20, 400) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * rng.uniform(0.6, 1.6) ** 2))
    image = rng.poisson(image).astype(dtype)
    mask = np.ones(shape, np.uint8)
    mask[:, nx // 3:nx // 3 + 2] = 0
    return image, mask


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32])
def test_both_final_tests_give_the_same_strong_pixels(dtype):
    rng = np.random.default_rng(np.dtype(dtype).itemsize)
    for n_spots in (5, 60, 400):
        image, mask = spotty_frame((150, 170), n_spots, rng, dtype)
        image.flags.writeable = False
        got = {}
        for final in ("tiles", "rows"):
            ws = DispersionWorkspace(image.shape)
            got[final] = strong_pixels(image, mask, "dispersion_extended", workspace=ws, final=final).copy()
            # the tiles trail the packed pass (`kernels.extended_trailing`) and follow the banded one
            assert ws.last_final in ({"trailing", "tiles"} if final == "tiles" else {"rows"})
        np.testing.assert_array_equal(got["rows"], got["tiles"])
        assert got["tiles"].size > 0


def test_dense_core_pixels_take_the_rows():
    """`final_path`: thousands of spots per 4M frame (core pixels over ~1% of the rows their
    windows reach) take the rows, a few hundred the tiles; no core pixels, the tiles."""
    rng = np.random.default_rng(1)
    image = np.zeros((300, 2068), np.uint32)
    dense = np.flatnonzero(rng.random(image.shape) < 0.03).astype(np.int32)
    sparse = dense[::10].copy()
    assert final_path(image, -1.0, 2.0**31, 5, 5, dense, len(dense)) == "rows"
    assert final_path(image, -1.0, 2.0**31, 5, 5, sparse, len(sparse)) == "tiles"
    assert final_path(image, -1.0, 2.0**31, 5, 5, dense[:0], 0) == "tiles"
    assert final_path(image.astype(np.float32), -1.0, 2.0**31, 5, 5, dense, len(dense)) == "tiles"
    assert final_path(image, -1.0, 2.0**31, 5, 5, sparse, len(sparse), "rows") == "rows"
    assert final_path(image, -1.0, 2.0**31, 5, 5, dense, len(dense), "tiles") == "tiles"
    assert final_path(image.astype(np.float32), -1.0, 2.0**31, 5, 5, dense, len(dense), "rows") == "tiles"
    with pytest.raises(ValueError):
        final_path(image, -1.0, 2.0**31, 5, 5, dense, len(dense), "fast")
    ws = DispersionWorkspace((150, 170))
    image, mask = spotty_frame((150, 170), 400, rng)
    image.flags.writeable = False
    strong_pixels(image, mask, "dispersion_extended", workspace=ws, path="banded")
    assert ws.last_final == "rows"
    quiet, _ = spotty_frame((150, 170), 5, rng)
    quiet.flags.writeable = False
    quiet_ws = DispersionWorkspace(quiet.shape)
    strong_pixels(quiet, mask, "dispersion_extended", workspace=quiet_ws)
    assert quiet_ws.last_final == "trailing"  # the packed pass's frames: the tiles trail it, never the rows
    strong_pixels(image, mask, "dispersion", workspace=ws)  # the classic algorithm has no final test
    assert ws.last_final == ""


def test_no_core_pixels_none_strong():
    image = np.ones((20, 30), np.uint16)
    flag = np.zeros(image.shape, np.uint8)
    core = np.zeros(0, np.int32)
    assert extended_final_rows(image, np.ones(image.shape, np.uint8), -1.0, 65535.0, 5, 5, 3.0, 1.0, 0.0, flag,
                               core, 0, core) == 0
