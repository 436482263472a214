"""The static pixel mask of a series, built once: detector mask and gaps, user masks, resolution limits.

`SeriesMask.build(series, mask_config, d_min, d_max, resolution_map)` gives a uint8 array
(1 = usable) combining
- the detector's pixel mask (any bit set in `SeriesInfo.pixel_mask` excludes the pixel);
- the module gaps of a PILATUS detector (modules of 487 x 195 pixels separated by 7 columns
  and 17 rows, as dxtbx's PILATUS formats mask them) when the image size fits that layout,
  and of an EIGER's miniCBF (1030 x 514 pixels, gaps 10 and 37; EIGER2: 1028 x 512, 12 and 38;
  as dxtbx's FormatCBFMiniEiger masks them, whatever values a converted image holds there);
- user masks (`MaskConfig`): untrusted rectangles [x0, x1, y0, y1) (half-open pixel
  ranges), circles (x, y, radius; pixel centres within the radius) and polygons (pixel centres
  inside, even-odd rule), in pixel coordinates (x fast, y slow, pixel centre at +0.5);
- resolution limits: pixels whose centre is at d < d_min or d > d_max (Angstrom).

Per frame the values themselves decide the rest (`trusted_range`): DIALS excludes pixels
outside the open interval (-1, saturation), which covers PILATUS's -1 (gap) and -2 (bad)
markers, EIGER's all-ones "invalid" value and overloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.config import MaskConfig
from streamer.errors import BadFrame
from streamer.series import SeriesInfo

PILATUS_MODULE = (487, 195)  # (fast, slow) pixels
PILATUS_GAP = (7, 17)
# EIGER X and EIGER2 X modules and gaps (fast, slow), 1 to 4 modules wide (dxtbx's FormatPilatusHelpers)
EIGER_LAYOUTS = (((1030, 514), (10, 37)), ((1028, 512), (12, 38)))


def eiger_gap_mask(image_shape: tuple[int, int]) -> np.ndarray | None:
    """uint8 mask (0 in the gaps) for the EIGER layout whose width is this image's, or None."""
    nx = image_shape[1]
    for module, gap in EIGER_LAYOUTS:
        if nx in [module[0] * j + gap[0] * (j - 1) for j in (1, 2, 3, 4)]:
            return module_gap_mask(image_shape, module, gap)
    return None


def module_gap_mask(image_shape: tuple[int, int], module: tuple[int, int] = PILATUS_MODULE,
                     gap: tuple[int, int] = PILATUS_GAP) -> np.ndarray | None:
    """uint8 mask (0 in the gaps) for a module layout (PILATUS by default) of this size, or None
    if it does not fit."""
    ny, nx = image_shape
    (mx, my), (gx, gy) = module, gap
    if (nx + gx) % (mx + gx) or (ny + gy) % (my + gy):
        return None
    mask = np.ones(image_shape, dtype=np.uint8)
    for x0 in range(mx, nx, mx + gx):
        mask[:, x0:x0 + gx] = 0
    for y0 in range(my, ny, my + gy):
        mask[y0:y0 + gy, :] = 0
    return mask


def _polygon_inside(xc: np.ndarray, yc: np.ndarray, vertices: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule for points (xc, yc) against a closed polygon."""
    inside = np.zeros(np.broadcast(xc, yc).shape, dtype=bool)
    n = len(vertices)
    for k in range(n):
        x1, y1 = vertices[k]
        x2, y2 = vertices[(k + 1) % n]
        if y1 == y2:
            continue
        crosses = (yc >= min(y1, y2)) & (yc < max(y1, y2))
        x_cross = x1 + (yc - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (xc < x_cross)
    return inside


def user_mask(image_shape: tuple[int, int], config: MaskConfig) -> np.ndarray:
    """uint8 mask (0 = excluded by the user's border, rectangles, circles and polygons)."""
    ny, nx = image_shape
    mask = np.ones(image_shape, dtype=np.uint8)
    if config.border:
        b = config.border
        mask[:b], mask[ny - b:], mask[:, :b], mask[:, nx - b:] = 0, 0, 0, 0
    for x0, x1, y0, y1 in config.untrusted_rectangles:
        mask[max(y0, 0):max(min(y1, ny), 0), max(x0, 0):max(min(x1, nx), 0)] = 0
    if config.untrusted_circles or config.untrusted_polygons:
        yc = np.arange(ny, dtype=np.float64)[:, None] + 0.5
        xc = np.arange(nx, dtype=np.float64)[None, :] + 0.5
        for x, y, radius in config.untrusted_circles:  # as DIALS's untrusted.circle: the pixel's index, not its centre
            mask[(xc - 0.5 - x) ** 2 + (yc - 0.5 - y) ** 2 < radius * radius] = 0
        for polygon in config.untrusted_polygons:
            if len(polygon) >= 3:
                mask[_polygon_inside(xc, yc, list(polygon))] = 0
    return mask


def trusted_range(series: SeriesInfo) -> tuple[float, float]:
    """Open interval of usable pixel values (DIALS/dxtbx: (underload - 1, saturation), the
    underload 0 unless the series says otherwise, as pedestal-subtracted SMV images do).

    Without a saturation value in the header, integer images exclude their all-ones value
    (the DECTRIS invalid/overload marker) and float images nothing above.
    """
    dt = np.dtype(series.dtype)
    if series.saturation_value is not None and series.saturation_value > 0:
        upper = float(series.saturation_value)
    elif dt.kind in "iu":
        upper = float(np.iinfo(dt).max)
    else:
        upper = float("inf")
    lower = -1.0 if series.underload_value is None else float(series.underload_value) - 1.0
    return lower, upper


DECTRIS_SOURCES = ("stream-v1", "stream-v2", "simulator")  # the SIMPLON streams and our EIGER-like simulator


def inactive_value(series: SeriesInfo) -> int | None:
    """The value a DECTRIS detector gives the pixels its pixel mask flags (gaps, dead, hot
    pixels): all ones of the image bit depth, 2**bit_depth_image - 1 (EIGER2 manual, "Applying
    the pixel mask"). It lies above the count cutoff (the saturation value), so it is outside
    the trusted range, but it marks an inactive pixel, not an overload: counting it as one
    would report the module gaps (260,000 pixels of a 4M) as saturation whenever the header
    comes without the mask (header detail "basic"). With the mask, the pixels it flags are
    masked anyway, and the value in any other pixel is an overload: the detector gives it to
    counts past its count-rate correction's range too (eiger2cbf and H5ToXds count them so).
    None then, for other detectors (an ADSC saturates at 65535), and when the value is not
    above the saturation value."""
    if series.pixel_mask is not None:
        return None
    dt = np.dtype(series.dtype)
    dectris = series.source in DECTRIS_SOURCES or any(
        name in series.detector_description.upper() for name in ("EIGER", "DECTRIS"))
    if dt.kind != "u" or not dectris:
        return None
    width = 8 * dt.itemsize
    bits = series.bit_depth_image if 0 < (series.bit_depth_image or 0) <= width else width
    value = (1 << bits) - 1
    if series.saturation_value is not None and series.saturation_value >= value:
        return None
    return value


@dataclass(frozen=True)
class SeriesMask:
    """The per-series static mask (uint8, 1 = usable), the trusted value range, and the value
    that marks inactive pixels (`inactive_value`)."""

    mask: np.ndarray
    trusted_range: tuple[float, float]
    n_masked: int
    inactive: int | None = None

    @classmethod
    def build(cls, series: SeriesInfo, config: MaskConfig | None = None, d_min: float | None = None,
              d_max: float | None = None, resolution_map: np.ndarray | None = None) -> SeriesMask:
        shape = tuple(series.image_shape)
        mask = np.ones(shape, dtype=np.uint8)
        if series.pixel_mask is not None:
            if tuple(series.pixel_mask.shape) != shape:
                raise BadFrame(f"pixel mask is {series.pixel_mask.shape}, images are {shape}", reason="wrong_mask_size")
            mask[series.pixel_mask != 0] = 0
        description = series.detector_description.upper()
        gaps = module_gap_mask(shape) if "PILATUS" in description else \
            eiger_gap_mask(shape) if series.source == "cbf" and "EIGER" in description else None
        if gaps is not None:
            mask &= gaps
        if config is not None:
            mask &= user_mask(shape, config)
        if d_min is not None or d_max is not None:
            if resolution_map is None or resolution_map.shape != shape:
                raise ValueError("resolution limits need a resolution map of the image shape")
            if d_min is not None:
                mask[resolution_map < d_min] = 0
            if d_max is not None:
                mask[resolution_map > d_max] = 0
        mask.setflags(write=False)
        return cls(mask, trusted_range(series), int(mask.size - np.count_nonzero(mask)), inactive_value(series))
