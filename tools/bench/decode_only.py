"""A per-image analyser that does almost nothing, for measuring the pipeline around the analysis.

`xtalstream bench e2e --analyser tools.bench.decode_only:DecodeOnlyAnalyser` runs the full
receiver -> workers -> collector layout with this in place of `streamer.perimage.ImageAnalyser`:
the worker still decodes every frame (its decoder runs before any analyser), and the result has
the real result's shape (an `ImageResult` with an empty spot table and a radial profile), so
what is measured is the ceiling the pipeline itself allows. The only figure computed is the mean
of a sparse sample of pixels (every 64th row), which reads the decoded frame without costing
more than a few microseconds.
"""

from __future__ import annotations

import numpy as np

from streamer.errors import BadFrame
from streamer.image_result import ImageResult, SpotTable
from streamer.series import SeriesInfo

ROW_STEP = 64
PROFILE_BINS = 100  # about what a 4M detector's radial profile has at the default bin width


class DecodeOnlyAnalyser:
    """Same interface as `streamer.perimage.ImageAnalyser`: built per series, `analyse` per frame."""

    def __init__(self, series: SeriesInfo, config=None):
        self.series = series
        self.shape = tuple(int(n) for n in series.image_shape)
        self.profile = np.full(PROFILE_BINS, np.nan, dtype=np.float32)

    def analyse(self, image: np.ndarray, image_number: int) -> ImageResult:
        if tuple(image.shape) != self.shape:
            raise BadFrame(f"frame shape {image.shape} differs from the series {self.shape}", reason="wrong_shape")
        background = float(image[::ROW_STEP].mean(dtype=np.float64))
        return ImageResult(
            image_number=int(image_number), phi_deg=float(self.series.phi_deg(image_number + 0.5)),
            n_spots=0, n_spots_no_ice=0, n_spots_4A=0, total_intensity=0.0, estimated_d_min=-1.0,
            background=background, n_overloads=0, ice_rings=0, strong_pixels=0,
            radial_profile=self.profile, spots=SpotTable.empty(),
        )
