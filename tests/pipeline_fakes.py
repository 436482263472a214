"""Stand-ins for the per-image stage in pipeline tests (never used by the product).

`CountingAnalyser` reports as n_spots the number of pixels above 1000 counts, which a test
knows from how it made the frame; `raw_decode` copies "raw" frames into the worker's buffer.
Both raise BadFrame like the real ones for frames they cannot use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.errors import BadFrame
from streamer.series import EncodedFrame, SeriesInfo

HOT = 1000


@dataclass(frozen=True)
class CountingResult:
    image_number: int
    phi_deg: float
    n_spots: int
    total_intensity: float
    estimated_d_min: float | None
    ice_rings: int
    radial_profile: np.ndarray
    spots: dict


class CountingAnalyser:
    def __init__(self, series: SeriesInfo, config=None):
        self.series = series

    def analyse(self, image: np.ndarray, image_number: int) -> CountingResult:
        if image.shape != self.series.image_shape:
            raise BadFrame(f"shape {image.shape} is not the series' {self.series.image_shape}", reason="wrong_shape")
        if np.all(image == 0):
            raise BadFrame("all pixels are zero", reason="empty_frame")
        rows, cols = np.nonzero(image > HOT)
        return CountingResult(
            image_number=image_number,
            phi_deg=self.series.phi_deg(image_number),
            n_spots=int(rows.size),
            total_intensity=float(image.sum(dtype=np.float64)),
            estimated_d_min=2.0 + image_number * 0.01,
            ice_rings=0,
            radial_profile=image.mean(axis=0).astype("<f4"),
            spots={"x_px": cols.astype("<f4") + 0.5, "y_px": rows.astype("<f4") + 0.5,
                   "intensity": image[rows, cols].astype("<f4")},
        )


class FailingAnalyser(CountingAnalyser):
    """A bug stand-in: set-up fails for series "broken", analysis for image 1."""

    def __init__(self, series: SeriesInfo, config=None):
        if series.series_id == "broken":
            raise ZeroDivisionError("set-up bug")
        super().__init__(series, config)

    def analyse(self, image: np.ndarray, image_number: int) -> CountingResult:
        if image_number == 1:
            raise IndexError("analysis bug")
        return super().analyse(image, image_number)


def raw_decode(frame: EncodedFrame, out: np.ndarray | None = None) -> np.ndarray:
    if frame.encoding != "raw":
        raise BadFrame(f"unknown encoding {frame.encoding!r}", reason="unknown_encoding")
    data = np.frombuffer(frame.data, dtype=np.uint8)
    expected = int(np.prod(frame.shape)) * np.dtype(frame.dtype).itemsize
    if data.nbytes != expected:
        raise BadFrame(f"{data.nbytes} bytes for a {expected}-byte frame", reason="corrupt_compression")
    image = data.view(np.dtype(frame.dtype)).reshape(frame.shape)
    if out is None:
        return image.copy()
    out[...] = image
    return out


def make_series(series_id: str = "s1", n_images: int = 10, shape=(64, 48)) -> SeriesInfo:
    return SeriesInfo(series_id=series_id, source="simulator", image_shape=shape, dtype="<u2", n_images=n_images,
                      omega_start_deg=10.0, omega_increment_deg=0.1,
                      pixel_mask=np.zeros(shape, dtype="<u4"))


def make_frame(series: SeriesInfo, image_number: int, n_hot: int, encoding: str = "raw") -> EncodedFrame:
    """A frame with exactly `n_hot` pixels above HOT on a flat background of 10."""
    image = np.full(series.image_shape, 10, dtype="<u2")
    rng = np.random.default_rng(image_number)
    flat = rng.choice(image.size, size=n_hot, replace=False)
    image.reshape(-1)[flat] = HOT + 1 + image_number
    return EncodedFrame(series.series_id, image_number, series.image_shape, "<u2", encoding, image.tobytes())


WORKER_ARGS = ["--analyser", "pipeline_fakes:CountingAnalyser", "--decoder", "pipeline_fakes:raw_decode"]


class SlowCountingAnalyser(CountingAnalyser):
    """CountingAnalyser taking 30 ms per frame, so frames queue up at the workers."""

    def analyse(self, image: np.ndarray, image_number: int) -> CountingResult:
        import time

        time.sleep(0.03)
        return super().analyse(image, image_number)


class DecodeOnlyAnalyser:
    """No analysis at all: measures the plumbing (receive, fan-out, decode, collect) alone."""

    def __init__(self, series: SeriesInfo, config=None):
        self.series = series

    def analyse(self, image: np.ndarray, image_number: int) -> dict:
        return {"image_number": image_number, "n_spots": 0}


class SlowSetUpAnalyser(CountingAnalyser):
    """Set-up takes 2.5 s for series 'slow' (a big detector, a dtype compiled on first use) and
    each of its frames 0.2 s: frames arrive while the workers are still setting up."""

    def __init__(self, series: SeriesInfo, config=None):
        import time

        if series.series_id == "slow":
            time.sleep(2.5)
        super().__init__(series, config)

    def analyse(self, image: np.ndarray, image_number: int) -> CountingResult:
        import time

        if self.series.series_id == "slow":
            time.sleep(0.2)
        return super().analyse(image, image_number)


class StuckAnalyser(CountingAnalyser):
    """Never returns image 2 in time (a worker stuck on a frame)."""

    def analyse(self, image: np.ndarray, image_number: int) -> CountingResult:
        import time

        if image_number == 2:
            time.sleep(60)
        return super().analyse(image, image_number)


class CountingStage:
    """A sweep stage that counts the images it is given (`stage_images` at the end) and calls
    `wait()` before taking each: a slow or stuck stage. Give it as
    `functools.partial(CountingStage, wait=...)`."""

    def __init__(self, series: SeriesInfo, wait=lambda: None):
        self.n = 0
        self.wait = wait

    def add(self, series: SeriesInfo, result) -> None:
        self.wait()
        self.n += 1

    def finish(self) -> dict:
        return {"stage_images": self.n}
