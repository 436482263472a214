"""CBF (PILATUS miniCBF) and SMV (ADSC, nanoBragg) headers -> SeriesInfo, as dxtbx reads them.

- miniCBF (PILATUS 1.2 header convention): "# Beam_xy (x, y) pixels" is the beam centre in
  pixel coordinates as dxtbx reads it (no half-pixel shift). PILATUS writes -1 for pixels in the
  gaps between modules and -2 for excluded (bad) pixels; these become bits 0 ("gap") and 1
  ("dead") of the pixel mask (DECTRIS bit meanings, `streamer.series.PIXEL_MASK_BITS`). The
  int32 pixels are passed on as "<u4", as a PILATUS4/EIGER detector streams them: the bytes are
  unchanged, so -1/-2 read as 2**32-1/2**32-2 and must be masked with the pixel mask. Frames
  encoded for streaming (`frame`) carry both as 2**32-1, a DECTRIS stream's inactive value.
  dxtbx reads every such miniCBF as a pixel-array detector's (DIALS's default spot size follows).
- SMV: PIXEL_SIZE, DISTANCE (mm), WAVELENGTH (A), OSC_START/OSC_RANGE (deg). The beam centre
  follows the first header convention present: DIALS_ORIGIN (mm, fast +x, slow -y: beam centre
  = -origin_x and +origin_y); MOSFLM_CENTER_X/Y as nanoBragg writes it (X along slow; pixel
  centres at +0.5, so fast = (Y + pixel/2)/pixel, slow = (X + pixel/2)/pixel, see nanoBragg.c);
  else ADSC BEAM_CENTER_X/Y read as dxtbx's FormatSMVADSC does (fast = Y/pixel, slow = X/pixel).
  The ADC offset subtracted and the detector type (which sets DIALS's default spot size) follow
  dxtbx, so that DIALS and we find the same spots with no options: images of James Holton's
  simulators (BEAMLINE=fake: nanoBragg, MLFSOM; dxtbx's FormatSMVJHSim) take their header's
  ADC_OFFSET, else 1, and count as a pixel-array detector only with 0.172 mm pixels (else a
  CCD); other SMV images (ADSC, FormatSMVADSC) take IMAGE_PEDESTAL, else 0, and are CCDs.
  nanoBragg in fact adds 40 without stating it: the `pedestal` option says so. DIALS finds
  spots on ADSC pixels divided by the CCD's gain: the header's GAIN, else a value by model,
  known from the image and pixel size (`smv_gain`; 1 for a simulator's images and for models
  it does not know); so do we (`SeriesInfo.detector_gain`).
  With an offset p the pixels become int32 counts minus p, negative below the offset (a CCD's
  read noise puts many background pixels there; clipping them at 0 would fake a dispersion of
  the background). dxtbx tests its trusted range on the counts before the offset comes off,
  with the top at the saturation value minus p: so the series' saturation value is the header's
  minus 2p, and every count at the bottom is trusted (`SeriesInfo.underload_value` -p).
- Neither header states the rotation axis: DIALS takes (1, 0, 0), whatever a miniCBF's
  Oscillation_axis says ("X.CW", "X.CCW"), except for the beamlines dxtbx knows by serial
  number (`rotation_axes`); so do we.
"""

from __future__ import annotations

import logging
import math
import re

import numpy as np

from streamer.errors import BadHeader
from streamer.series import SeriesInfo, optional_int
from streamer.sources.rotation_axes import known_rotation_axis

log = logging.getLogger(__name__)

_NUMBER = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"


def _beamline_axis(kind: str, header: str | dict[str, str],
                   default: tuple[float, float, float]) -> tuple[float, float, float]:
    """The rotation axis DIALS gives this beamline's images (`rotation_axes`), else `default`."""
    rule = known_rotation_axis(kind, header)
    if rule is None:
        return default
    log.info("rotation axis %s: %s, as dxtbx's %s takes it", rule.axis, rule.beamline, rule.dxtbx)
    return tuple(float(x) + 0.0 for x in rule.axis)


def _cbf_field(text: str, pattern: str, groups: int = 1) -> tuple[float, ...] | None:
    match = re.search(pattern, text, flags=re.MULTILINE)
    return tuple(float(match.group(i + 1)) for i in range(groups)) if match else None


def _m_to_mm(value_m: float) -> float:
    """Metres to mm, rounded to 12 significant digits (172e-6 m -> 0.172, not 0.17200000000000001)."""
    return float(f"{value_m * 1e3:.12g}")


def cbf_series_info(header_text: str, shape: tuple[int, int], n_images: int, series_id: str,
                    pixel_mask: np.ndarray | None) -> SeriesInfo:
    """SeriesInfo from a PILATUS miniCBF header ("_array_data.header_contents")."""
    text = header_text
    beam = _cbf_field(text, rf"^#\s*Beam_xy\s*\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)", 2)
    distance = _cbf_field(text, rf"^#\s*Detector_distance\s+{_NUMBER}\s*m")
    wavelength = _cbf_field(text, rf"^#\s*Wavelength\s+{_NUMBER}")
    pixel = _cbf_field(text, rf"^#\s*Pixel_size\s+{_NUMBER}\s*m\s*x\s*{_NUMBER}\s*m", 2)
    if beam is None or distance is None or wavelength is None or pixel is None:
        raise BadHeader("miniCBF header lacks Beam_xy, Detector_distance, Wavelength or Pixel_size",
                        reason="bad_geometry")
    start = _cbf_field(text, rf"^#\s*Start_angle\s+{_NUMBER}")
    increment = _cbf_field(text, rf"^#\s*Angle_increment\s+{_NUMBER}")
    exposure = _cbf_field(text, rf"^#\s*Exposure_time\s+{_NUMBER}")
    period = _cbf_field(text, rf"^#\s*Exposure_period\s+{_NUMBER}")
    cutoff = _cbf_field(text, rf"^#\s*Count_cutoff\s+{_NUMBER}")
    thickness = _cbf_field(text, rf"^#\s*\w+ sensor, thickness\s+{_NUMBER}")
    material = re.search(r"^#\s*(\w+) sensor", text, flags=re.MULTILINE)
    detector = re.search(r"^#\s*Detector:\s*([^,\n]+?)\s*(?:,\s*S/N\s*([^\s,]+))?\s*$", text, flags=re.MULTILINE)
    rotation_axis = _beamline_axis("cbf", text, (1.0, 0.0, 0.0))
    return SeriesInfo(
        series_id=series_id,
        source="cbf",
        image_shape=shape,
        dtype="<u4",
        n_images=n_images,
        detector_description=detector.group(1).strip() if detector else "",
        detector_type="PAD",  # dxtbx: every PILATUS-convention or EIGER miniCBF (whatever the detector line says)
        detector_serial=(detector.group(2) or "") if detector else "",
        sensor_material={"silicon": "Si", "cdte": "CdTe"}.get(material.group(1).lower(), material.group(1))
        if material else "",
        sensor_thickness_mm=_m_to_mm(thickness[0]) if thickness else 0.0,
        pixel_size_mm=(_m_to_mm(pixel[0]), _m_to_mm(pixel[1])),
        beam_centre_px=(beam[0], beam[1]),
        distance_mm=_m_to_mm(distance[0]),
        wavelength_A=wavelength[0],
        rotation_axis=rotation_axis,
        omega_start_deg=start[0] if start else 0.0,
        omega_increment_deg=increment[0] if increment else 0.0,
        count_time_s=exposure[0] if exposure else 0.0,
        frame_time_s=period[0] if period else 0.0,
        saturation_value=optional_int(cutoff[0]) if cutoff else None,  # 1e999 reads as infinity: none
        bit_depth_image=32,
        pixel_mask=pixel_mask,
        raw={"header": text},
    )


def smv_number(header: dict[str, str], key: str, default: float | None = None) -> float:
    """An SMV header's finite number (`default` when absent); BadHeader naming the key for text
    that is none, so that a damaged header is a message, not a traceback."""
    if key not in header:
        if default is None:
            raise BadHeader(f"SMV header lacks {key}", reason="bad_header")
        return default
    try:
        value = float(header[key])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise BadHeader(f"SMV header {key}={header[key]!r:.40} is not a number", reason="bad_header")
    return value


def smv_whole(header: dict[str, str], key: str, default: int) -> int:
    """An SMV header's whole number (rounded), `default` when absent; BadHeader for anything else."""
    value = smv_number(header, key, float(default))
    if abs(value) > 2**62:
        raise BadHeader(f"SMV header {key}={header[key]!r:.40} is not a whole number", reason="bad_header")
    return int(round(value))


def _round(px: float) -> float:
    """Header arithmetic noise off (mm / mm): 513.0000000000001 -> 513.0."""
    return round(px, 9)


def smv_beam_centre_px(header: dict[str, str], pixel_mm: float) -> tuple[float, float]:
    """Beam centre (fast, slow) in dxtbx pixel coordinates from an SMV header (see module doc)."""
    if "DIALS_ORIGIN" in header:
        ox, oy, _ = (float(v) for v in header["DIALS_ORIGIN"].split(","))
        return _round(-ox / pixel_mm), _round(oy / pixel_mm)
    if "MOSFLM_CENTER_X" in header and "MOSFLM_CENTER_Y" in header:
        x, y = float(header["MOSFLM_CENTER_X"]), float(header["MOSFLM_CENTER_Y"])
        return _round((y + 0.5 * pixel_mm) / pixel_mm), _round((x + 0.5 * pixel_mm) / pixel_mm)
    try:
        x, y = float(header["BEAM_CENTER_X"]), float(header["BEAM_CENTER_Y"])
    except (KeyError, ValueError) as exc:
        raise BadHeader("SMV header gives no beam centre", reason="bad_geometry") from exc
    return _round(y / pixel_mm), _round(x / pixel_mm)


JHSIM_ADC_OFFSET = 1  # dxtbx's FormatSMVJHSim when the header gives none (James Holton's dose-slicing images)
JHSIM_PAD_PIXEL_MM = 0.172  # FormatSMVJHSim: a simulated PILATUS (a pixel-array detector); any other pixel: a CCD


def is_jhsim(header: dict[str, str]) -> bool:
    """James Holton's simulators (nanoBragg, MLFSOM) mark their SMV headers BEAMLINE=fake."""
    return header.get("BEAMLINE") == "fake"


def smv_pedestal(header: dict[str, str]) -> int:
    """The ADC offset DIALS subtracts from an SMV image by default: a simulator's ADC_OFFSET
    (else 1), an ADSC's IMAGE_PEDESTAL (else 0). nanoBragg adds 40 without saying so."""
    key, default = ("ADC_OFFSET", JHSIM_ADC_OFFSET) if is_jhsim(header) else ("IMAGE_PEDESTAL", 0)
    return smv_whole(header, key, default)


def smv_detector_type(header: dict[str, str], pixel_mm: float) -> str:
    """"PAD" or "CCD" as dxtbx decides it (its spot-size defaults follow): SMV images are CCDs
    (ADSC), but a simulator's with PILATUS pixels."""
    return "PAD" if is_jhsim(header) and pixel_mm == JHSIM_PAD_PIXEL_MM else "CCD"


# ADU per photon of ADSC CCD models, known by (pixels along a side, pixel size in mm), binned or not:
# the values dxtbx assumes (FormatSMVADSC; "not better than 20 %" by its own account)
ADSC_GAINS = {(2304, 0.0816): 1.25,  # Quantum 4
              (4096, 0.0512): 2.4, (2048, 0.1024): 2.4,  # Quantum 210
              (6144, 0.0512): 2.4, (3072, 0.1024): 2.4,  # Quantum 315
              (4168, 0.0648): 2.8, (2084, 0.0324): 2.8}  # Quantum 270


MAX_GAIN = 1e6  # ADU per photon: a CCD's is 0.1 to 10; past this a header's GAIN is a mistake


def smv_gain(header: dict[str, str]) -> float:
    """ADU per photon of an SMV image's detector, as DIALS takes it: the header's GAIN, else
    an ADSC model's (`ADSC_GAINS`), else 1; a simulator's images (BEAMLINE=fake) count photons."""
    if is_jhsim(header):
        return 1.0
    try:
        if "GAIN" in header:
            gain = float(header["GAIN"])
            if not 0 < gain < MAX_GAIN:
                raise ValueError(gain)
            return gain
        side, other, pixel = int(header["SIZE1"]), int(header["SIZE2"]), float(header["PIXEL_SIZE"])
    except (KeyError, ValueError) as exc:
        raise BadHeader(f"SMV header gives no usable gain or size ({exc})", reason="bad_header") from exc
    return ADSC_GAINS.get((side, pixel), 1.0) if side == other else 1.0


def smv_series_info(header: dict[str, str], shape: tuple[int, int], dtype: str, n_images: int,
                    series_id: str, pedestal: int) -> SeriesInfo:
    """SeriesInfo from an SMV header (mm, Angstrom, degrees)."""
    try:
        pixel = float(header["PIXEL_SIZE"])
        distance = float(header["DISTANCE"])
        wavelength = float(header["WAVELENGTH"])
    except (KeyError, ValueError) as exc:
        raise BadHeader(f"SMV header lacks {exc}", reason="bad_geometry") from exc
    if not (pixel > 0 and math.isfinite(pixel)):  # the beam centre is given in mm
        raise BadHeader(f"SMV header PIXEL_SIZE={header['PIXEL_SIZE']!r:.40} is no pixel size", reason="bad_geometry")
    saturation = smv_whole(header, "SATURATED_VALUE", int(np.iinfo(np.dtype(dtype)).max))
    underload = None
    if pedestal:  # counts minus the offset (module docstring)
        dtype, saturation, underload = "<i4", saturation - 2 * pedestal, -pedestal
    return SeriesInfo(
        series_id=series_id,
        source="smv",
        image_shape=shape,
        dtype=dtype,
        n_images=n_images,
        detector_description=header.get("DETECTOR_NAME", header.get("BEAMLINE", "")),
        detector_type=smv_detector_type(header, pixel),
        detector_gain=smv_gain(header),
        detector_serial=header.get("DETECTOR_SN", ""),
        pixel_size_mm=(pixel, pixel),
        beam_centre_px=smv_beam_centre_px(header, pixel),
        distance_mm=distance,
        wavelength_A=wavelength,
        rotation_axis=_beamline_axis("smv", header, (1.0, 0.0, 0.0)) if not is_jhsim(header) else (1.0, 0.0, 0.0),
        omega_start_deg=smv_number(header, "OSC_START") if "OSC_START" in header else smv_number(header, "PHI", 0.0),
        omega_increment_deg=smv_number(header, "OSC_RANGE", 0.0),
        count_time_s=smv_number(header, "TIME", 0.0),
        saturation_value=saturation,
        underload_value=underload,
        bit_depth_image=np.dtype(dtype).itemsize * 8,
        raw={"header": dict(header), "pedestal": pedestal},
    )
