"""The one console entry point, `xtalstream`, with sub-commands.

Each sub-command is a thin `main(argv=None) -> int` in its own module, imported only when
that command runs (heavy imports stay out of start-up). Logging is configured here, once.
Exit status: 0 success, 2 bad arguments or input, 1 internal error (CONTRACT.md).
The tools (simulate, replay, bench) are addressed by name, so the processor package never
imports `tools` itself.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("streamer.commands.demo", "simulate a lysozyme sweep and process it live (the embedded default)"),
    "run": ("streamer.commands.run", "live processing of a detector stream"),
    "process": ("streamer.commands.process", "process recorded data (EIGER HDF5/NeXus, CBF/SMV series)"),
    "findspots": ("streamer.commands.findspots", "per-image analysis only, on recorded images"),
    "record": ("streamer.commands.record", "write a received series as EIGER-style HDF5"),
    "worker": ("streamer.commands.worker", "an extra worker process, on this or another host"),
    "scale": ("streamer.commands.scale", "symmetry, scaling and merging of an unmerged MTZ (offline)"),
    "replay": ("tools.replay", "act as the detector: stream recorded data"),
    "simulate": ("tools.simulate", "simulated rotation sweep with a truth file"),
    "bench": ("tools.bench", "benchmarks (figures, never pass/fail)"),
}


def configure_logging(verbosity: int = 0) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    level = int(os.environ.get("XTAL_LOG_LEVEL", level)) if os.environ.get("XTAL_LOG_LEVEL", "").isdigit() else level
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: xtalstream COMMAND [options]   (xtalstream COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from streamer import __version__

        print(f"xtalstream {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"xtalstream: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    verbosity = rest.count("-v") - rest.count("-q")
    rest = [a for a in rest if a not in ("-v", "-q")]
    configure_logging(verbosity)
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
