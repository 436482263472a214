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

Geometry: NXmx `depends_on` chains (McStas frame: z along the beam, y up) are followed to the
origin and axes of the detector and the rotation axis, then converted to the DIALS/imgCIF frame
by a 180-degree rotation about y, (x, y, z) -> (-x, y, -z), as dxtbx does. Without chains the
older DECTRIS fields are used (beam_center_x/y in pixels, detector_distance, geometry/orientation).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin  # noqa: F401  registers the bitshuffle/LZ4 filters for h5py's own reads
import numpy as np

from streamer.errors import BadHeader, BadInput
from streamer.series import EncodedFrame, SeriesInfo

log = logging.getLogger(__name__)

FILTER_BSLZ4 = 32008
FILTER_LZ4 = 32004
HC_KEV_A = 12.398419843320026  # h*c in keV*Angstrom (CODATA 2018)
MCSTAS_TO_IMGCIF = np.diag([-1.0, 1.0, -1.0])
_LENGTH_TO_MM = {"m": 1e3, "meter": 1e3, "metre": 1e3, "mm": 1.0, "millimeter": 1.0, "um": 1e-3, "microns": 1e-3,
                 "nm": 1e-6, "cm": 10.0}
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


def _decode_str(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", "replace").strip("\x00 ")
    return str(value)


def _first(data: Any) -> Any:
    """First element as a Python number; float32 by its shortest decimal (0.075, not 0.0750000036)."""
    x = np.asarray(data).reshape(-1)[0]
    if isinstance(x, np.float32 | np.float16):
        return float(str(x))
    return x.item() if isinstance(x, np.generic) else x


def _units(obj: h5py.Dataset) -> str:
    return _decode_str(obj.attrs.get("units", "")).lower()


def _value(group: h5py.Group, path: str) -> Any | None:
    try:
        obj = group.get(path)
    except (KeyError, OSError):  # a dangling external link
        return None
    if not isinstance(obj, h5py.Dataset):
        return None
    data = obj[()]
    if isinstance(data, np.ndarray | np.generic) and np.asarray(data).size >= 1 and np.asarray(data).dtype.kind in "fiub":
        return _first(data)
    if isinstance(data, np.generic):
        return data.item()
    return data


def _length_mm(group: h5py.Group, path: str) -> float | None:
    obj = group.get(path)
    if not isinstance(obj, h5py.Dataset):
        return None
    value = float(_first(obj[()]))
    units = _units(obj)
    if units in _LENGTH_TO_MM:
        return value * _LENGTH_TO_MM[units]
    # DECTRIS writes metres; a unitless value too large for metres is taken as mm
    return value * 1e3 if value < 1.0 else value


def _time_s(group: h5py.Group, path: str) -> float:
    value = _value(group, path)
    return float(value) if isinstance(value, int | float) else 0.0


def _to_imgcif(v) -> tuple[float, float, float]:
    out = MCSTAS_TO_IMGCIF @ np.asarray(v, dtype=np.float64)
    return tuple(float(x) + 0.0 for x in out)  # + 0.0 turns -0.0 into 0.0


def _rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Right-handed rotation matrix about `axis` (Rodrigues)."""
    a = axis / np.linalg.norm(axis)
    t = math.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def _follow_chain(f: h5py.File, start: str, base: str = "/") -> list[h5py.Dataset]:
    """The NXtransformations reached from `start` (a path), innermost first, up to "."."""
    chain: list[h5py.Dataset] = []
    path = start
    while path and path != "." and len(chain) < 32:
        if not path.startswith("/"):
            path = base.rstrip("/") + "/" + path
        obj = f.get(path)
        if not isinstance(obj, h5py.Dataset):
            raise BadHeader(f"depends_on chain points to a missing transformation {path!r}", reason="bad_geometry")
        chain.append(obj)
        base = obj.parent.name
        path = _decode_str(obj.attrs.get("depends_on", "."))
    return chain


def _apply_chain(chain: list[h5py.Dataset], point: np.ndarray, directions: list[np.ndarray]) -> tuple:
    """Place `point` (McStas, mm) and rotate `directions` through `chain` at its first value."""
    point = point.astype(np.float64)
    directions = [d.astype(np.float64) for d in directions]
    for t in chain:
        vector = np.asarray(t.attrs.get("vector", (0.0, 0.0, 1.0)), dtype=np.float64).reshape(3)
        offset = np.asarray(t.attrs.get("offset", (0.0, 0.0, 0.0)), dtype=np.float64).reshape(3)
        offset_units = _decode_str(t.attrs.get("offset_units", _units(t) or "m")).lower()
        offset = offset * _LENGTH_TO_MM.get(offset_units, 1e3)
        value = float(_first(t[()])) if t.size else 0.0
        kind = _decode_str(t.attrs.get("transformation_type", "translation")).lower()
        if kind == "rotation":
            rot = _rotation(vector, value if _units(t).startswith("deg") else math.degrees(value))
            point = rot @ point + offset
            directions = [rot @ d for d in directions]
        else:
            point = point + offset + vector / np.linalg.norm(vector) * value * _LENGTH_TO_MM.get(_units(t), 1e3)
    return point, directions


def _detector_from_chain(f: h5py.File, det: h5py.Group) -> dict[str, Any] | None:
    """Origin, axes, beam centre and distance from the NXdetector_module depends_on chains."""
    modules = [g for g in det.values() if isinstance(g, h5py.Group) and "fast_pixel_direction" in g]
    if not modules:
        return None
    module = modules[0]
    fast_ds, slow_ds = module["fast_pixel_direction"], module["slow_pixel_direction"]
    fast = np.asarray(fast_ds.attrs["vector"], dtype=np.float64).reshape(3)
    slow = np.asarray(slow_ds.attrs["vector"], dtype=np.float64).reshape(3)
    pixel = (
        float(_first(fast_ds[()])) * _LENGTH_TO_MM.get(_units(fast_ds), 1e3),
        float(_first(slow_ds[()])) * _LENGTH_TO_MM.get(_units(slow_ds), 1e3),
    )
    # pixel (0, 0)'s outer corner: the fast axis's own offset, then the chain it depends on
    # (its own translation by one pixel is what steps to the next pixel, so it is left out)
    corner = np.asarray(fast_ds.attrs.get("offset", (0.0, 0.0, 0.0)), dtype=np.float64).reshape(3)
    corner = corner * _LENGTH_TO_MM.get(_decode_str(fast_ds.attrs.get("offset_units", "m")).lower(), 1e3)
    chain = _follow_chain(f, fast_ds.name)[1:]
    origin, (fast, slow) = _apply_chain(chain, corner, [fast, slow])
    origin, fast, slow = (MCSTAS_TO_IMGCIF @ v for v in (origin, fast, slow))
    fast, slow = fast / np.linalg.norm(fast), slow / np.linalg.norm(slow)
    normal = np.cross(fast, slow)
    beam = np.array([0.0, 0.0, -1.0])
    if abs(normal @ beam) < 1e-9:
        raise BadHeader("the beam does not hit the detector plane", reason="bad_geometry")
    hit = beam * ((origin @ normal) / (beam @ normal))
    rel = hit - origin
    return {
        "fast_axis": tuple(float(x) + 0.0 for x in fast),
        "slow_axis": tuple(float(x) + 0.0 for x in slow),
        "pixel_size_mm": pixel,
        "beam_centre_px": (float(rel @ fast) / pixel[0], float(rel @ slow) / pixel[1]),
        "distance_mm": abs(float(origin @ normal)),
    }


def _rotation_axis(f: h5py.File) -> tuple[tuple[float, float, float], float | None, float | None]:
    """(axis in imgCIF, start, increment) of the scan axis of /entry/sample's depends_on chain."""
    depends = f.get("/entry/sample/depends_on")
    if depends is None:
        return (1.0, 0.0, 0.0), None, None
    chain = _follow_chain(f, _decode_str(depends[()]), "/entry/sample")
    rotations = [t for t in chain if _decode_str(t.attrs.get("transformation_type", "")).lower() == "rotation"]
    if not rotations:
        return (1.0, 0.0, 0.0), None, None
    scanned = [t for t in rotations if t.size > 1] or rotations
    axis = scanned[0]
    values = np.asarray(axis[()], dtype=np.float64).reshape(-1)
    increment = None
    inc_ds = axis.parent.get(axis.name.rsplit("/", 1)[1] + "_increment_set")
    if values.size > 1:
        increment = float(values[1] - values[0])
    elif isinstance(inc_ds, h5py.Dataset):
        increment = float(np.asarray(inc_ds[()]).reshape(-1)[0])
    return _to_imgcif(axis.attrs["vector"]), float(values[0]) if values.size else None, increment


def _wavelength_A(f: h5py.File) -> float | None:
    for path in ("/entry/instrument/beam/incident_wavelength", "/entry/instrument/monochromator/wavelength",
                 "/entry/instrument/beam/wavelength"):
        value = _value(f, path)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    energy = _value(f, "/entry/instrument/detector/detectorSpecific/photon_energy")
    if isinstance(energy, int | float) and energy > 0:
        return HC_KEV_A / (energy / 1000.0)
    return None


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
            with h5py.File(target, "r") as data:
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


def _virtual_blocks(f: h5py.File, dset: h5py.Dataset, master: Path) -> list[ImageBlock]:
    """Blocks of a virtual dataset: each mapping's image range in its source file."""
    blocks = []
    for vmap in dset.virtual_sources():
        (v0, *_), (v1, *_) = vmap.vspace.get_select_bounds()
        (s0, *_), _ = vmap.src_space.get_select_bounds()
        name = vmap.file_name
        target = master if name == "." else (master.parent / name)
        blocks.append(ImageBlock(int(v0), int(v1) - int(v0) + 1, target, vmap.dset_name, int(s0)))
    return sorted(blocks, key=lambda b: b.first_image)


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
            with h5py.File(self.path, "r") as f:
                self.blocks = self._layout(f)
                self.info = self._series_info(f, series_id, load_flatfield)
        except OSError as exc:
            raise BadInput(f"cannot read {self.path}: {exc}", reason="bad_hdf5") from exc

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
        det_path = "/entry/instrument/detector"
        det = f.get(det_path)
        spec = f"{det_path}/detectorSpecific"
        ds = self._first_dataset()
        nx, ny = _value(f, f"{spec}/x_pixels_in_detector"), _value(f, f"{spec}/y_pixels_in_detector")
        if ds is not None:
            shape = (int(ds.shape[1]), int(ds.shape[2]))
            dtype = ds.dtype.newbyteorder("<") if ds.dtype.byteorder == "=" else ds.dtype
            dtype_str = dtype.str
        elif (nx and ny) or isinstance(f.get(f"{spec}/pixel_mask"), h5py.Dataset):
            shape = (int(ny), int(nx)) if nx and ny else tuple(int(n) for n in f[f"{spec}/pixel_mask"].shape)
            depth = int(_value(f, f"{det_path}/bit_depth_image") or 32)
            dtype_str = f"<u{max(depth // 8, 1)}"
        else:
            raise BadHeader(f"{self.path}: neither image data nor detector size", reason="bad_layout")
        mask = None
        mask_ds = f.get(f"{spec}/pixel_mask")
        if isinstance(mask_ds, h5py.Dataset) and mask_ds.shape == shape:
            mask = np.ascontiguousarray(mask_ds[()], dtype=np.uint32)
        flatfield = None
        ff_ds = f.get(f"{spec}/flatfield")
        if load_flatfield and isinstance(ff_ds, h5py.Dataset) and ff_ds.shape == shape:
            flatfield = np.asarray(ff_ds[()], dtype=np.float32)
        geometry: dict[str, Any] = {}
        if isinstance(det, h5py.Group):
            geometry = _detector_from_chain(f, det) or {}
        if not geometry:
            geometry = self._legacy_geometry(f, det_path)
        axis, start, increment = _rotation_axis(f)
        if start is None:
            omega = f.get("/entry/sample/goniometer/omega")
            start = float(_first(omega[()])) if isinstance(omega, h5py.Dataset) else 0.0
        if increment is None:
            increment = 0.0
            for name in ("omega_range_average", "omega_increment"):
                value = _value(f, f"/entry/sample/goniometer/{name}")
                if isinstance(value, int | float):
                    increment = float(value)
                    break
        saturation = _value(f, f"{spec}/saturation_value")
        if saturation is None:
            saturation = _value(f, f"{spec}/countrate_correction_count_cutoff")
        n_images = sum(b.count for b in self.blocks) or None
        nimages, ntrigger = _value(f, f"{spec}/nimages"), _value(f, f"{spec}/ntrigger")
        if isinstance(nimages, int) and isinstance(ntrigger, int) and nimages * ntrigger > 0:
            n_images = max(n_images or 0, nimages * ntrigger)
        booleans = {k: _value(f, f"{det_path}/{k}") for k in ("countrate_correction_applied",
                                                               "flatfield_correction_applied")}
        wavelength = _wavelength_A(f)
        if wavelength is not None:
            geometry["wavelength_A"] = wavelength
        else:
            log.warning("%s gives no wavelength; the default %.3f A is used", self.path, 1.0)
        stem = self.path.name.removesuffix(".h5").removesuffix(".nxs")
        return SeriesInfo(
            series_id=series_id or stem.removesuffix("_master"),
            source="hdf5",
            image_shape=shape,
            dtype=dtype_str,
            n_images=n_images,
            detector_description=_decode_str(_value(f, f"{det_path}/description") or ""),
            detector_serial=_decode_str(_value(f, f"{det_path}/detector_number") or ""),
            sensor_material=_decode_str(_value(f, f"{det_path}/sensor_material") or ""),
            sensor_thickness_mm=_length_mm(f, f"{det_path}/sensor_thickness") or 0.0,
            rotation_axis=axis,
            omega_start_deg=float(start),
            omega_increment_deg=float(increment),
            count_time_s=_time_s(f, f"{det_path}/count_time"),
            frame_time_s=_time_s(f, f"{det_path}/frame_time"),
            saturation_value=int(saturation) if isinstance(saturation, int | float) else None,
            bit_depth_image=_value(f, f"{det_path}/bit_depth_image"),
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
        px = _length_mm(f, f"{det_path}/x_pixel_size")
        py = _length_mm(f, f"{det_path}/y_pixel_size")
        if px and py:
            out["pixel_size_mm"] = (px, py)
        bx, by = _value(f, f"{det_path}/beam_center_x"), _value(f, f"{det_path}/beam_center_y")
        if isinstance(bx, int | float) and isinstance(by, int | float):
            out["beam_centre_px"] = (float(bx), float(by))
        distance = _length_mm(f, f"{det_path}/detector_distance")
        if distance:
            out["distance_mm"] = distance
        orientation = f.get(f"{det_path}/geometry/orientation/value")
        if isinstance(orientation, h5py.Dataset) and orientation.size == 6:
            v = np.asarray(orientation[()], dtype=np.float64).reshape(2, 3)
            out["fast_axis"], out["slow_axis"] = _to_imgcif(v[0]), _to_imgcif(v[1])
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
