"""xtalstream processor: receive detector streams, analyse frames, index, and report live."""

__version__ = "0.1.0"
