"""When a worker process ends: on SIGTERM/SIGINT even before any collector answered, and, for
the local workers a run starts (`pipeline.start_worker`), when that run dies without stopping
them (SIGKILL). Real processes; nothing listens at the control URL, so a worker waits in its
join loop, which logs a retry every 2 s: the tests wait for that line, never on fixed sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

RETRY_LINE = "no answer from collector"
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="reads process states in /proc")


def wait_for(cond, timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: whoever inherited it may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def worker_cmd(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "streamer.cli", "worker", "--connect", url, *extra]


# ---------------------------------------------------------------- stopped before joining
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_that_never_reached_a_collector_stops_at_once_on_a_signal(tmp_path, signum):
    log = tmp_path / "worker.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(worker_cmd(f"ipc://{tmp_path}/nobody", "--name", "lonely"),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: RETRY_LINE in log.read_text(), what="the worker's retry line")
        assert proc.poll() is None  # a worker without --parent-pid waits for as long as it takes
        proc.send_signal(signum)
        assert proc.wait(5) == 0  # stopped as asked: not an error
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"signal {int(signum)}: stopping" in text
    assert "worker lonely stopped before a collector answered" in text


# ---------------------------------------------------------------- local workers of a run
PARENT = textwrap.dedent("""
    import sys, threading, time
    from streamer.pipeline import start_worker

    cmd = [sys.executable, "-m", "streamer.cli", "worker", "--connect", sys.argv[1]]
    procs = []
    if sys.argv[2] == "thread":  # started from a thread that ends long before this process
        starter = threading.Thread(target=lambda: procs.append(start_worker(cmd, {})))
        starter.start()
        starter.join()
    else:
        procs.append(start_worker(cmd, {}))
    print(procs[0].pid, flush=True)
    time.sleep(600)
""")


def run_parent(tmp_path: Path, how: str) -> tuple[subprocess.Popen, int, Path]:
    """A process that starts one local worker as a pipeline does; its pid and the worker's log."""
    log = tmp_path / "worker.log"
    with open(log, "w") as err:
        parent = subprocess.Popen([sys.executable, "-c", PARENT, f"ipc://{tmp_path}/nobody", how],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
    return parent, int(parent.stdout.readline()), log


@linux_only
@pytest.mark.parametrize("how", ["main", "thread"])
def test_local_workers_stop_when_the_run_is_killed(tmp_path, how):
    parent, worker, log = run_parent(tmp_path, how)
    try:
        wait_for(lambda: RETRY_LINE in log.read_text(), what="the worker's retry line")
        assert not gone(worker)  # the end of the thread that started it did not stop it
        parent.kill()
        parent.wait()
        wait_for(lambda: gone(worker), timeout_s=5.0, what=f"worker {worker} to exit")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if not gone(worker):
            os.kill(worker, signal.SIGKILL)
        parent.stdout.close()
    text = log.read_text()
    if how == "main":
        assert "signal 15: stopping" in text  # PR_SET_PDEATHSIG: the SIGTERM came at once
    assert "stopped before a collector answered" in text  # a clean stop, not a kill


@linux_only
def test_a_local_worker_whose_run_died_before_it_started_stops_at_once(tmp_path):
    """The race PR_SET_PDEATHSIG leaves open: the parent died before the child asked for it."""
    log = tmp_path / "worker.log"
    not_parent = 1 if os.getpid() != 1 else 2
    with open(log, "w") as err:
        proc = subprocess.Popen(worker_cmd(f"ipc://{tmp_path}/nobody", "--parent-pid", str(not_parent)),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert f"the process that started this worker ({not_parent}) is gone" in text
    assert RETRY_LINE not in text
