"""Every benchmark reports the machine it ran on (`tools.bench.machine`)."""

from __future__ import annotations

import json
import os
import sys
import types

import tools.bench as bench
from tools.bench import machine

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 avx512f avx512bw

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: another CPU
flags\t\t: fpu sse2
"""


def test_the_first_processor_is_described():
    details = machine.describe(ZEN4)
    assert (details["cpu_model"], details["cpu_family"], details["cpu_model_number"]) == ("AMD EPYC", 25, 17)
    assert details["avx512"] is True
    assert details["cpus_usable"] == len(os.sched_getaffinity(0))
    assert details["llc_bytes"] > 0
    line = machine.summary(details)
    assert line.startswith("AMD EPYC (") and "family 25 model 17" in line and f"{details['cpus_usable']} CPUs" in line


def test_an_unreadable_cpuinfo_gives_unknowns_not_errors():
    details = machine.describe("")
    assert details["cpu_model"] == "" and details["cpu_family"] is None and details["avx512"] is None
    assert machine.summary(details).startswith("unknown CPU")
    no_avx512 = machine.describe(ZEN4.replace(" avx512f avx512bw", ""))
    assert no_avx512["avx512"] is False


def test_this_machine_has_a_code_generator_name():
    assert machine.describe()["codegen_cpu"]  # what numba compiles for, e.g. znver4


def test_bench_output_ends_with_the_machine(monkeypatch, capsys):
    fake = types.ModuleType("tools.bench.fake")
    fake.run = lambda args: {"frames_per_s": 12.5}
    monkeypatch.setitem(sys.modules, "tools.bench.fake", fake)
    monkeypatch.setitem(bench.BENCHMARKS, "fake", "a benchmark for this test")
    assert bench.main(["fake", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    figures = json.loads(lines[-1])
    assert list(figures)[0] == "frames_per_s"  # the contract's keys stay first
    assert figures["machine"] == machine.summary(figures["machine_details"])
    assert any(line.startswith("machine ") for line in lines[:-1])
