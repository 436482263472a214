"""`xtalstream demo`: the embedded default: a simulated lysozyme sweep processed live.

Starts `xtalstream simulate` as a child process acting as the detector (PUSH bound on a
loopback port), receives its stream with the live pipeline exactly as `run --once` does,
prints per-image progress and the dashboard URL, writes ./xtalstream-demo/ and exits when
the sweep is done (`--serve` keeps the dashboard up until Ctrl-C).
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading

from streamer.commands.common import cli_errors, parser

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@cli_errors
def main(argv: list[str] | None = None) -> int:
    p = parser("demo", "simulate a lysozyme sweep, stream it to a local processor, show live feedback")
    p.add_argument("--images", type=int, default=90, metavar="N", help="images in the simulated sweep (default 90)")
    p.add_argument("--preset", default="lysozyme", help="simulator preset (default lysozyme)")
    p.add_argument("--rate", type=float, default=None, metavar="HZ", help="frame rate of the simulated detector")
    p.add_argument("--out", default="xtalstream-demo", metavar="DIR", help="output directory (default ./xtalstream-demo)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="local worker processes (default cores - 1)")
    p.add_argument("--http", default=None, metavar="HOST:PORT", help="dashboard address (default 127.0.0.1:8470)")
    p.add_argument("--result-stream", default=None, metavar="URL",
                   help="PUB endpoint of the per-image result stream (default tcp://127.0.0.1:8471; 'off' disables)")
    p.add_argument("--serve", action="store_true", help="keep the dashboard up after the sweep (until Ctrl-C)")
    args = p.parse_args(argv)
    if args.images < 1:
        p.error("--images must be at least 1")
    args.listen = None
    from streamer.commands.run import configure, run_session

    config = configure(args)

    import zmq

    from streamer.receiver import Receiver

    url = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "streamer.cli", "simulate", "--preset", args.preset,
           "--images", str(args.images), "--bind", url, "--trigger-delay", "1.0"]
    if args.rate:
        cmd += ["--rate", str(args.rate)]
    print(f"simulating {args.images} images ({args.preset}) on {url}", flush=True)
    receiver = Receiver(zmq.Context.instance(), url, config.receiver)
    simulator: list[subprocess.Popen] = []

    def start_simulator(_pipe) -> None:  # once the workers are up: a detector does not wait
        simulator.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
        threading.Thread(target=watch, args=(simulator[0],), daemon=True).start()

    def watch(proc: subprocess.Popen) -> None:
        """A simulator that fails before its series ends would leave the receiver waiting."""
        if proc.wait() != 0:
            log.error("the simulator exited with status %s", proc.returncode)
            receiver.stop()

    try:
        summary = run_session(config, receiver.events, args.out, live=True, once=True, on_ready=start_simulator,
                              serve=args.serve, on_stop=receiver.stop)
    finally:
        receiver.close()
        for proc in simulator:
            if proc.poll() is None:
                proc.terminate()
            proc.wait(10)
    if simulator and simulator[0].returncode not in (0, -15):
        log.error("the simulator exited with status %s", simulator[0].returncode)
        return 1
    return 0 if summary["frames"]["received"] else 1
