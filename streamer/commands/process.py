"""`xtalstream process PATH... --out DIR`: the live pipeline on recorded data, as fast as it goes.

Frames come from the files (EIGER HDF5/NeXus master, CBF/SMV series) straight into the
fan-out: no network detector, no frame dropped for lack of a free worker (the source waits).
"""

from __future__ import annotations

from streamer.commands.common import cli_errors, parser
from streamer.commands.run import add_pipeline_arguments, configure, run_session


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = parser("process", "process recorded data (EIGER HDF5/NeXus master file, CBF/SMV image series)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="master file, or image files (e.g. images/*.cbf)")
    p.add_argument("--pedestal", type=int, default=None, metavar="ADU",
                   help="offset subtracted from SMV pixels (default: the header's, as DIALS; nanoBragg writes 40 "
                        "without saying so)")
    add_pipeline_arguments(p)
    p.set_defaults(http="off")
    args = p.parse_args(argv)
    config = configure(args)

    from streamer.series import SeriesEnd
    from streamer.sources.open_any import open_source

    series, frames = open_source(args.paths, pedestal=args.pedestal)  # bad paths raise BadInput: exit 2

    def events():
        yield series
        yield from frames
        yield SeriesEnd(series.series_id, "end")

    run_session(config, events, args.out, live=False)
    return 0
