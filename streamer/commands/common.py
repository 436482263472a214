"""Argument handling shared by the sub-commands: --config, and turning bad input into exit 2."""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import sys
from collections.abc import Callable

from streamer.errors import BadInput

log = logging.getLogger(__name__)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"xtalstream {prog}", description=description)
    p.add_argument("--config", metavar="FILE.yaml", help="configuration file or directory (YAML)")
    return p


# what a wrong host, port or URL given by the user raises (not an internal error)
ADDRESS_ERRORS = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EINVAL, errno.EPROTONOSUPPORT,
                  errno.ENODEV}


def _address_error(exc: Exception) -> bool:
    zmq = sys.modules.get("zmq")  # imported by the commands that open sockets
    network = isinstance(exc, OSError) or (zmq is not None and isinstance(exc, zmq.ZMQError))
    return network and getattr(exc, "errno", None) in ADDRESS_ERRORS


PATH_ERRORS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOSPC,
               errno.EEXIST}


def _path_error(exc: BaseException) -> bool:
    """A file or folder the user named that cannot be read or written (the error names it)."""
    return isinstance(exc, OSError) and exc.errno in PATH_ERRORS and exc.filename is not None


def cli_errors(func: Callable[..., int]) -> Callable[..., int]:
    """Exit 2 with a message on bad input or arguments, 1 on an internal error."""

    @functools.wraps(func)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return func(argv)
        except SystemExit as exc:  # argparse: 2 for bad arguments, 0 for --help
            return int(exc.code or 0) if isinstance(exc.code, int) else 2
        except BadInput as exc:
            print(f"xtalstream: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("xtalstream: interrupted", file=sys.stderr)
            return 1
        except Exception as exc:
            if _address_error(exc):  # e.g. a --listen port in use: the user's input, not a bug
                print(f"xtalstream: error: cannot use that network address: {exc}", file=sys.stderr)
                return 2
            if _path_error(exc):  # e.g. --out in a folder that cannot be made
                print(f"xtalstream: error: {exc}", file=sys.stderr)
                return 2
            log.exception("internal error")
            return 1

    return wrapper
