"""`xtalstream scale UNMERGED.mtz --out DIR`: symmetry, scaling and merging (offline).

This command arrives with the scaling stage (a later issue); until then it refuses to run
rather than write anything that would look like a result.
"""

from __future__ import annotations

import sys

from streamer.commands.common import cli_errors, parser

NOT_YET = ("xtalstream scale is not available yet: it arrives with the symmetry/scaling/merging stage "
           "(see ROADMAP.md); nothing was written")


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = parser("scale", "symmetry, scaling and merging of an unmerged MTZ file (offline). "
                        "Not available yet: this command arrives with the scaling stage; running it exits 2.")
    p.add_argument("mtz", metavar="UNMERGED.mtz", help="unmerged intensities (MTZ)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.parse_args(argv)
    print(f"xtalstream: error: {NOT_YET}", file=sys.stderr)
    return 2
