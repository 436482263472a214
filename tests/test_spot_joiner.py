"""The incremental 3D spot joiner gives exactly what 3D labelling of the whole stack gives."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.centroids import spot_filter, spot_moments
from kernels.labelling import label_pixels
from streamer.series import SeriesInfo
from streamer.spot_joiner import SpotJoiner, SpotJoinerStage


def stack_of_spots(nz=12, ny=40, nx=50, n_spots=40, seed=0):
    """Strong-pixel stack: random ellipsoidal blobs spanning 1-4 images plus noise pixels."""
    rng = np.random.default_rng(seed)
    values = np.zeros((nz, ny, nx))
    zz, yy, xx = np.mgrid[0:nz, 0:ny, 0:nx]
    for _ in range(n_spots):
        c = rng.uniform([0, 0, 0], [nz, ny, nx])
        r = rng.uniform([0.5, 1.0, 1.0], [2.0, 3.0, 3.0])
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        values[inside] += rng.uniform(10, 500)
    noise = rng.random(values.shape) < 0.01
    values[noise] += rng.uniform(5, 50, noise.sum())
    return values


def reference_3d(values, min_size=3, max_size=1000, max_sep=2.0, still=False):
    """Whole-stack labelling (3D, or 2D per image for stills) -> sorted spot rows."""
    rows = []
    planes = [values[z:z + 1] for z in range(values.shape[0])] if still else [values]
    for z0, block in enumerate(planes):
        index = np.flatnonzero(block)
        labels, n = label_pixels(index, block.shape)
        m = spot_moments(index, block.reshape(-1)[index], labels, n, block.shape)
        keep = spot_filter(m, min_size, max_size, max_sep)
        offset = z0 if still else 0
        for k in np.flatnonzero(keep):
            rows.append((m.centroid[k, 0], m.centroid[k, 1], m.centroid[k, 2] + offset, m.intensity[k],
                         m.n_pixels[k], *m.bbox[k, :4], m.bbox[k, 4] + offset, m.bbox[k, 5] + offset))
    return sorted(rows)


def joiner_rows(spots):
    return sorted(zip(spots.x_px, spots.y_px, spots.z_image, spots.intensity, spots.n_pixels,
                      *spots.bbox.T))


def feed(joiner, values, order):
    parts = []
    for z in order:
        index = np.flatnonzero(values[z])
        parts.append(joiner.add(int(z), index, values[z].reshape(-1)[index]))
    parts.append(joiner.finish())
    return parts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_order_equals_whole_stack_labelling(seed):
    values = stack_of_spots(seed=seed)
    joiner = SpotJoiner(values.shape[1:])
    parts = feed(joiner, values, range(values.shape[0]))
    got = [row for p in parts for row in joiner_rows(p)]
    ref = reference_3d(values)
    assert len(ref) > 10
    np.testing.assert_allclose(np.array(sorted(got)), np.array(ref), rtol=0, atol=1e-9)


def test_out_of_order_arrival_and_early_emission():
    values = stack_of_spots(nz=10, seed=5)
    joiner = SpotJoiner(values.shape[1:])
    order = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    parts = feed(joiner, values, order)
    got = sorted(row for p in parts for row in joiner_rows(p))
    np.testing.assert_allclose(np.array(got), np.array(reference_3d(values)), atol=1e-9)
    # spots were emitted before the end: all of them ended before the last image
    assert sum(len(p) for p in parts[:-1]) > 0


def test_missing_image_ends_spots_like_an_empty_image():
    values = stack_of_spots(nz=8, seed=7)
    joiner = SpotJoiner(values.shape[1:])
    parts = feed(joiner, values, [0, 1, 2, 4, 5, 6, 7])  # image 3 never comes
    got = sorted(row for p in parts for row in joiner_rows(p))
    gapped = values.copy()
    gapped[3] = 0
    np.testing.assert_allclose(np.array(got), np.array(reference_3d(gapped)), atol=1e-9)


def test_stills_are_not_joined_across_images():
    values = stack_of_spots(nz=5, seed=3)
    joiner = SpotJoiner(values.shape[1:], still=True)
    parts = feed(joiner, values, range(5))
    got = sorted(row for p in parts for row in joiner_rows(p))
    np.testing.assert_allclose(np.array(got), np.array(reference_3d(values, still=True)), atol=1e-9)


def test_duplicate_image_is_ignored():
    values = stack_of_spots(nz=3, seed=4)
    joiner = SpotJoiner(values.shape[1:])
    index = np.flatnonzero(values[0])
    joiner.add(0, index, values[0].reshape(-1)[index])
    assert len(joiner.add(0, index, values[0].reshape(-1)[index])) == 0


def test_collector_stage_reads_frame_results():
    values = stack_of_spots(nz=6, seed=8)
    series = SeriesInfo("s", "simulator", values.shape[1:], "<u4", n_images=6, omega_increment_deg=0.1)

    class Result:  # the fields of pipeline_messages.FrameResult the stage reads
        def __init__(self, z):
            index = np.flatnonzero(values[z])
            self.image_number = z
            self.spots = {"pixel_index": index, "pixel_value": values[z].reshape(-1)[index]}

    stage = SpotJoinerStage(series)
    for z in range(6):
        stage.add(series, Result(z))
    assert stage.finish() == {}
    np.testing.assert_allclose(np.array(joiner_rows(stage.spots())), np.array(reference_3d(values)), atol=1e-9)
