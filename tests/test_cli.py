"""Every CONTRACT.md command exists, answers --help, and exits 0 / 2 (bad arguments or input) /
1 (internal error) as the contract says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from streamer.cli import COMMANDS, main
from streamer.commands.common import cli_errors

CONTRACT_COMMANDS = ["demo", "run", "process", "replay", "record", "simulate", "worker", "scale", "findspots", "bench"]


def xtalstream(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "streamer.cli", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_every_contract_command_is_registered():
    assert set(CONTRACT_COMMANDS) <= set(COMMANDS)


@pytest.mark.parametrize("name", CONTRACT_COMMANDS)
def test_help_works(name):
    result = xtalstream(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and "--config" in result.stdout


def test_top_level_usage_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["run", "--out", "x"],  # --connect missing
    ["run", "--connect", "tcp://127.0.0.1:1", "--out", "x", "--workers", "0"],
    ["run", "--connect", "tcp://127.0.0.1:1", "--out", "x", "--http", "localhost:web"],
    ["worker", "--connect", "localhost:9999"],
    ["worker"],
    ["demo", "--images", "0"],
    ["process", "--out", "x"],  # no paths
    ["scale", "--out", "x"],  # no mtz
])
def test_bad_arguments_exit_2(args, capsys):
    assert main(args) == 2


def test_bad_config_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fanout:\n  workers: -3\n")
    assert main(["run", "--connect", "tcp://127.0.0.1:1", "--out", str(tmp_path), "--config", str(bad)]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_process_of_missing_files_exits_2(tmp_path):
    result = xtalstream("process", str(tmp_path / "nothing_master.h5"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "nothing_master.h5" in result.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_scale_says_it_arrives_later_and_writes_nothing(tmp_path):
    help_text = xtalstream("scale", "--help").stdout
    assert "arrives with the scaling stage" in " ".join(help_text.split())
    result = xtalstream("scale", str(tmp_path / "in.mtz"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "not available yet" in result.stderr
    assert not (tmp_path / "out").exists()


def test_internal_error_exits_1(capsys):
    @cli_errors
    def broken(argv=None):
        raise RuntimeError("a bug")

    assert broken([]) == 1


def test_an_address_in_use_or_a_bad_url_is_the_users_input_exit_2(tmp_path, capsys):
    """Ports in use (--http, --result-stream, --listen) and URLs that are no address exit 2 with
    what was wrong with which input, not 1 with a traceback as an internal error."""
    import zmq

    ctx = zmq.Context.instance()
    taken = ctx.socket(zmq.PUB)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        out = str(tmp_path / "out")
        assert main(["run", "--connect", "localhost:1", "--out", out, "--http", "off", "--result-stream", "off"]) == 2
        assert "cannot connect to the detector at 'localhost:1'" in capsys.readouterr().err
        # ZeroMQ takes these and waits for ever, saying nothing: refused before it is asked
        for url, said in (("tcp://127.0.0.1:99999", "a port from 1 to 65535"), ("tcp://127.0.0.1", "tcp://HOST:PORT"),
                          ("tcp://no.such.host.invalid:9999", "cannot resolve 'no.such.host.invalid'")):
            assert main(["run", "--connect", url, "--out", out, "--http", "off", "--result-stream", "off"]) == 2
            assert said in capsys.readouterr().err
        assert main(["run", "--connect", "tcp://127.0.0.1:1", "--out", out, "--http", "off",
                     "--result-stream", f"tcp://127.0.0.1:{port}"]) == 2
        assert f"cannot publish the result stream on tcp://127.0.0.1:{port}" in capsys.readouterr().err

        @cli_errors
        def listen(argv=None):  # what a --listen port in use raises from deep inside
            sock = ctx.socket(zmq.PULL)
            try:
                sock.bind(f"tcp://127.0.0.1:{port}")
            finally:
                sock.close(linger=0)
            return 0

        assert listen([]) == 2 and "Address already in use" in capsys.readouterr().err
    finally:
        taken.close(linger=0)
