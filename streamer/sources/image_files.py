"""CBF (PILATUS miniCBF) and SMV (ADSC, nanoBragg) image series: headers read with fabio.

Files may be bzip2- or gzip-compressed (fabio opens them transparently). Geometry comes from
the first file's header; the rotation start from the first file and the width per image from
its increment. Pixel coordinates follow dxtbx: x fast, y slow, 0-based, pixel centre at +0.5.

CBF pixels whose binary section says x-CBF_BYTE_OFFSET (32-bit elements, as every PILATUS
writes them) are decoded by `kernels.byte_offset` instead of fabio: a 6M frame in ~4 ms against
~13 ms through fabio, which spends a quarter of that on checking the MD5 digest. Here the
integrity check is that the pixels take exactly the X-Binary-Size bytes the header declares;
damaged or truncated data raises BadFrame ("corrupt_compression"). Not caught without the MD5:
damage that keeps that size (a changed 1-byte difference; a lost byte made up by the zero
padding after the data). Other CBF compressions and element types go through fabio.

- miniCBF (PILATUS 1.2 header convention): "# Beam_xy (x, y) pixels" is the beam centre in
  pixel coordinates as dxtbx reads it (no half-pixel shift). PILATUS writes -1 for pixels in the
  gaps between modules and -2 for excluded (bad) pixels; these become bits 0 ("gap") and 1
  ("dead") of the pixel mask (DECTRIS bit meanings, `streamer.series.PIXEL_MASK_BITS`). The
  int32 pixels are passed on as "<u4", as a PILATUS4/EIGER detector streams them: the bytes are
  unchanged, so -1/-2 read as 2**32-1/2**32-2 and must be masked with the pixel mask. Frames
  encoded for streaming (`frame`) carry both as 2**32-1, a DECTRIS stream's inactive value.
- SMV: PIXEL_SIZE, DISTANCE (mm), WAVELENGTH (A), OSC_START/OSC_RANGE (deg). The beam centre
  follows the first header convention present: DIALS_ORIGIN (mm, fast +x, slow -y: beam centre
  = -origin_x and +origin_y); MOSFLM_CENTER_X/Y as nanoBragg writes it (X along slow; pixel
  centres at +0.5, so fast = (Y + pixel/2)/pixel, slow = (X + pixel/2)/pixel, see nanoBragg.c);
  else ADSC BEAM_CENTER_X/Y read as dxtbx's FormatSMVADSC does (fast = Y/pixel, slow = X/pixel).
  nanoBragg adds an ADC offset (40 by default) that its header does not state: the `pedestal`
  option subtracts it (clipping at 0; saturated pixels keep their value).
"""

from __future__ import annotations

import bz2
import gzip
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import fabio
import fabio.adscimage
import numpy as np

from kernels.byte_offset import CorruptStream, decode_byte_offset
from streamer.errors import BadFrame, BadHeader, BadInput
from streamer.series import EncodedFrame, SeriesInfo

log = logging.getLogger(__name__)

GAP_BIT = 1 << 0
DEAD_BIT = 1 << 1


def _peek(path: Path, n: int = 64) -> bytes:
    """The first `n` decompressed bytes of a (possibly .bz2/.gz) file."""
    opener = bz2.open if path.suffix == ".bz2" else gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read(n)
    except (OSError, EOFError, ValueError):
        return b""


def image_format(path: str | Path) -> str | None:
    """"cbf" or "smv" from the file's content, else None."""
    head = _peek(Path(path), 512)
    if head.startswith(b"###CBF") or b"data_" in head[:256] and b"_array_data" in head:
        return "cbf"
    if head.startswith(b"{") and b"HEADER_BYTES=" in head[:64]:
        return "smv"
    return None


# CBF: the four bytes that open the data of a binary section (after its MIME header).
_CBF_BINARY_START = b"\x0c\x1a\x04\xd5"
_CBF_SECTION = b"--CIF-BINARY-FORMAT-SECTION--"
_CBF_FIELDS = {
    "conversions": rb'conversions="([^"]*)"',
    "element_type": rb'X-Binary-Element-Type:\s*"([^"]*)"',
    "byte_order": rb"X-Binary-Element-Byte-Order:\s*(\S+)",
    "size": rb"X-Binary-Size:\s*(\d+)",
    "n_elements": rb"X-Binary-Number-of-Elements:\s*(\d+)",
    "fast": rb"X-Binary-Size-Fastest-Dimension:\s*(\d+)",
    "slow": rb"X-Binary-Size-Second-Dimension:\s*(\d+)",
}
_CBF_INT32_TYPES = ("signed 32-bit integer", "unsigned 32-bit integer")


@dataclass(frozen=True)
class CbfBinarySection:
    """What a CBF binary section's MIME header says about its data. Offsets and sizes in bytes."""

    conversions: str  # "x-CBF_BYTE_OFFSET", "x-CBF_PACKED", ... ("" when absent)
    element_type: str  # e.g. "signed 32-bit integer"
    byte_order: str  # "LITTLE_ENDIAN" for byte_offset
    data_start: int  # first data byte in the file
    data_size: int  # X-Binary-Size
    n_elements: int
    shape: tuple[int, int] | None  # (slow, fast), None when the header does not give both

    @property
    def byte_offset_32bit(self) -> bool:
        """True for data `kernels.byte_offset` decodes: byte_offset deltas of 32-bit elements."""
        return (self.conversions == "x-CBF_BYTE_OFFSET" and self.element_type in _CBF_INT32_TYPES
                and self.byte_order.upper() == "LITTLE_ENDIAN")


def cbf_binary_section(raw: bytes, name: str = "CBF") -> CbfBinarySection:
    """The first binary section of CBF file bytes `raw`; BadFrame when it is missing or incomplete."""
    start = raw.find(_CBF_BINARY_START)
    section = raw.rfind(_CBF_SECTION, 0, start) if start >= 0 else -1
    if section < 0:
        raise BadFrame(f"{name}: no CBF binary section (truncated file?)", reason="corrupt_compression")
    header = raw[section:start]
    found = {key: re.search(pattern, header) for key, pattern in _CBF_FIELDS.items()}
    if found["size"] is None or found["n_elements"] is None:
        raise BadFrame(f"{name}: CBF binary header lacks X-Binary-Size or X-Binary-Number-of-Elements",
                       reason="bad_frame")

    def text(key: str) -> str:
        return found[key].group(1).decode("latin-1") if found[key] else ""

    fast, slow = found["fast"], found["slow"]
    return CbfBinarySection(
        conversions=text("conversions"), element_type=text("element_type"), byte_order=text("byte_order"),
        data_start=start + len(_CBF_BINARY_START), data_size=int(found["size"].group(1)),
        n_elements=int(found["n_elements"].group(1)),
        shape=(int(slow.group(1)), int(fast.group(1))) if fast and slow else None,
    )


def _file_bytes(path: Path) -> bytes:
    """All (decompressed) bytes of an image file; BadInput when it cannot be read."""
    opener = bz2.open if path.suffix == ".bz2" else gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, ValueError) as exc:  # missing, unreadable, damaged .bz2/.gz
        raise BadInput(f"cannot read {path}: {exc}", reason="bad_image_file") from exc


def _read(path: Path, kind: str):
    try:
        if kind == "smv":
            image = fabio.adscimage.AdscImage()
            image.read(str(path))
            return image
        return fabio.open(str(path))
    except Exception as exc:  # fabio raises many types for a damaged file
        raise BadInput(f"cannot read {path}: {exc}", reason="bad_image_file") from exc


_NUMBER = r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)"


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
    axis = re.search(r"^#\s*Oscillation_axis\s+(\S+)", text, flags=re.MULTILINE)
    rotation_axis = (-1.0, 0.0, 0.0) if axis and axis.group(1).upper().startswith("X.CCW") else (1.0, 0.0, 0.0)
    return SeriesInfo(
        series_id=series_id,
        source="cbf",
        image_shape=shape,
        dtype="<u4",
        n_images=n_images,
        detector_description=detector.group(1).strip() if detector else "",
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
        saturation_value=int(cutoff[0]) if cutoff else None,
        bit_depth_image=32,
        pixel_mask=pixel_mask,
        raw={"header": text},
    )


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


def smv_series_info(header: dict[str, str], shape: tuple[int, int], dtype: str, n_images: int,
                    series_id: str, pedestal: int) -> SeriesInfo:
    """SeriesInfo from an SMV header (mm, Angstrom, degrees)."""
    try:
        pixel = float(header["PIXEL_SIZE"])
        distance = float(header["DISTANCE"])
        wavelength = float(header["WAVELENGTH"])
    except (KeyError, ValueError) as exc:
        raise BadHeader(f"SMV header lacks {exc}", reason="bad_geometry") from exc
    saturation = int(float(header.get("SATURATED_VALUE", np.iinfo(np.dtype(dtype)).max)))
    return SeriesInfo(
        series_id=series_id,
        source="smv",
        image_shape=shape,
        dtype=dtype,
        n_images=n_images,
        detector_description=header.get("DETECTOR_NAME", header.get("BEAMLINE", "")),
        detector_serial=header.get("DETECTOR_SN", ""),
        pixel_size_mm=(pixel, pixel),
        beam_centre_px=smv_beam_centre_px(header, pixel),
        distance_mm=distance,
        wavelength_A=wavelength,
        omega_start_deg=float(header.get("OSC_START", header.get("PHI", 0.0))),
        omega_increment_deg=float(header.get("OSC_RANGE", 0.0)),
        count_time_s=float(header.get("TIME", 0.0)),
        saturation_value=saturation,
        bit_depth_image=np.dtype(dtype).itemsize * 8,
        raw={"header": dict(header), "pedestal": pedestal},
    )


class ImageSeriesSource:
    """A CBF or SMV image series: `info` and `frames()` ("raw" pixels, or `encoding` as a detector sends).

    `paths` are taken in the given order (image_number 0, 1, ...). `encoding` "bslz4" or
    "lz4-h5" compresses each frame with `streamer.codecs.encode` (for replay). `pedestal` is
    subtracted from SMV pixels below saturation (nanoBragg: 40).
    """

    def __init__(self, paths: Sequence[str | Path], series_id: str | None = None, encoding: str = "raw",
                 pedestal: int = 0):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise BadInput("no image files given", reason="no_input")
        kinds = {image_format(p) for p in self.paths}
        if len(kinds) != 1 or None in kinds:
            raise BadInput(f"not a CBF or SMV series (formats {sorted(map(str, kinds))})", reason="unknown_format")
        self.kind = kinds.pop()
        self.encoding = encoding
        self.pedestal = int(pedestal)
        if pedestal and self.kind != "smv":
            raise BadInput("a pedestal applies to SMV images only", reason="bad_option")
        series_id = series_id or re.sub(r"[_-]?\d+$", "", self.paths[0].name.split(".")[0]) or "images"
        first = _read(self.paths[0], self.kind)
        shape = tuple(int(n) for n in first.data.shape)
        if self.kind == "cbf":
            data = np.asarray(first.data)
            mask = np.zeros(shape, dtype=np.uint32)
            mask[data == -1] |= GAP_BIT
            mask[data == -2] |= DEAD_BIT
            text = first.header.get("_array_data.header_contents", "")
            self.info = cbf_series_info(text, shape, len(self.paths), series_id, mask if mask.any() else None)
            decode_byte_offset(b"\x00", np.empty(1, dtype="<u4"))  # JIT now (0.5-1.6 s once), not on frame 1
        else:
            dtype = first.data.dtype.newbyteorder("<") if first.data.dtype.byteorder in "=|" else first.data.dtype
            self.info = smv_series_info(dict(first.header), shape, dtype.str, len(self.paths), series_id, self.pedestal)

    def pixels(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """The pixels of image `index` as the series dtype (CBF int32 bytes viewed as uint32).

        `out`, when given (a C-contiguous array of the series shape and dtype, reused across
        frames), is filled and returned. BadInput/BadFrame when the file cannot be used.
        """
        if out is not None and (out.shape != self.info.image_shape or out.dtype != np.dtype(self.info.dtype)
                                or not out.flags.c_contiguous or not out.flags.writeable):
            raise ValueError(f"output buffer {out.shape} {out.dtype} does not fit the series "
                             f"{self.info.image_shape} {self.info.dtype}")
        if self.kind == "cbf":
            raw = _file_bytes(self.paths[index])
            section = cbf_binary_section(raw, str(self.paths[index]))
            if section.byte_offset_32bit:
                return self._byte_offset_pixels(raw, section, index, out)
        data = self._fabio_pixels(index)
        if out is None:
            return data
        np.copyto(out, data)
        return out

    def _byte_offset_pixels(self, raw: bytes, section: CbfBinarySection, index: int,
                            out: np.ndarray | None) -> np.ndarray:
        shape = self.info.image_shape
        name = str(self.paths[index])
        if section.n_elements != shape[0] * shape[1] or section.shape not in (None, shape):
            raise BadFrame(f"{name} holds {section.n_elements} pixels of shape {section.shape}, the series {shape}",
                           reason="wrong_shape")
        out = np.empty(shape, dtype=self.info.dtype) if out is None else out
        available = max(0, min(section.data_size, len(raw) - section.data_start))
        data = np.frombuffer(raw, dtype=np.uint8, count=available, offset=section.data_start)
        try:
            used = decode_byte_offset(data, out)
        except CorruptStream as exc:
            raise BadFrame(f"{name}: {exc} (declared {section.data_size})", reason="corrupt_compression") from exc
        if used != section.data_size:
            raise BadFrame(f"{name}: the pixels take {used} bytes, the header declares {section.data_size}",
                           reason="corrupt_compression")
        return out

    def _fabio_pixels(self, index: int) -> np.ndarray:
        image = _read(self.paths[index], self.kind)
        data = np.asarray(image.data)
        if data.shape != self.info.image_shape:
            raise BadInput(f"{self.paths[index]} is {data.shape}, the series {self.info.image_shape}",
                           reason="wrong_shape")
        if self.kind == "cbf":
            if data.dtype.kind not in "iu" or data.dtype.itemsize != 4:
                data = data.astype(np.int32)
            return np.ascontiguousarray(data).view("<u4") if data.dtype.byteorder != ">" else data.astype("<u4")
        data = np.ascontiguousarray(data, dtype=self.info.dtype)
        if self.pedestal:
            saturated = data >= self.info.saturation_value
            data = np.where(saturated, data, np.maximum(data.astype(np.int64) - self.pedestal, 0)).astype(self.info.dtype)
        return data

    def frame(self, index: int) -> EncodedFrame:
        """Image `index` encoded as a detector streams it. CBF pixels the PILATUS flagged (-1 gap,
        -2 bad) become all ones, the value a DECTRIS stream gives every pixel its mask flags
        (`masks.inactive_value`): without the mask (header detail "basic") a bad pixel then
        reads as inactive, not as an overload."""
        pixels = self.pixels(index)
        if self.kind == "cbf":
            signed = np.array(pixels).view(np.int32)  # a copy: fabio's array is not ours to change
            np.maximum(signed, -1, out=signed)
            pixels = signed.view(pixels.dtype)
        if self.encoding == "raw":
            data = pixels.tobytes()
        else:
            from streamer import codecs

            data = codecs.encode(pixels, self.encoding)
        return EncodedFrame(self.info.series_id, index, self.info.image_shape, self.info.dtype, self.encoding, data)

    def frames(self) -> Iterator[EncodedFrame]:
        for index in range(len(self.paths)):
            yield self.frame(index)

    def __len__(self) -> int:
        return len(self.paths)


def open_images(paths: Sequence[str | Path], series_id: str | None = None, encoding: str = "raw",
                pedestal: int = 0) -> tuple[SeriesInfo, Iterator[EncodedFrame]]:
    """SeriesInfo and frame iterator of a CBF/SMV series (see ImageSeriesSource)."""
    source = ImageSeriesSource(paths, series_id, encoding, pedestal)
    return source.info, source.frames()
