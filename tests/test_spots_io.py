"""spots.csv / per_image.csv writers: the values survive the text."""

import csv
import math

import numpy as np

from streamer.spots_io import PER_IMAGE_COLUMNS, PerImageWriter, SpotsWriter, read_spots_csv


def test_per_image_cells_keep_their_values(tmp_path):
    path = tmp_path / "per_image.csv"
    with PerImageWriter(path) as writer:
        writer.write({"image": 0, "phi": 0.30000000000000004, "n_spots": 1313, "n_spots_no_ice": 1169,
                      "n_spots_4A": 270, "total_intensity": 48390505.0, "estimated_d_min": 1.726412345678,
                      "background": np.float64(0.3125), "n_overloads": 0, "ice_rings": "",
                      "n_integrated": None, "mean_i_over_sigma": math.nan})
        writer.write({"image": 1, "phi": 0.4, "total_intensity": 123456789012.75, "estimated_d_min": -1.0})
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == PER_IMAGE_COLUMNS
    first, second = rows
    assert first["total_intensity"] == "48390505"  # exact, not 4.83905e+07
    assert first["phi"] == "0.3"
    assert float(first["estimated_d_min"]) == 1.726412346
    assert first["background"] == "0.3125"
    assert first["n_integrated"] == first["mean_i_over_sigma"] == first["scale"] == ""
    assert float(second["total_intensity"]) == 123456789000.0  # 10 significant digits
    assert second["estimated_d_min"] == "-1"


def test_spots_round_trip(tmp_path):
    path = tmp_path / "spots.csv"
    with SpotsWriter(path) as writer:
        writer.write(np.array([10.25, 3.5]), np.array([20.75, 4.5]), np.array([0.5, 3.9999]),
                     np.array([1234.5, 99.0]), np.array([7, 2]))
        assert writer.n_written == 2
    spots = read_spots_csv(path)
    assert spots["image"].tolist() == [0, 3]
    assert spots["x_px"].tolist() == [10.25, 3.5]
    assert spots["z_image"].tolist() == [0.5, 3.9999]
    assert spots["intensity"].tolist() == [1234.5, 99.0]
    assert spots["n_pixels"].tolist() == [7, 2]
