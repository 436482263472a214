"""`bench perimage`'s DIALS comparisons: what each side's timed call includes (reads counted,
spots found on the same frames), never how fast it is; and its memory-bandwidth copy."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from conftest import needs_dials

from streamer import codecs
from streamer.config import load_config
from streamer.series import EncodedFrame
from tools.bench import dials_compare, memcopy, perimage
from tools.bench.decode import SHAPES, realistic_frame


def test_no_dials_gives_a_note(monkeypatch):
    monkeypatch.setattr(dials_compare.shutil, "which", lambda name: None)
    note = "dials.find_spots not on PATH: no DIALS comparison"
    assert dials_compare.thaumatin_6m(load_config(None)) == {"dials_note_6M": note}
    assert dials_compare.same_frames([], [], perimage.series_for((4, 4)), load_config(None), "4M") == {
        "dials_note": note}


def test_memory_copy_pool_is_twice_the_cache():
    for frame_bytes, cache in [(17_881_952, 32 << 20), (72_373_104, 32 << 20), (1000, 1 << 20), (1 << 20, 1 << 20)]:
        pairs = memcopy.copy_pool_pairs(frame_bytes, cache)
        assert pairs >= 2 and 2 * pairs * frame_bytes >= 2 * cache
        assert pairs == 2 or 2 * (pairs - 1) * frame_bytes < 2 * cache
    frame = np.arange(64 * 1024, dtype=np.uint32).reshape(256, 256)
    rate, median = memcopy.memory_copy_rate(frame, 3)
    assert rate > 0 and median > 0


def test_benchmark_frames_have_the_detector_gaps():
    frame = realistic_frame("4M", seed=3)
    assert frame.shape == SHAPES["4M"] == (2162, 2068)
    assert np.all(frame[512:550, :] == 0xFFFFFFFF) and np.all(frame[:, 1028:1040] == 0xFFFFFFFF)
    assert np.count_nonzero(frame == 0xFFFFFFFF) == 38 * 3 * 2068 + 12 * (2162 - 38 * 3)
    assert 0.2 < np.median(frame[:512, :1028]) + frame[:512, :1028].mean() < 1.0
    mask = perimage.series_for(SHAPES["4M"], "4M").pixel_mask  # the header masks them, as a detector's does
    assert np.array_equal(mask != 0, frame == 0xFFFFFFFF)


@pytest.mark.slow
@pytest.mark.dials
@needs_dials()
def test_same_frames_give_the_same_spots_in_dials_and_ours():
    """The benchmark's own frames, read by DIALS as EIGER miniCBFs (gaps masked by its detector
    model), and decoded by us from bitshuffle-LZ4: the same spot count per frame."""
    frames = [realistic_frame("4M", seed=i) for i in range(2)]
    shape = SHAPES["4M"]
    encoded = [EncodedFrame("t", i, shape, "<u4", "bslz4", codecs.encode(f, "bslz4")) for i, f in enumerate(frames)]
    figures = dials_compare.same_frames(frames, encoded, perimage.series_for(shape), load_config(None), "4M",
                                        repeats=1)
    assert figures["dials_frames"] == 2, figures
    assert figures["dials_spots_per_frame"] > 100
    assert figures["ours_spots_per_frame"] == figures["dials_spots_per_frame"]
    for key in ("dials_ratio", "dials_ratio_in_memory", "dials_ratio_with_statistics", "dials_read_ms"):
        assert math.isfinite(figures[key]) and figures[key] > 0, key


@pytest.mark.slow
@pytest.mark.dials
@needs_dials()
def test_thaumatin_comparison_reads_afresh_and_finds_the_reference_spots(shared_data):
    """DIALS reads each CBF once per timed call in the reading comparison and never in the
    in-memory one; its spots are those of the reference runs (dials.find_spots on each image),
    so the timed calls search the whole detector, as the command does."""
    with open(shared_data / "real-images" / "dials-spots" / "per_image_analysis.csv") as f:
        reference = {row["file"]: int(row["n_spots_total"]) for row in csv.DictReader(f)
                     if row["threshold_algorithm"] == "dispersion_extended"}
    figures = dials_compare.thaumatin_6m(load_config(None), n_images=2, repeats=1)
    assert figures["dials_images_6M"] == 2, figures
    assert figures["dials_reads_per_frame_6M"] == 1 and figures["dials_in_memory_reads_per_frame_6M"] == 0
    expected = (reference["thau_3_2_0001.cbf"] + reference["thau_3_2_0002.cbf"]) / 2
    assert figures["dials_spots_per_frame_6M"] == expected
    assert figures["ours_spots_per_frame_6M"] == pytest.approx(expected, rel=0.05)
    for key in ("dials_ratio_6M", "dials_ratio_in_memory_6M", "dials_ratio_with_statistics_6M", "ours_read_ms_6M",
                "fabio_read_ms_6M", "dials_read_ms_6M"):
        assert math.isfinite(figures[key]) and figures[key] > 0, key


def test_shared_data_is_found_from_the_working_directory(tmp_path, monkeypatch):
    """An installed (non-editable) package lives in site-packages: the real CBFs are looked for
    beside the working directory too, and where $XTALSTREAM_SHARED says."""
    folder = tmp_path / "shared" / dials_compare.THAUMATIN
    folder.mkdir(parents=True)
    (tmp_path / "project").mkdir()
    monkeypatch.delenv("XTALSTREAM_SHARED", raising=False)
    monkeypatch.chdir(tmp_path / "project")
    assert dials_compare.shared_thaumatin() == folder
    monkeypatch.chdir(tmp_path)
    assert dials_compare.shared_thaumatin() == tmp_path / "shared" / dials_compare.THAUMATIN
    monkeypatch.setenv("XTALSTREAM_SHARED", str(tmp_path / "elsewhere"))
    assert dials_compare.shared_thaumatin() == tmp_path / "elsewhere" / dials_compare.THAUMATIN


def test_bench_help_lists_the_benchmarks_options_and_bad_counts_exit_2(capsys):
    from tools import bench

    assert bench.main(["perimage", "--help"]) == 0
    assert "--frames" in capsys.readouterr().out
    assert bench.main(["--help"]) == 0
    assert "perimage" in capsys.readouterr().out
    for bad in (["decode", "--frames", "0"], ["e2e", "--workers", "0"], []):
        assert bench.main(bad) == 2, bad
        capsys.readouterr()
