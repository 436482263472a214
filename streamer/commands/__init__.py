"""One module per `xtalstream` sub-command, each a thin `main(argv=None) -> int`."""
