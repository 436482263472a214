"""`bench perimage`'s DIALS comparison: what each side's timed call includes (reads counted, spots
found on the same frames), never how fast it is."""

from __future__ import annotations

import csv
import math

import pytest
from conftest import needs_dials

from streamer.config import load_config
from tools.bench import perimage


def test_no_dials_gives_a_note(monkeypatch):
    monkeypatch.setattr(perimage.shutil, "which", lambda name: None)
    assert perimage.dials_comparison("dispersion_extended", load_config(None)) == {
        "dials_note": "dials.find_spots not on PATH: no DIALS comparison"}


@pytest.mark.slow
@pytest.mark.dials
@needs_dials()
def test_dials_comparison_reads_afresh_and_finds_the_reference_spots(shared_data):
    """DIALS reads each CBF once per timed call in the reading comparison and never in the
    in-memory one; its spots are those of the reference runs (dials.find_spots on each image),
    so the timed calls search the whole detector, as the command does."""
    with open(shared_data / "real-images" / "dials-spots" / "per_image_analysis.csv") as f:
        reference = {row["file"]: int(row["n_spots_total"]) for row in csv.DictReader(f)
                     if row["threshold_algorithm"] == "dispersion_extended"}
    figures = perimage.dials_comparison("dispersion_extended", load_config(None), n_images=2, repeats=1)
    assert figures["dials_images_6M"] == 2, figures
    assert figures["dials_reads_per_frame"] == 1 and figures["dials_in_memory_reads_per_frame"] == 0
    expected = (reference["thau_3_2_0001.cbf"] + reference["thau_3_2_0002.cbf"]) / 2
    assert figures["dials_spots_per_frame"] == expected
    assert figures["ours_spots_per_frame"] == pytest.approx(expected, rel=0.05)
    for key in ("dials_ratio", "dials_ratio_in_memory", "ours_read_ms_6M", "fabio_read_ms_6M", "dials_read_ms_6M"):
        assert math.isfinite(figures[key]) and figures[key] > 0, key
