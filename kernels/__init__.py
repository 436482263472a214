"""numba kernels: pure numpy/numba, no I/O; thresholds and options are arguments.

Each kernel module exposes checked public wrappers; `streamer/` calls only those.
"""
