"""Connected-component labelling of a sparse list of strong pixels (2D or 3D).

Follows DIALS 3.12 `PixelListLabeller.labels_2d/labels_3d` (dials/model/data/pixel_list.h):
pixels are neighbours when they differ by one step along x, y (2D: 4-connectivity) or also
z, the image number (3D: 6-connectivity); diagonal pixels are *not* connected. Only the
sorted list of strong pixels is visited (two forward pointers find the pixel below and the
one on the next image), with union-find. Components are numbered in the order of their
first pixel in (z, y, x) order, which is the order DIALS's connected_components gives.
"""

from __future__ import annotations

import numpy as np

from kernels.jit import njit


@njit
def _find(parent, i):
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        nxt = parent[i]
        parent[i] = root
        i = nxt
    return root


@njit
def _union(parent, a, b):
    ra = _find(parent, a)
    rb = _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit
def _label(index, nz, ny, nx, labels, parent):
    """labels[i] = component of pixel i (flat index z*ny*nx + y*nx + x, ascending); returns
    the number of components, or -1 if `index` is not strictly ascending."""
    n = index.shape[0]
    for i in range(n):
        parent[i] = i
    plane = ny * nx
    j2 = 0
    j3 = 0
    previous = np.int64(-1)
    row_start = np.int64(0)
    row_end = np.int64(0)  # [row_start, row_end): the row of the pixel; found by division only on a new row
    y = np.int64(0)
    z = np.int64(0)
    for i in range(n):
        p = np.int64(index[i])
        if p <= previous:
            return -1
        previous = p
        if p >= row_end:
            row = p // nx
            row_start = row * nx
            row_end = row_start + nx
            z = row // ny
            y = row - z * ny
        if p + 1 < row_end and i + 1 < n and index[i + 1] == p + 1:
            _union(parent, i, i + 1)
        if y < ny - 1:
            target = p + nx
            if j2 < i:
                j2 = i
            while j2 < n and index[j2] < target:
                j2 += 1
            if j2 < n and index[j2] == target:
                _union(parent, i, j2)
        if z < nz - 1:
            target = p + plane
            if j3 < j2:
                j3 = j2
            while j3 < n and index[j3] < target:
                j3 += 1
            if j3 < n and index[j3] == target:
                _union(parent, i, j3)
    count = 0
    for i in range(n):
        r = _find(parent, i)
        if r == i:
            labels[i] = count
            count += 1
        else:
            labels[i] = labels[r]  # r < i: its label is already set
    return count


def label_pixels(index: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """Component labels (int32, one per pixel) and their number.

    `index`: strictly ascending flat indices (int32 or int64) into an image (`shape` = (ny, nx),
    2D, 4-connected) or a stack of consecutive images (`shape` = (nz, ny, nx), 3D, 6-connected).
    """
    if len(shape) == 2:
        nz, (ny, nx) = 1, shape
    elif len(shape) == 3:
        nz, ny, nx = shape
    else:
        raise ValueError(f"shape must be (ny, nx) or (nz, ny, nx), not {shape}")
    index = np.asarray(index)
    if index.dtype not in (np.int32, np.int64):
        index = index.astype(np.int64)
    index = np.ascontiguousarray(index)
    if index.ndim != 1:
        raise ValueError("index must be 1D")
    labels = np.empty(index.size, dtype=np.int32)
    if index.size == 0:
        return labels, 0
    if index[0] < 0 or index[-1] >= nz * ny * nx:
        raise ValueError("index must be strictly ascending flat indices inside the shape")
    n = _label(index, int(nz), int(ny), int(nx), labels, np.empty(index.size, dtype=np.int64))
    if n < 0:
        raise ValueError("index must be strictly ascending flat indices inside the shape")
    return labels, int(n)
