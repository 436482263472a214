"""Sparse connected-component labelling against scipy.ndimage.label on dense images."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from kernels.labelling import label_pixels


def dense_reference(strong: np.ndarray) -> np.ndarray:
    """Labels (0-based) per strong pixel in raster order: 4-connected in 2D, 6-connected in 3D."""
    structure = ndimage.generate_binary_structure(strong.ndim, 1)
    labelled, _ = ndimage.label(strong, structure=structure)
    return labelled.reshape(-1)[np.flatnonzero(strong)] - 1


@pytest.mark.parametrize("shape", [(1, 1), (5, 1), (1, 7), (37, 53), (4, 9, 11)])
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.6, 1.0])
def test_matches_scipy(shape, fraction):
    rng = np.random.default_rng(len(shape) * 100 + int(fraction * 10))
    strong = rng.random(shape) < fraction
    labels, n = label_pixels(np.flatnonzero(strong), shape)
    ref = dense_reference(strong)
    np.testing.assert_array_equal(labels, ref)
    assert n == (ref.max() + 1 if ref.size else 0)


def test_diagonal_pixels_are_separate_and_rows_do_not_wrap():
    strong = np.zeros((4, 5), bool)
    strong[0, 0] = strong[1, 1] = True  # diagonal: two spots (DIALS 4-connectivity)
    strong[2, 4] = strong[3, 0] = True  # consecutive flat indices on different rows
    labels, n = label_pixels(np.flatnonzero(strong), strong.shape)
    assert n == 4 and list(labels) == [0, 1, 2, 3]


def test_3d_links_same_pixel_on_next_image_only():
    stack = np.zeros((3, 4, 4), bool)
    stack[0, 1, 1] = stack[1, 1, 1] = True  # same pixel, consecutive images: one spot
    stack[1, 3, 3] = stack[2, 2, 2] = True  # diagonal in z: two spots
    labels, n = label_pixels(np.flatnonzero(stack), stack.shape)
    assert n == 3 and list(labels) == [0, 0, 1, 2]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_index_dtypes_give_the_same_labels(dtype):
    rng = np.random.default_rng(3)
    strong = rng.random((3, 40, 50)) < 0.4
    labels, n = label_pixels(np.flatnonzero(strong).astype(dtype), strong.shape)
    np.testing.assert_array_equal(labels, dense_reference(strong))


def test_bad_input():
    with pytest.raises(ValueError):
        label_pixels(np.array([3, 2]), (4, 4))
    with pytest.raises(ValueError):
        label_pixels(np.array([1, 5, 9, 9, 12], dtype=np.int32), (4, 4))  # not ascending, inside
    with pytest.raises(ValueError):
        label_pixels(np.array([-1, 3]), (4, 4))
    with pytest.raises(ValueError):
        label_pixels(np.array([16]), (4, 4))
    with pytest.raises(ValueError):
        label_pixels(np.array([1]), (4,))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 100_000), nz=st.integers(1, 4), ny=st.integers(1, 20), nx=st.integers(1, 20),
       fraction=st.floats(0.0, 1.0))
def test_property_every_labelled_pixel_is_strong_and_partition_matches(seed, nz, ny, nx, fraction):
    strong = np.random.default_rng(seed).random((nz, ny, nx)) < fraction
    index = np.flatnonzero(strong)
    labels, n = label_pixels(index, strong.shape)
    assert labels.size == index.size and np.all(strong.reshape(-1)[index])
    np.testing.assert_array_equal(labels, dense_reference(strong))
    if n:  # labels are numbered by first pixel
        first = [index[labels == k][0] for k in range(n)]
        assert first == sorted(first)
