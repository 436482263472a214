"""`xtalstream worker --connect URL`: one more worker process, on this host or another.

URL is the collector's control endpoint that `run`/`process` print (tcp://HOST:PORT when
they bind on TCP, ipc://... for local workers). The worker learns the frame, result and model
endpoints from it, and the header of each series when its first frame comes.
"""

from __future__ import annotations

import logging
import signal

from streamer.commands.common import cli_errors, parser
from streamer.errors import BadInput

log = logging.getLogger(__name__)


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = parser("worker", __doc__.splitlines()[0])
    p.add_argument("--connect", required=True, metavar="URL", help="the collector's control endpoint")
    p.add_argument("--name", help="worker name in logs and results (default host:pid)")
    p.add_argument("--analyser", default=None, metavar="MODULE:NAME",
                   help="per-image analyser class (default streamer.perimage:ImageAnalyser)")
    p.add_argument("--decoder", default=None, metavar="MODULE:NAME",
                   help="frame decoder function (default streamer.codecs:decode)")
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
    try:
        return worker.run()
    except TimeoutError:
        if worker.stop.is_set():
            return 0
        raise
    finally:
        ctx.term()
