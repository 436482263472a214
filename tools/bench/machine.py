"""The machine a benchmark ran on, printed with its figures.

Our figures are only comparable on the same machine: a frame that takes 5.5 ms on one
2-core cloud machine took 8.2 ms on another sold under the same name ("AMD EPYC", one Zen 5
and one Zen 4 at a lower clock), which a bare frames/s cannot tell apart. So every benchmark
reports the CPU's model, family and model numbers, the code generator's name for it (what
numba compiles for), the CPUs this process may use, the last-level cache and AVX-512.
"""

from __future__ import annotations

import os
from typing import Any

from tools.bench.memcopy import last_level_cache_bytes


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's "key: value" lines of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _codegen_cpu() -> str:
    """LLVM's name for the host CPU (e.g. znver4), which numba's kernels are compiled for."""
    try:
        from llvmlite import binding

        return str(binding.get_host_cpu_name())
    except Exception:  # noqa: BLE001 - a description only; llvmlite always ships with numba
        return ""


def describe(cpuinfo_text: str | None = None) -> dict[str, Any]:
    """The machine: cpu_model, cpu_family and cpu_model_number (x86 cpuid, as /proc/cpuinfo
    gives them; None elsewhere), codegen_cpu, cpus_usable (this process's affinity),
    cpus_online, llc_bytes, avx512 (None when the flags are unknown)."""
    fields = _cpuinfo_fields(_read_cpuinfo() if cpuinfo_text is None else cpuinfo_text)
    flags = fields.get("flags", "").split()

    def number(key: str) -> int | None:
        try:
            return int(fields[key])
        except (KeyError, ValueError):
            return None

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_model": fields.get("model name", ""),
        "cpu_family": number("cpu family"),
        "cpu_model_number": number("model"),
        "codegen_cpu": _codegen_cpu(),
        "cpus_usable": usable,
        "cpus_online": os.cpu_count() or 0,
        "llc_bytes": last_level_cache_bytes(),
        "avx512": ("avx512f" in flags) if flags else None,
    }


def summary(machine: dict[str, Any]) -> str:
    """One line for the printed table, e.g. "AMD EPYC (znver4, family 25 model 17), 2 CPUs, 32 MB last-level cache"."""
    ids = ", ".join(x for x in (machine["codegen_cpu"],
                                f"family {machine['cpu_family']} model {machine['cpu_model_number']}"
                                if machine["cpu_family"] is not None else "") if x)
    name = machine["cpu_model"] or "unknown CPU"
    return (f"{name}{f' ({ids})' if ids else ''}, {machine['cpus_usable']} CPUs, "
            f"{machine['llc_bytes'] >> 20} MB last-level cache")
