"""`xtalstream bench NAME`: benchmarks that print figures, never pass/fail.

Each benchmark is a module `tools.bench.<name>` with
    add_arguments(parser)          # its own options (optional)
    run(args) -> dict              # measure; return the figures (CONTRACT.md keys first)
The figures are printed as a table; with `--json` the last line printed is one JSON object.
Every benchmark's figures end with the machine they were measured on (`tools.bench.machine`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys

from tools.bench import machine

BENCHMARKS = {
    "decode": "receive + decompress throughput over ipc:// and tcp:// loopback",
    "perimage": "one core: decode + threshold + label + centroid per frame, vs memcpy and DIALS",
    "e2e": "receiver + workers + collector end to end: sustained rate, drops, latency",
    "simulate": "simulator frames/s",
    "indexing": "time from the last needed image to a published model; re-refinement time",
}

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # help once the benchmark has added its own options, so that `bench NAME --help` lists them
    p = argparse.ArgumentParser(prog="xtalstream bench", description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("name", choices=sorted(BENCHMARKS), help="; ".join(f"{k}: {v}" for k, v in BENCHMARKS.items()))
    p.add_argument("--detector", choices=["4M", "16M"], default="4M", help="frame size to benchmark")
    p.add_argument("--workers", type=int, default=None, help="worker processes (e2e)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--config", metavar="FILE.yaml", help="configuration file or directory (YAML)")
    try:
        names = [a for a in argv if a in BENCHMARKS]
        if names:
            module = importlib.import_module(f"tools.bench.{names[0]}")
            if hasattr(module, "add_arguments"):
                module.add_arguments(p)
        p.add_argument("-h", "--help", action="help", help="show this help message and exit")
        args = p.parse_args(argv)  # without a benchmark's name: help, or the error that names are required
        for option in ("frames", "workers"):
            if getattr(args, option, None) is not None and getattr(args, option) < 1:
                p.error(f"--{option} must be at least 1")
    except SystemExit as exc:
        return int(exc.code or 0)
    figures = module.run(args)
    details = machine.describe()
    figures.update({"machine": machine.summary(details), "machine_details": details})
    width = max((len(k) for k in figures), default=0)
    for key, value in figures.items():
        if not isinstance(value, (dict, list)):
            print(f"{key:<{width}}  {value:.4g}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        print(json.dumps(figures, sort_keys=False, default=float))
    return 0
