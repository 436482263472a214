"""EIGER HDF5/NeXus files: series metadata from the master, frames as the stored compressed chunks.

Layouts read (as DECTRIS firmware and the NeXus NXmx definition write them):

- a master file whose `/entry/data/data_NNNNNN` are external links to data files;
- a master file whose `/entry/data/data` is a virtual dataset mapping image ranges to data files;
- a data file alone (`/entry/data/data`, with `image_nr_low`/`image_nr_high` attributes, 1-based).

Frames come out as `EncodedFrame`s holding the chunk bytes read with `read_direct_chunk`: no
decompression, no recompression. The encoding follows the dataset's filter: 32008 (bitshuffle
with LZ4, Masui et al. 2015) -> "bslz4", 32004 (LZ4) -> "lz4-h5", no filter -> "raw". Datasets
with other filters or chunks holding more than one image are decoded by h5py (hdf5plugin) and
passed on as "raw".

Geometry: NXmx `depends_on` chains give the detector origin and axes and the rotation axis
(`streamer.sources.nxmx`); without chains the older DECTRIS fields are used (beam_center_x/y
in pixels, detector_distance, geometry/orientation). The detector, sample and beam groups are
found at DECTRIS's names, else by their NX_class (`nxmx.nx_layout`), as dxtbx finds them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from streamer import hdf5_filters  # noqa: F401  (the bitshuffle/LZ4 filters for h5py's own reads)
from streamer.errors import BadHeader, BadInput
from streamer.series import EncodedFrame, SeriesInfo, optional_int
from streamer.sources.nxmx import (
    dataset_value,
    decode_str,
    detector_from_chain,
    first_value,
    length_mm,
    nx_layout,
    pixel_mask,
    scan_axis,
    time_s,
    to_imgcif,
    underload_value,
    wavelength_A_of,
)

log = logging.getLogger(__name__)

FILTER_BSLZ4 = 32008
FILTER_LZ4 = 32004
_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_hdf5(path: str | Path) -> bool:
    """True if `path` starts with the HDF5 signature (user blocks are not considered)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == _SIGNATURE
    except OSError:
        return False


@dataclass(frozen=True)
class ImageBlock:
    """`count` consecutive images of the series, stored at `source_start`.. of one dataset."""

    first_image: int  # 0-based image number in the series
    count: int
    file: Path
    dataset: str
    source_start: int


def _filter_encoding(dset: h5py.Dataset) -> str | None:
    """The EncodedFrame encoding of the stored chunks, or None if h5py must decode them."""
    if dset.chunks is None:
        return "raw" if dset.compression is None else None
    if tuple(dset.chunks) != (1, *dset.shape[1:]):
        return None
    plist = dset.id.get_create_plist()
    codes = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    if not codes:
        return "raw"
    if codes == [FILTER_BSLZ4]:
        values = plist.get_filter(0)[2]
        if len(values) >= 5 and values[4] != 2:  # 2 = LZ4; 3 = zstd is not a detector encoding
            return None
        return "bslz4"
    if codes == [FILTER_LZ4]:
        return "lz4-h5"
    return None


def _external_blocks(f: h5py.File, master: Path) -> list[ImageBlock]:
    """Blocks of /entry/data/data_NNNNNN links (external links to data files, in name order)."""
    group = f.get("/entry/data")
    if group is None:
        return []
    blocks: list[ImageBlock] = []
    next_image = 0
    for name in sorted(k for k in group.keys() if k.startswith("data_")):
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target, dataset = master.parent / link.filename, link.path
        else:
            target, dataset = master, f"/entry/data/{name}"
        count, first = None, next_image
        if target.exists():
            try:
                data = h5py.File(target, "r")
            except OSError as exc:  # named here: the caller's message would name the master
                raise BadInput(f"cannot read data file {target} of {master}: {exc}", reason="bad_hdf5") from exc
            with data:
                ds = data.get(dataset)
                if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
                    raise BadHeader(f"{target}:{dataset} is not a 3-d image stack", reason="bad_layout")
                count = ds.shape[0]
                low = ds.attrs.get("image_nr_low")
                if low is not None:
                    first = int(low) - 1
        if count is None:
            log.warning("data file %s of %s is missing", target, master)
            count = 0
        blocks.append(ImageBlock(first, count, target, dataset, 0))
        next_image = first + count
    return blocks


def _select_bounds(space: h5py.h5s.SpaceID) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Inclusive (start, end) of a dataspace selection ("all" selections included)."""
    if space.get_select_type() == h5py.h5s.SEL_ALL:
        shape = space.shape or (0,)  # a virtual source's "all" may report no extent: its start is 0
        return tuple(0 for _ in shape), tuple(max(n - 1, 0) for n in shape)
    return space.get_select_bounds()


def _virtual_blocks(f: h5py.File, dset: h5py.Dataset, master: Path) -> list[ImageBlock]:
    """Blocks of a virtual dataset: each mapping's image range in its source file."""
    blocks = []
    for vmap in dset.virtual_sources():
        (v0, *_), (v1, *_) = _select_bounds(vmap.vspace)
        (s0, *_), _ = _select_bounds(vmap.src_space)
        name = vmap.file_name
        target = master if name == "." else (master.parent / name)
        blocks.append(ImageBlock(int(v0), int(v1) - int(v0) + 1, target, vmap.dset_name, int(s0)))
    return sorted(blocks, key=lambda b: b.first_image)


# What reading a damaged file's metadata raises (text for a number, an empty or misshapen array,
# a zero-length axis vector, a missing dataset a chain names): a bad header, said with the error
METADATA_ERRORS = (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError)


class EigerH5Source:
    """An EIGER series on disk: `info` (SeriesInfo) and `frames()` (EncodedFrames, stored chunks).

    `path` is a master file or a lone data file. Data files the master links to but that are
    absent do not prevent reading the metadata; reading their frames raises BadInput
    ("missing_data_file"). `load_flatfield` also reads the detector's flatfield (large).
    """

    def __init__(self, path: str | Path, series_id: str | None = None, load_flatfield: bool = False):
        self.path = Path(path)
        if not is_hdf5(self.path):
            raise BadInput(f"{self.path} is not an HDF5 file", reason="not_hdf5")
        self._files: dict[Path, h5py.File] = {}
        self._encodings: dict[tuple[Path, str], str | None] = {}
        try:
            # a header's NaN or infinity gives a geometry without resolutions (`geometry_problems`)
            with h5py.File(self.path, "r") as f, np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                self.blocks = self._layout(f)
                self.info = self._series_info(f, series_id, load_flatfield)
        except OSError as exc:
            raise BadInput(f"cannot read {self.path}: {exc}", reason="bad_hdf5") from exc
        except METADATA_ERRORS as exc:  # a field of another type, size or value than NXmx says
            log.debug("%s: metadata not understood", self.path, exc_info=True)
            raise BadHeader(f"{self.path}: its metadata could not be read ({type(exc).__name__}: {exc})",
                            reason="bad_header") from exc

    def _layout(self, f: h5py.File) -> list[ImageBlock]:
        data = f.get("/entry/data/data")
        if isinstance(data, h5py.Dataset) and data.is_virtual:
            return _virtual_blocks(f, data, self.path)
        if isinstance(data, h5py.Dataset):
            low = data.attrs.get("image_nr_low")
            first = int(low) - 1 if low is not None else 0
            return [ImageBlock(first, data.shape[0], self.path, "/entry/data/data", 0)]
        blocks = _external_blocks(f, self.path)
        if not blocks:
            raise BadInput(f"{self.path} has no /entry/data images", reason="bad_layout")
        return blocks

    def _first_dataset(self) -> h5py.Dataset | None:
        for block in self.blocks:
            if block.count and block.file.exists():
                return self._file(block.file)[block.dataset]
        return None

    def _series_info(self, f: h5py.File, series_id: str | None, load_flatfield: bool) -> SeriesInfo:
        layout = nx_layout(f)
        det_path = layout.detector
        det = f.get(det_path)
        spec = f"{det_path}/detectorSpecific"
        ds = self._first_dataset()
        nx, ny = dataset_value(f, f"{spec}/x_pixels_in_detector"), dataset_value(f, f"{spec}/y_pixels_in_detector")
        if ds is not None:
            shape = (int(ds.shape[1]), int(ds.shape[2]))
            dtype = ds.dtype.newbyteorder("<") if ds.dtype.byteorder == "=" else ds.dtype
            dtype_str = dtype.str
        elif (nx and ny) or isinstance(f.get(f"{spec}/pixel_mask"), h5py.Dataset):
            shape = (int(ny), int(nx)) if nx and ny else tuple(int(n) for n in f[f"{spec}/pixel_mask"].shape)
            depth = int(dataset_value(f, f"{det_path}/bit_depth_image") or 32)
            dtype_str = f"<u{max(depth // 8, 1)}"
        else:
            raise BadHeader(f"{self.path}: neither image data nor detector size", reason="bad_layout")
        mask = pixel_mask(f, det_path, shape, self.path)
        flatfield = None
        ff_ds = f.get(f"{spec}/flatfield")
        if load_flatfield and isinstance(ff_ds, h5py.Dataset) and ff_ds.shape == shape:
            flatfield = np.asarray(ff_ds[()], dtype=np.float32)
        geometry: dict[str, Any] = {}
        if isinstance(det, h5py.Group):
            geometry = detector_from_chain(f, det) or {}
        if not geometry:
            geometry = self._legacy_geometry(f, det_path)
        axis, start, increment = scan_axis(f, layout.sample)
        if start is None:
            omega = f.get(f"{layout.sample}/goniometer/omega")
            start = float(first_value(omega[()])) if isinstance(omega, h5py.Dataset) else 0.0
        if increment is None:
            increment = 0.0
            for name in ("omega_range_average", "omega_increment"):
                value = dataset_value(f, f"{layout.sample}/goniometer/{name}")
                if isinstance(value, int | float):
                    increment = float(value)
                    break
        saturation = None  # NXmx's place first (where DIALS reads it; other NeXus writers put it only there)
        for name in (f"{det_path}/saturation_value", f"{spec}/saturation_value",
                     f"{spec}/countrate_correction_count_cutoff"):
            saturation = dataset_value(f, name)
            if isinstance(saturation, int | float):
                break
        n_images = sum(b.count for b in self.blocks) or None
        nimages, ntrigger = dataset_value(f, f"{spec}/nimages"), dataset_value(f, f"{spec}/ntrigger")
        if isinstance(nimages, int) and isinstance(ntrigger, int) and nimages * ntrigger > 0:
            if n_images and n_images < nimages * ntrigger:  # an interrupted collection, or data files missing
                log.warning("%s: the master announces %d images (nimages x ntrigger), its data hold %d: the last %d "
                            "are missing", self.path, nimages * ntrigger, n_images, nimages * ntrigger - n_images)
            n_images = max(n_images or 0, nimages * ntrigger)
        booleans = {k: dataset_value(f, f"{det_path}/{k}") for k in ("countrate_correction_applied",
                                                               "flatfield_correction_applied")}
        wavelength = wavelength_A_of(f, layout)
        if wavelength is not None:
            geometry["wavelength_A"] = wavelength
        else:
            log.warning("%s gives no wavelength; the default %.3f A is used", self.path, 1.0)
        stem = self.path.name.removesuffix(".h5").removesuffix(".nxs")
        return SeriesInfo(
            series_id=series_id or stem.removesuffix("_master"),
            source="hdf5",
            detector_type="PAD",  # dxtbx's NeXus reader makes every panel a pixel-array detector's
            image_shape=shape,
            dtype=dtype_str,
            n_images=n_images,
            detector_description=decode_str(dataset_value(f, f"{det_path}/description") or ""),
            detector_serial=decode_str(dataset_value(f, f"{det_path}/detector_number") or ""),
            sensor_material=decode_str(dataset_value(f, f"{det_path}/sensor_material") or ""),
            sensor_thickness_mm=length_mm(f, f"{det_path}/sensor_thickness") or 0.0,
            rotation_axis=axis,
            omega_start_deg=float(start),
            omega_increment_deg=float(increment),
            count_time_s=time_s(f, f"{det_path}/count_time"),
            frame_time_s=time_s(f, f"{det_path}/frame_time"),
            saturation_value=optional_int(saturation),  # NaN or infinity: none
            underload_value=underload_value(f, det_path, dtype_str),
            bit_depth_image=dataset_value(f, f"{det_path}/bit_depth_image"),
            countrate_correction_applied=None if booleans["countrate_correction_applied"] is None
            else bool(booleans["countrate_correction_applied"]),
            flatfield_applied=None if booleans["flatfield_correction_applied"] is None
            else bool(booleans["flatfield_correction_applied"]),
            pixel_mask=mask,
            flatfield=flatfield,
            raw={"file": str(self.path)},
            **geometry,
        )

    @staticmethod
    def _legacy_geometry(f: h5py.File, det_path: str) -> dict[str, Any]:
        """Pre-NXmx DECTRIS fields: beam_center_x/y (px), detector_distance, geometry/orientation."""
        out: dict[str, Any] = {}
        px = length_mm(f, f"{det_path}/x_pixel_size")
        py = length_mm(f, f"{det_path}/y_pixel_size")
        if px and py:
            out["pixel_size_mm"] = (px, py)
        bx, by = dataset_value(f, f"{det_path}/beam_center_x"), dataset_value(f, f"{det_path}/beam_center_y")
        if isinstance(bx, int | float) and isinstance(by, int | float):
            out["beam_centre_px"] = (float(bx), float(by))
        distance = length_mm(f, f"{det_path}/detector_distance")
        if distance:
            out["distance_mm"] = distance
        orientation = f.get(f"{det_path}/geometry/orientation/value")
        if isinstance(orientation, h5py.Dataset) and orientation.size == 6:
            v = np.asarray(orientation[()], dtype=np.float64).reshape(2, 3)
            out["fast_axis"], out["slow_axis"] = to_imgcif(v[0]), to_imgcif(v[1])
        return out

    def _file(self, path: Path) -> h5py.File:
        if path not in self._files:
            if not path.exists():
                raise BadInput(f"data file {path} is missing", reason="missing_data_file")
            self._files[path] = h5py.File(path, "r")
        return self._files[path]

    def __len__(self) -> int:
        return sum(b.count for b in self.blocks)

    def frame(self, block: ImageBlock, k: int) -> EncodedFrame:
        """Image `k` of `block` as stored: the chunk bytes, or h5py's decoded pixels as "raw"."""
        ds = self._file(block.file)[block.dataset]
        key = (block.file, block.dataset)
        if key not in self._encodings:
            self._encodings[key] = _filter_encoding(ds)
        encoding = self._encodings[key]
        index = block.source_start + k
        shape = (int(ds.shape[1]), int(ds.shape[2]))
        dtype = self.info.dtype
        if encoding is None or ds.chunks is None:
            data, encoding = np.ascontiguousarray(ds[index], dtype=dtype).tobytes(), "raw"
        else:
            filter_mask, data = ds.id.read_direct_chunk((index, 0, 0))
            if filter_mask:  # the filter was skipped for this chunk: stored as is
                encoding = "raw"
        return EncodedFrame(self.info.series_id, block.first_image + k, shape, dtype, encoding, data)

    def frames(self) -> Iterator[EncodedFrame]:
        """All images in series order."""
        for block in self.blocks:
            if not block.file.exists():
                raise BadInput(f"data file {block.file} is missing", reason="missing_data_file")
            for k in range(block.count):
                yield self.frame(block, k)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> EigerH5Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_eiger(path: str | Path, series_id: str | None = None) -> tuple[SeriesInfo, Iterator[EncodedFrame]]:
    """SeriesInfo and a frame iterator for an EIGER master or data file (files closed at the end)."""
    source = EigerH5Source(path, series_id)

    def frames() -> Iterator[EncodedFrame]:
        try:
            yield from source.frames()
        finally:
            source.close()

    return source.info, frames()
