"""Write a series as EIGER-style HDF5: a NeXus/NXmx master file and data files with bslz4 chunks.

Layout (what DECTRIS file writers produce and DIALS/dxtbx, XDS (Durin/Neggia) and albula read):

- `FILE.h5` (the master): `/entry/data/data_NNNNNN` external links to `/entry/data/data` in
  `FILE_data_NNNNNN.h5`, and `/entry/data/data`, one virtual dataset over them (NXdata's
  signal, which generic NXmx readers take); NXmx geometry:
  `/entry/instrument/beam/incident_wavelength`, `/entry/instrument/detector` (beam_center_x/y
  in pixels, detector_distance, x/y_pixel_size, count/frame time, sensor, saturation,
  `depends_on` chain translation -> module_offset -> fast/slow_pixel_direction), `pixel_mask`
  (NXmx's place; the same dataset as DECTRIS's `detectorSpecific/pixel_mask`),
  `detectorSpecific` (nimages, detector size), `/entry/sample` (`depends_on` the omega
  rotation, plus the older `goniometer/omega` fields).
  NXmx vectors are in the McStas frame (z along the beam, y up): imgCIF (x, y, z) -> (-x, y, -z).
- data files: `/entry/data/data` (n, ny, nx), one image per chunk, filter 32008 (bitshuffle +
  LZ4), `image_nr_low`/`image_nr_high` (1-based) attributes.

Chunks are written with `write_direct_chunk`: "bslz4" frames go to disk as received, byte for
byte; frames in other encodings are decoded and encoded to bslz4 once.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np

from streamer import codecs
from streamer.geometry import Detector
from streamer.hdf5_filters import Bitshuffle
from streamer.series import EncodedFrame, SeriesInfo

log = logging.getLogger(__name__)

IMAGES_PER_DATA_FILE = 1000  # the DECTRIS default (nimages_per_file)
IMGCIF_TO_MCSTAS = np.diag([-1.0, 1.0, -1.0])


def data_file_name(master: Path, index: int) -> Path:
    """`<stem>_data_NNNNNN.h5` next to the master (stem without a trailing `_master`)."""
    stem = master.name.removesuffix(".h5").removesuffix(".nxs").removesuffix("_master")
    return master.with_name(f"{stem}_data_{index:06d}.h5")


def _dataset(group: h5py.Group, name: str, value, units: str | None = None, **attrs) -> h5py.Dataset:
    ds = group.create_dataset(name, data=value)
    if units is not None:
        ds.attrs["units"] = units
    for key, val in attrs.items():
        ds.attrs[key] = val
    return ds


def _group(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    g = parent.require_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _transformation(group: h5py.Group, name: str, value, units: str, kind: str, vector, depends_on: str,
                    offset=(0.0, 0.0, 0.0)) -> None:
    _dataset(group, name, value, units, transformation_type=kind, vector=np.asarray(vector, dtype=np.float64),
             offset=np.asarray(offset, dtype=np.float64), offset_units="m", depends_on=depends_on)


def _virtual_data(data: h5py.Group, info: SeriesInfo, n_images: int, data_files: list[tuple[Path, int, int]]) -> None:
    """`/entry/data/data`: every image of the series in one virtual dataset over the data files
    (relative names: the master's folder), NXdata's `signal`. Generic NXmx readers read only
    that signal, or the first dataset when there is none: DIALS 3.12 (dxtbx's FormatNXmx) read
    the images of the first data file only, and failed past image 1000. Images that never
    arrived read as the detector's flag of pixels without data (all ones; -1 signed; NaN)."""
    ny, nx = info.image_shape
    dt = np.dtype(info.dtype)
    fill = np.iinfo(dt).max if dt.kind == "u" else -1 if dt.kind == "i" else np.nan
    layout = h5py.VirtualLayout(shape=(n_images, ny, nx), dtype=dt)
    for file, first, count in data_files:
        layout[first:first + count] = h5py.VirtualSource(file.name, "/entry/data/data", shape=(count, ny, nx), dtype=dt)
    data.create_virtual_dataset("data", layout, fillvalue=fill)
    data.attrs["signal"] = "data"


def write_master(path: Path, info: SeriesInfo, n_images: int, data_files: list[tuple[Path, int, int]]) -> None:
    """The NXmx master file for `info` with external links to `data_files` [(file, first image
    (0-based), n_images)], and the virtual dataset over them."""
    ny, nx = info.image_shape
    px_mm, py_mm = info.pixel_size_mm
    detector = Detector.from_beam_centre(info.beam_centre_px, info.distance_mm, info.pixel_size_mm, (nx, ny),
                                         info.fast_axis, info.slow_axis)
    origin_m = IMGCIF_TO_MCSTAS @ np.asarray(detector.origin_mm) / 1e3
    beam_m = np.array([0.0, 0.0, 1.0])  # McStas: the beam travels along +z
    normal = IMGCIF_TO_MCSTAS @ detector.normal
    to_plane_m = float(origin_m @ normal) / float(beam_m @ normal)  # sample -> beam hit on the plane
    with h5py.File(path, "w") as f:
        f.attrs["default"] = "entry"
        entry = _group(f, "entry", "NXentry")
        entry.create_dataset("definition", data="NXmx")
        data = _group(entry, "data", "NXdata")
        for k, (file, _, _) in enumerate(data_files, start=1):
            data[f"data_{k:06d}"] = h5py.ExternalLink(file.name, "/entry/data/data")
        if n_images > 0:
            _virtual_data(data, info, n_images, data_files)
        instrument = _group(entry, "instrument", "NXinstrument")
        beam = _group(instrument, "beam", "NXbeam")
        _dataset(beam, "incident_wavelength", info.wavelength_A, "angstrom")
        det = _group(instrument, "detector", "NXdetector")
        _dataset(det, "beam_center_x", info.beam_centre_px[0], "pixel")
        _dataset(det, "beam_center_y", info.beam_centre_px[1], "pixel")
        _dataset(det, "detector_distance", info.distance_mm / 1e3, "m")
        _dataset(det, "x_pixel_size", px_mm / 1e3, "m")
        _dataset(det, "y_pixel_size", py_mm / 1e3, "m")
        _dataset(det, "count_time", info.count_time_s, "s")
        _dataset(det, "frame_time", info.frame_time_s, "s")
        _dataset(det, "description", info.detector_description or "unknown")
        if info.detector_serial:
            _dataset(det, "detector_number", info.detector_serial)
        if info.sensor_material:
            _dataset(det, "sensor_material", info.sensor_material)
        _dataset(det, "sensor_thickness", info.sensor_thickness_mm / 1e3, "m")
        if info.bit_depth_image is not None:
            _dataset(det, "bit_depth_image", int(info.bit_depth_image))
        if info.countrate_correction_applied is not None:
            _dataset(det, "countrate_correction_applied", int(info.countrate_correction_applied))
        if info.flatfield_applied is not None:
            _dataset(det, "flatfield_correction_applied", int(info.flatfield_applied))
        if info.saturation_value is not None:
            _dataset(det, "saturation_value", int(info.saturation_value))
        if info.underload_value is not None or np.dtype(info.dtype).kind in "if":
            # NXmx's lowest valid value: without it dxtbx trusts every negative value of a signed
            # or float image, where we take -1 for a bad pixel (`nxmx.underload_value`)
            _dataset(det, "underload_value", int(info.underload_value or 0))
        det.create_dataset("depends_on", data="/entry/instrument/detector/transformations/translation")
        trans = _group(det, "transformations", "NXtransformations")
        _transformation(trans, "translation", to_plane_m, "m", "translation", beam_m, ".")
        module = _group(det, "module", "NXdetector_module")
        module.create_dataset("data_origin", data=np.array([0, 0], dtype=np.int64))
        module.create_dataset("data_size", data=np.array([ny, nx], dtype=np.int64))
        offset = origin_m - to_plane_m * beam_m
        _transformation(module, "module_offset", 0.0, "m", "translation", (1.0, 0.0, 0.0),
                        "/entry/instrument/detector/transformations/translation", offset)
        depends = "/entry/instrument/detector/module/module_offset"
        _transformation(module, "fast_pixel_direction", px_mm / 1e3, "m", "translation",
                        IMGCIF_TO_MCSTAS @ np.asarray(info.fast_axis), depends)
        _transformation(module, "slow_pixel_direction", py_mm / 1e3, "m", "translation",
                        IMGCIF_TO_MCSTAS @ np.asarray(info.slow_axis), depends)
        spec = _group(det, "detectorSpecific", "NXcollection")
        _dataset(spec, "nimages", int(n_images))
        _dataset(spec, "ntrigger", 1)
        _dataset(spec, "x_pixels_in_detector", int(nx))
        _dataset(spec, "y_pixels_in_detector", int(ny))
        _dataset(spec, "compression", "bslz4")
        if info.saturation_value is not None:
            _dataset(spec, "saturation_value", int(info.saturation_value))
            _dataset(spec, "countrate_correction_count_cutoff", int(info.saturation_value))
        if info.pixel_mask is not None:
            spec.create_dataset("pixel_mask", data=np.asarray(info.pixel_mask, dtype=np.uint32),
                                chunks=True, compression="gzip", compression_opts=2)
            # NXmx's own place for it, where generic NeXus readers (dxtbx's FormatNXmx) look: the
            # same dataset (a hard link, no second copy). Without it DIALS took the gaps' and bad
            # pixels' flag values (dxtbx reads 2**32 - 1 as -1) for counts.
            det["pixel_mask"] = spec["pixel_mask"]
        if info.flatfield is not None:
            spec.create_dataset("flatfield", data=np.asarray(info.flatfield, dtype=np.float32),
                                chunks=True, compression="gzip", compression_opts=2)
        angles = info.omega_start_deg + info.omega_increment_deg * np.arange(max(n_images, 1), dtype=np.float64)
        axis_m = IMGCIF_TO_MCSTAS @ np.asarray(info.rotation_axis, dtype=np.float64)
        sample = _group(entry, "sample", "NXsample")
        sample.create_dataset("depends_on", data="/entry/sample/transformations/omega")
        strans = _group(sample, "transformations", "NXtransformations")
        _transformation(strans, "omega", angles, "deg", "rotation", axis_m, ".")
        _dataset(strans, "omega_increment_set", info.omega_increment_deg, "deg")
        _dataset(strans, "omega_end", angles + info.omega_increment_deg, "deg")
        gonio = _group(sample, "goniometer", "NXtransformations")
        _dataset(gonio, "omega", angles, "degree")
        _dataset(gonio, "omega_range_average", info.omega_increment_deg, "degree")
        _dataset(gonio, "omega_increment", info.omega_increment_deg, "degree")


class SeriesRecorder:
    """Writes one series: call `write(frame)` for each frame (any order), then `close()`.

    `path` is the master file; data files go next to it, `images_per_file` images each.
    Frames whose image_number was already written, or whose shape/dtype do not fit the series,
    raise ValueError (the caller counts them). Missing images stay unwritten (read back as 0 by
    h5py; `missing` lists them).
    """

    def __init__(self, path: str | Path, info: SeriesInfo, images_per_file: int = IMAGES_PER_DATA_FILE):
        self.path = Path(path)
        self.info = info
        self.images_per_file = int(images_per_file)
        self._data: dict[int, h5py.File] = {}
        self._written: set[int] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bytes_written = 0
        self.reencoded = 0

    def _dataset(self, file_index: int) -> h5py.Dataset:
        if file_index not in self._data:
            f = h5py.File(data_file_name(self.path, file_index + 1), "w")
            entry = _group(f, "entry", "NXentry")
            data = _group(entry, "data", "NXdata")
            ny, nx = self.info.image_shape
            ds = data.create_dataset("data", shape=(0, ny, nx), maxshape=(self.images_per_file, ny, nx),
                                     dtype=np.dtype(self.info.dtype), chunks=(1, ny, nx),
                                     **Bitshuffle(nelems=0, cname="lz4"))
            ds.attrs["image_nr_low"] = np.uint64(file_index * self.images_per_file + 1)
            ds.attrs["image_nr_high"] = np.uint64(file_index * self.images_per_file)
            self._data[file_index] = f
        return self._data[file_index]["/entry/data/data"]

    def write(self, frame: EncodedFrame) -> None:
        if tuple(frame.shape) != tuple(self.info.image_shape) or np.dtype(frame.dtype) != np.dtype(self.info.dtype):
            raise ValueError(f"frame {frame.image_number} is {frame.shape} {frame.dtype}, the series "
                             f"{self.info.image_shape} {self.info.dtype}")
        n = int(frame.image_number)
        if n < 0 or n in self._written:
            raise ValueError(f"image {n} is negative or already written")
        if frame.encoding == "bslz4":
            chunk = np.frombuffer(frame.data, dtype=np.uint8)
        else:
            chunk = np.frombuffer(codecs.encode(codecs.decode(frame), "bslz4"), dtype=np.uint8)
            self.reencoded += 1
        file_index, k = divmod(n, self.images_per_file)
        ds = self._dataset(file_index)
        if ds.shape[0] <= k:
            ds.resize(k + 1, axis=0)
            ds.attrs["image_nr_high"] = np.uint64(file_index * self.images_per_file + k + 1)
        ds.id.write_direct_chunk((k, 0, 0), chunk)
        self._written.add(n)
        self.bytes_written += chunk.nbytes

    @property
    def n_written(self) -> int:
        return len(self._written)

    @property
    def n_images(self) -> int:
        return max(self._written) + 1 if self._written else 0

    @property
    def missing(self) -> list[int]:
        return sorted(set(range(self.n_images)) - self._written)

    def close(self) -> Path:
        """Close the data files and write the master; returns the master's path."""
        files = []
        for index in sorted(self._data):
            f = self._data[index]
            files.append((Path(f.filename), index * self.images_per_file, f["/entry/data/data"].shape[0]))
            f.close()
        self._data.clear()
        write_master(self.path, self.info, self.n_images, files)
        if self.missing:
            log.warning("%s: %d images never arrived (first %s)", self.path, len(self.missing), self.missing[:5])
        log.info("recorded %d images of %s to %s", self.n_written, self.info.series_id, self.path)
        return self.path

    def __enter__(self) -> SeriesRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._data or not self.path.exists():
            self.close()


def record_frames(path: str | Path, info: SeriesInfo, frames, images_per_file: int = IMAGES_PER_DATA_FILE) -> Path:
    """Write `info` and the EncodedFrames of `frames` to `path` (master) + data files."""
    with SeriesRecorder(path, info, images_per_file) as recorder:
        for frame in frames:
            recorder.write(frame)
        return recorder.close()
