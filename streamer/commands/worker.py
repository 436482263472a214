"""`xtalstream worker --connect URL`: one more worker process, on this host or another.

URL is the collector's control endpoint that `run`/`process` print (tcp://HOST:PORT when
they bind on TCP, ipc://... for local workers). The worker learns the frame, result and model
endpoints from it, and the header of each series when its first frame comes.

SIGTERM or SIGINT stops it (exit 0), also while it is still waiting for a collector. The
local workers of `run`/`process` are given `--parent-pid`: they stop when that process is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

from streamer.commands.common import cli_errors, parser
from streamer.errors import BadInput

log = logging.getLogger(__name__)

PARENT_CHECK_S = 0.5  # how often a local worker looks whether the process that started it is alive


def watch_parent(pid: int, stop: threading.Event) -> threading.Thread:
    """Stop (as on SIGTERM) once this process's parent is no longer `pid`: a local worker must
    not outlive a run that died without stopping it. The run also asks Linux for a SIGTERM on
    its death (PR_SET_PDEATHSIG); this covers the rest: a parent that died before that was set,
    a run started from a thread that ended, other systems. Checked at once, then every
    PARENT_CHECK_S."""

    def watch() -> None:
        while os.getppid() == pid:
            if stop.wait(PARENT_CHECK_S):
                return
        log.warning("the process that started this worker (%d) is gone: stopping", pid)
        stop.set()

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = parser("worker", __doc__.splitlines()[0])
    p.add_argument("--connect", required=True, metavar="URL", help="the collector's control endpoint")
    p.add_argument("--name", help="worker name in logs and results (default host:pid)")
    p.add_argument("--analyser", default=None, metavar="MODULE:NAME",
                   help="per-image analyser class (default streamer.perimage:ImageAnalyser)")
    p.add_argument("--decoder", default=None, metavar="MODULE:NAME",
                   help="frame decoder function (default streamer.codecs:decode)")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="stop when process PID is gone (run/process set it for their local workers)")
    args = p.parse_args(argv)
    if args.connect.partition("://")[0] not in ("tcp", "ipc"):
        raise BadInput(f"--connect {args.connect!r}: expected tcp://HOST:PORT or ipc://PATH", reason="bad_argument")

    import zmq

    from streamer.config import load_config, log_modified
    from streamer.worker import DEFAULT_ANALYSER, DEFAULT_DECODER, Worker

    config = load_config(args.config)
    log_modified(config)
    ctx = zmq.Context()
    worker = Worker(ctx, args.connect, config, analyser=args.analyser or DEFAULT_ANALYSER,
                    decoder=args.decoder or DEFAULT_DECODER, name=args.name)

    def stop(signum, _frame):
        log.info("signal %d: stopping", signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.parent_pid is not None:
        watch_parent(args.parent_pid, worker.stop)
    try:
        return worker.run()
    except TimeoutError:
        if worker.stop.is_set():  # asked to stop: not an error, though no collector ever answered
            log.info("worker %s stopped before a collector answered at %s", worker.name, args.connect)
            return 0
        raise
    finally:
        ctx.term()
