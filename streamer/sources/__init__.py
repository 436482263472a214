"""Recorded-data sources: each turns files into a `SeriesInfo` and an iterator of `EncodedFrame`s.

- `eiger_h5`: EIGER HDF5/NeXus master files (external links or virtual datasets) and bare data
  files; the compressed chunks are handed on as they are stored.
- `image_files`: CBF (PILATUS miniCBF) and SMV (ADSC, nanoBragg) image series, read with fabio.
- `open_any.open_source(paths)`: picks the reader from the files' content.
"""

from streamer.sources.open_any import open_source

__all__ = ["open_source"]
