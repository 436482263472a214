"""NeXus/NXmx helpers: typed values with units, and geometry from `depends_on` chains.

NXmx vectors are in the McStas frame (z along the beam, y up); they are converted to the
DIALS/imgCIF frame by a 180-degree rotation about y, (x, y, z) -> (-x, y, -z), as dxtbx does.
A chain is followed from a dataset through its `depends_on` attributes up to "."; each
transformation moves a point by `offset` plus `vector * value` (translation) or rotates it by
`value` about `vector` and then adds `offset` (NeXus NXtransformations).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from streamer.errors import BadHeader
from streamer.series import optional_int

log = logging.getLogger(__name__)

HC_KEV_A = 12.398419843320026  # h*c in keV*Angstrom (CODATA 2018)
MCSTAS_TO_IMGCIF = np.diag([-1.0, 1.0, -1.0])
LENGTH_TO_MM = {"m": 1e3, "meter": 1e3, "metre": 1e3, "mm": 1.0, "millimeter": 1.0, "um": 1e-3, "microns": 1e-3,
                 "nm": 1e-6, "cm": 10.0}

def decode_str(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8", "replace").strip("\x00 ")
    return str(value)


def first_value(data: Any) -> Any:
    """First element as a Python number; float32 by its shortest decimal (0.075, not 0.0750000036)."""
    x = np.asarray(data).reshape(-1)[0]
    if isinstance(x, np.float32 | np.float16):
        return float(str(x))
    return x.item() if isinstance(x, np.generic) else x


def units_of(obj: h5py.Dataset) -> str:
    return decode_str(obj.attrs.get("units", "")).lower()


def dataset_value(group: h5py.Group, path: str) -> Any | None:
    try:
        obj = group.get(path)
    except (KeyError, OSError):  # a dangling external link
        return None
    if not isinstance(obj, h5py.Dataset):
        return None
    data = obj[()]
    if isinstance(data, np.ndarray | np.generic) and np.asarray(data).size >= 1 and np.asarray(data).dtype.kind in "fiub":
        return first_value(data)
    if isinstance(data, np.generic):
        return data.item()
    return data


def length_mm(group: h5py.Group, path: str) -> float | None:
    obj = group.get(path)
    if not isinstance(obj, h5py.Dataset):
        return None
    value = float(first_value(obj[()]))
    units = units_of(obj)
    # DECTRIS writes metres, and NeXus lengths without units are taken as such
    return value * LENGTH_TO_MM.get(units, 1e3)


@dataclass(frozen=True)
class NxLayout:
    """Paths of a NeXus file's NXmx groups (entry, instrument, detector, sample, beam)."""

    entry: str
    instrument: str
    detector: str
    sample: str
    beam: str


def _nx_class(obj: Any) -> str:
    return decode_str(obj.attrs.get("NX_class", "")) if isinstance(obj, h5py.Group) else ""


def _child(f: h5py.File, parent: str, name: str, nx_class: str) -> str | None:
    """`parent`/`name` if it is a group, else the first (by name) child group of class `nx_class`."""
    group = f.get(parent) if parent else None
    if not isinstance(group, h5py.Group):
        return None
    if isinstance(group.get(name), h5py.Group):
        return f"{parent.rstrip('/')}/{name}"
    for key in sorted(group):
        try:
            if _nx_class(group.get(key)) == nx_class:
                return f"{parent.rstrip('/')}/{key}"
        except (KeyError, OSError):  # a dangling external link
            continue
    return None


def nx_layout(f: h5py.File) -> NxLayout:
    """Where the groups are: at DECTRIS's names (/entry/instrument/detector, /entry/sample,
    /entry/instrument/beam), else the first group of the NXmx class, as dxtbx finds them (a
    detector group named after its detector, a beam in the sample group as NXmx had it before
    2020). Paths not found are given at their usual names."""
    entry = _child(f, "/", "entry", "NXentry") or "/entry"
    instrument = _child(f, entry, "instrument", "NXinstrument") or f"{entry}/instrument"
    sample = _child(f, entry, "sample", "NXsample") or f"{entry}/sample"
    return NxLayout(entry, instrument, _child(f, instrument, "detector", "NXdetector") or f"{instrument}/detector",
                    sample, _child(f, instrument, "beam", "NXbeam") or _child(f, sample, "beam", "NXbeam")
                    or f"{instrument}/beam")


def time_s(group: h5py.Group, path: str) -> float:
    value = dataset_value(group, path)
    return float(value) if isinstance(value, int | float) else 0.0


def to_imgcif(v) -> tuple[float, float, float]:
    out = MCSTAS_TO_IMGCIF @ np.asarray(v, dtype=np.float64)
    return tuple(float(x) + 0.0 for x in out)  # + 0.0 turns -0.0 into 0.0


def rotation_matrix(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Right-handed rotation matrix about `axis` (Rodrigues)."""
    a = axis / np.linalg.norm(axis)
    t = math.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * (k @ k)


def follow_chain(f: h5py.File, start: str, base: str = "/") -> list[h5py.Dataset]:
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
        path = decode_str(obj.attrs.get("depends_on", "."))
    return chain


def apply_chain(chain: list[h5py.Dataset], point: np.ndarray, directions: list[np.ndarray]) -> tuple:
    """Place `point` (McStas, mm) and rotate `directions` through `chain` at its first value."""
    point = point.astype(np.float64)
    directions = [d.astype(np.float64) for d in directions]
    for t in chain:
        vector = np.asarray(t.attrs.get("vector", (0.0, 0.0, 1.0)), dtype=np.float64).reshape(3)
        offset = np.asarray(t.attrs.get("offset", (0.0, 0.0, 0.0)), dtype=np.float64).reshape(3)
        offset_units = decode_str(t.attrs.get("offset_units", units_of(t) or "m")).lower()
        offset = offset * LENGTH_TO_MM.get(offset_units, 1e3)
        value = float(first_value(t[()])) if t.size else 0.0
        kind = decode_str(t.attrs.get("transformation_type", "translation")).lower()
        if kind == "rotation":
            rot = rotation_matrix(vector, value if units_of(t).startswith("deg") else math.degrees(value))
            point = rot @ point + offset
            directions = [rot @ d for d in directions]
        else:
            point = point + offset + vector / np.linalg.norm(vector) * value * LENGTH_TO_MM.get(units_of(t), 1e3)
    return point, directions


def detector_from_chain(f: h5py.File, det: h5py.Group) -> dict[str, Any] | None:
    """Origin, axes, beam centre and distance from the NXdetector_module depends_on chains."""
    modules = [g for g in det.values() if isinstance(g, h5py.Group) and "fast_pixel_direction" in g]
    if not modules:
        return None
    module = modules[0]
    fast_ds, slow_ds = module["fast_pixel_direction"], module["slow_pixel_direction"]
    fast = np.asarray(fast_ds.attrs["vector"], dtype=np.float64).reshape(3)
    slow = np.asarray(slow_ds.attrs["vector"], dtype=np.float64).reshape(3)
    pixel = (
        float(first_value(fast_ds[()])) * LENGTH_TO_MM.get(units_of(fast_ds), 1e3),
        float(first_value(slow_ds[()])) * LENGTH_TO_MM.get(units_of(slow_ds), 1e3),
    )
    # pixel (0, 0)'s outer corner: the fast axis's own offset, then the chain it depends on
    # (its own translation by one pixel is what steps to the next pixel, so it is left out)
    corner = np.asarray(fast_ds.attrs.get("offset", (0.0, 0.0, 0.0)), dtype=np.float64).reshape(3)
    corner = corner * LENGTH_TO_MM.get(decode_str(fast_ds.attrs.get("offset_units", "m")).lower(), 1e3)
    chain = follow_chain(f, fast_ds.name)[1:]
    origin, (fast, slow) = apply_chain(chain, corner, [fast, slow])
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


def scan_axis(f: h5py.File, sample: str = "/entry/sample") -> tuple[tuple[float, float, float], float | None,
                                                                     float | None]:
    """(axis in imgCIF, start, increment) of the scan axis of the `sample` group's depends_on chain.

    The axis is the scanned rotation's vector turned by the rotations it depends on at their
    (fixed) values, as dxtbx's multi-axis goniometer gives it: a phi scan under chi = 90 deg
    turns about the vertical axis."""
    depends = f.get(f"{sample}/depends_on")
    if depends is None:
        return (1.0, 0.0, 0.0), None, None
    chain = follow_chain(f, decode_str(depends[()]), sample)
    rotations = [t for t in chain if decode_str(t.attrs.get("transformation_type", "")).lower() == "rotation"]
    if not rotations:
        return (1.0, 0.0, 0.0), None, None
    scanned = [t for t in rotations if t.size > 1] or rotations
    axis = scanned[0]
    outer = chain[[t.name for t in chain].index(axis.name) + 1:]
    vector = np.asarray(axis.attrs["vector"], dtype=np.float64).reshape(3)
    _, (direction,) = apply_chain(outer, np.zeros(3), [vector / np.linalg.norm(vector)])
    values = np.asarray(axis[()], dtype=np.float64).reshape(-1)
    increment = None
    inc_ds = axis.parent.get(axis.name.rsplit("/", 1)[1] + "_increment_set")
    if values.size > 1:
        increment = float(values[1] - values[0])
    elif isinstance(inc_ds, h5py.Dataset):
        increment = float(np.asarray(inc_ds[()]).reshape(-1)[0])
    return to_imgcif(direction), float(values[0]) if values.size else None, increment


WAVELENGTH_TO_A = {"angstrom": 1.0, "a": 1.0, "nm": 10.0, "m": 1e10, "pm": 0.01}


def wavelength_A_of(f: h5py.File, layout: NxLayout | None = None) -> float | None:
    """The beam's wavelength (A; its units read), else DECTRIS's photon energy, else None."""
    layout = layout or nx_layout(f)
    for path in (f"{layout.beam}/incident_wavelength", f"{layout.instrument}/monochromator/wavelength",
                 f"{layout.beam}/wavelength"):
        value = dataset_value(f, path)
        if isinstance(value, int | float) and value > 0:
            return float(value) * WAVELENGTH_TO_A.get(units_of(f[path]), 1.0)
    energy = dataset_value(f, f"{layout.detector}/detectorSpecific/photon_energy")
    if isinstance(energy, int | float) and energy > 0:
        return HC_KEV_A / (energy / 1000.0)
    return None


DLS_NAMES = ("i03", "i04", "i24", "vmxi")  # Diamond beamlines whose files dxtbx reads with FormatNXmxDLS


def instrument_name(f: h5py.File, path: str = "/entry/instrument") -> str:
    """The instrument group's short_name, else its name's short_name or value ("" if none)."""
    instrument = f.get(path)
    name = f.get(f"{path}/name")
    if isinstance(instrument, h5py.Group) and "short_name" in instrument.attrs:
        return decode_str(instrument.attrs["short_name"])
    if isinstance(name, h5py.Dataset):
        return decode_str(name.attrs["short_name"] if "short_name" in name.attrs else first_value(name[()]))
    return ""


def underload_value(f: h5py.File, det_path: str, dtype: str) -> int | None:
    """The lowest trusted value (`SeriesInfo.underload_value`), as dxtbx's NeXus reader takes
    it: the detector's `underload_value` (NXmx); without one, 0 for Diamond's files
    (FormatNXmxDLS; None here, the usual bound) and -0x7FFFFFFF for others, so that a signed or
    float image's negative values count (an unsigned image holds none: None)."""
    value = optional_int(dataset_value(f, f"{det_path}/underload_value"))
    if value is not None:
        return value
    name = instrument_name(f, det_path.rsplit("/", 1)[0])
    if name.lower() in DLS_NAMES or name.upper().startswith(("DIAMOND BEAMLINE", "DLS")):
        return None
    return -0x7FFFFFFF if np.dtype(dtype).kind in "if" else None


def pixel_mask(f: h5py.File, det_path: str, shape: tuple[int, int], where: Any = "") -> np.ndarray | None:
    """The detector's pixel mask (uint32 bit field, non-zero: not to be used), or None.

    The bitwise OR of every mask the file holds that fits the images: NXmx's `pixel_mask` and
    `pixel_mask_N` in the detector group (where DIALS and other NeXus writers put it) and
    DECTRIS's `detectorSpecific/pixel_mask` (often the same dataset, linked). A mask with one
    image's worth per frame is used only if it has a single frame, as in dxtbx; one that does
    not fit is logged and left out (its pixels are not masked: say so).
    """
    det = f.get(det_path)
    names = [f"{det_path}/detectorSpecific/pixel_mask", f"{det_path}/pixel_mask"]
    if isinstance(det, h5py.Group):
        names += sorted((f"{det_path}/{k}" for k in det if re.fullmatch(r"pixel_mask_\d+", k)),
                        key=lambda name: int(name.rpartition("_")[2]))
    mask: np.ndarray | None = None
    read: list[h5py.Dataset] = []
    for name in names:
        ds = f.get(name)
        link = f.get(name, getlink=True) if ds is None else None
        if link is not None:  # a link to a file or path not there
            log.warning("%s: %s is %r, which cannot be read: its pixels are not masked", where, name, link)
        if not isinstance(ds, h5py.Dataset) or any(ds == other for other in read):  # a link to one read
            continue
        read.append(ds)
        dims = ds.shape[1:] if len(ds.shape) == 3 and ds.shape[0] == 1 else ds.shape
        if dims != shape or not (np.issubdtype(ds.dtype, np.integer) or ds.dtype == np.bool_):
            log.warning("%s: %s (%s, shape %s) does not fit the images (%s): not used", where, name, ds.dtype,
                        ds.shape, shape)
            continue
        values = np.asarray(ds[()], dtype=np.uint32).reshape(shape)
        mask = values if mask is None else mask | values
    return mask if mask is None else np.ascontiguousarray(mask)
