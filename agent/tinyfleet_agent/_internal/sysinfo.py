"""Cheap, best-effort readings of the device: memory, CPU, heat, energy.

Every reader returns None when the kernel does not expose the value (VMs,
containers, boards without sensors, RAPL readable only by root) — telemetry
simply omits what a device cannot measure.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from .runtime import available_runtimes

__all__ = [
    "cpu_frequency_mhz",
    "cpu_seconds",
    "cpu_temperature_c",
    "device_facts",
    "disk_usage",
    "peak_rss_bytes",
    "rapl_energy_uj",
    "rss_bytes",
]

_THERMAL = Path("/sys/class/thermal")
_CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")
_RAPL = Path("/sys/class/powercap/intel-rapl:0")
# Thermal zone types that are the CPU package, by platform (x86, Pi, Rockchip...).
_CPU_ZONES = ("x86_pkg_temp", "cpu-thermal", "cpu_thermal", "soc-thermal", "cpu0-thermal")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """Resident memory of this process (VmRSS)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process (VmHWM)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def cpu_seconds() -> float:
    """User + system CPU time of this process."""
    times = os.times()
    return times.user + times.system


def cpu_temperature_c() -> float | None:
    """The CPU's temperature: a CPU-typed thermal zone, else zone 0."""
    try:
        zones = sorted(_THERMAL.glob("thermal_zone*"))
    except OSError:
        return None
    chosen = None
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip()
        except OSError:
            continue
        if kind in _CPU_ZONES:
            chosen = zone
            break
    chosen = chosen or (zones[0] if zones else None)
    value = _read_int(chosen / "temp") if chosen else None
    return None if value is None else value / 1000.0


def cpu_frequency_mhz() -> float | None:
    """Current frequency of CPU 0 (cpufreq reports kHz)."""
    value = _read_int(_CPUFREQ / "scaling_cur_freq")
    return None if value is None else value / 1000.0


def rapl_energy_uj() -> tuple[int, int] | None:
    """(package energy counter, its wrap-around range) in microjoules."""
    energy = _read_int(_RAPL / "energy_uj")
    span = _read_int(_RAPL / "max_energy_range_uj")
    if energy is None or span is None or span <= 0:
        return None
    return energy, span


def disk_usage(path: Path) -> dict[str, int | None]:
    """Free and total bytes of the file system holding `path` (None when unreadable)."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return {"disk_free_bytes": None, "disk_total_bytes": None}
    return {"disk_free_bytes": usage.free, "disk_total_bytes": usage.total}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_facts() -> dict[str, Any]:
    """What the server needs to know to pick bundles this device can run."""
    return {
        "arch": platform.machine().lower(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count() or 1,
        "mem_total_bytes": _mem_total_bytes(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "runtimes": available_runtimes(),
    }
