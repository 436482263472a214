"""hdf5plugin's compression filters for h5py, registered over any that HDF5_PLUGIN_PATH brings.

Beamline environments often set HDF5_PLUGIN_PATH for DIALS, XDS or a system HDF5. HDF5 then
loads the bitshuffle/LZ4 plugins found there, built against another HDF5 library; hdf5plugin
sees the filters present and skips its own, and writing a bitshuffle dataset fails ("error
during user callback"). Importing this module registers hdf5plugin's builds in their place.
"""

from __future__ import annotations

import hdf5plugin

hdf5plugin.register(force=True)

Bitshuffle = hdf5plugin.Bitshuffle
