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

Headers become a SeriesInfo as dxtbx reads them (`streamer.sources.image_headers`).
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
from streamer.errors import BadFrame, BadInput
from streamer.series import EncodedFrame, SeriesInfo
from streamer.sources.image_headers import cbf_series_info, smv_pedestal, smv_series_info

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
        else:
            image = fabio.open(str(path))
    except Exception as exc:  # fabio raises many types for a damaged file
        raise BadInput(f"cannot read {path}: {exc}", reason="bad_image_file") from exc
    if getattr(image, "data", None) is None or np.ndim(image.data) != 2:  # e.g. an SMV header without DIM
        raise BadInput(f"cannot read {path}: no 2D image in it", reason="bad_image_file")
    return image


class ImageSeriesSource:
    """A CBF or SMV image series: `info` and `frames()` ("raw" pixels, or `encoding` as a detector sends).

    `paths` are taken in the given order (image_number 0, 1, ...). `encoding` "bslz4" or
    "lz4-h5" compresses each frame with `streamer.codecs.encode` (for replay). `pedestal` is
    subtracted from SMV pixels (int32, negative below it); None: the header's, as DIALS takes
    it (`smv_pedestal`; nanoBragg's real offset is 40, which its header does not state).
    """

    def __init__(self, paths: Sequence[str | Path], series_id: str | None = None, encoding: str = "raw",
                 pedestal: int | None = None):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise BadInput("no image files given", reason="no_input")
        kinds = {image_format(p) for p in self.paths}
        if len(kinds) != 1 or None in kinds:
            raise BadInput(f"not a CBF or SMV series (formats {sorted(map(str, kinds))})", reason="unknown_format")
        self.kind = kinds.pop()
        self.encoding = encoding
        if pedestal and self.kind != "smv":
            raise BadInput("a pedestal applies to SMV images only", reason="bad_option")
        series_id = series_id or re.sub(r"[_-]?\d+$", "", self.paths[0].name.split(".")[0]) or "images"
        first = _read(self.paths[0], self.kind)
        shape = tuple(int(n) for n in first.data.shape)
        self.pedestal = 0
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
            header = dict(first.header)
            self.pedestal = smv_pedestal(header) if pedestal is None else int(pedestal)
            if self.pedestal:
                log.info("%s: %d (ADC offset) subtracted from every pixel%s", self.paths[0].name, self.pedestal,
                         "" if pedestal is None else " (--pedestal)")
            self.info = smv_series_info(header, shape, dtype.str, len(self.paths), series_id, self.pedestal)

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
        if self.pedestal:  # int32 counts minus the offset, negative below it (`image_headers`)
            return np.subtract(data, self.pedestal, dtype=np.int32)
        return np.ascontiguousarray(data, dtype=self.info.dtype)

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
                pedestal: int | None = None) -> tuple[SeriesInfo, Iterator[EncodedFrame]]:
    """SeriesInfo and frame iterator of a CBF/SMV series (see ImageSeriesSource)."""
    source = ImageSeriesSource(paths, series_id, encoding, pedestal)
    return source.info, source.frames()
