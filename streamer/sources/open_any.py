"""Open recorded data of any supported kind, chosen by content (not by file name).

- HDF5 signature: EIGER master file (or data files alone) -> `eiger_h5`;
- "###CBF" / SMV "{ HEADER_BYTES=" (also inside .bz2/.gz) -> `image_files`;
- a directory: a stream capture (`streamer.captures`), or else the CBF/SMV images it holds.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from streamer.errors import BadInput
from streamer.series import EncodedFrame, SeriesEnd, SeriesInfo
from streamer.sources.eiger_h5 import EigerH5Source, is_hdf5, open_eiger
from streamer.sources.image_files import image_format, open_images

log = logging.getLogger(__name__)


def source_kind(paths: Sequence[Path]) -> str:
    """"hdf5", "images" or "capture" for the given paths, or BadInput."""
    if len(paths) == 1 and paths[0].is_dir():
        return "images" if any(image_format(p) for p in sorted(paths[0].iterdir())[:3] if p.is_file()) else "capture"
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BadInput(f"{missing[0]} does not exist or is not a file", reason="no_input")
    if all(is_hdf5(p) for p in paths):
        return "hdf5"
    if all(image_format(p) for p in paths):
        return "images"
    raise BadInput(f"cannot tell the format of {[str(p) for p in paths][:3]}: not EIGER HDF5, CBF or SMV",
                   reason="unknown_format")


def _open_hdf5(paths: Sequence[Path], series_id: str | None) -> tuple[SeriesInfo, Iterator[EncodedFrame]]:
    """One master file (others given alongside are its data files), or data files alone in image order."""
    masters = [p for p in paths if "_master" in p.name] or (paths if len(paths) == 1 else [])
    if masters:
        return open_eiger(masters[0], series_id)
    sources = sorted((EigerH5Source(p, series_id) for p in paths), key=lambda s: s.blocks[0].first_image)
    first = sources[0].info
    series_id = series_id or re.sub(r"_data_\d+$", "", first.series_id)
    info = dataclasses.replace(first, series_id=series_id, n_images=sum(len(s) for s in sources))

    def frames() -> Iterator[EncodedFrame]:
        try:
            for source in sources:
                for frame in source.frames():
                    yield dataclasses.replace(frame, series_id=info.series_id)
        finally:
            for source in sources:
                source.close()

    return info, frames()


def open_capture(folder: Path) -> tuple[SeriesInfo, Iterator[EncodedFrame]]:
    """The first series of a stream capture, through the stream receiver's own parsing."""
    import zmq

    from streamer.captures import read_capture
    from streamer.receiver import Receiver

    messages = read_capture(folder)
    ctx = zmq.Context.instance()
    receiver = Receiver(ctx, f"inproc://xtalstream-capture-{uuid.uuid4().hex}")
    events = itertools.chain.from_iterable(receiver.handle(parts) for parts in messages)
    info = None
    for event in events:
        if isinstance(event, SeriesInfo):
            info = event
            break
    if info is None:
        receiver.close()
        raise BadInput(f"capture {folder} holds no series start", reason="bad_capture")

    def frames() -> Iterator[EncodedFrame]:
        try:
            for event in events:
                if isinstance(event, EncodedFrame):
                    yield event
                elif isinstance(event, SeriesEnd | SeriesInfo):  # the first series is over
                    return
        finally:
            receiver.close()

    return info, frames()


def open_source(paths: Sequence[str | Path], series_id: str | None = None, encoding: str = "raw",
                pedestal: int | None = None) -> tuple[SeriesInfo, Iterator[EncodedFrame]]:
    """SeriesInfo and EncodedFrames (series order) of recorded data, reader chosen by content.

    `paths`: an EIGER master file (plus, optionally, its data files), EIGER data files alone, a
    CBF/SMV image series (in the order given; .bz2/.gz allowed), a folder of such images, or a
    stream capture folder. HDF5 and captures give the frames as stored/sent (compressed);
    CBF/SMV give `encoding` ("raw" by default, or "bslz4"/"lz4-h5"). `pedestal` is subtracted
    from SMV pixels (None: the header's, as DIALS takes it; nanoBragg's real ADC offset is 40).
    Raises BadInput for anything unreadable.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise BadInput("no input paths given", reason="no_input")
    kind = source_kind(paths)
    if kind == "hdf5":
        return _open_hdf5(paths, series_id)
    if kind == "capture":
        return open_capture(paths[0])
    if len(paths) == 1 and paths[0].is_dir():
        paths = sorted(p for p in paths[0].iterdir() if p.is_file() and image_format(p))
    return open_images(paths, series_id, encoding, pedestal)
