"""What the machine says: ``/proc`` readings, the fd limit, and which cores to use.

The parsers take text and return values, so they are tested without
``/proc``; the readers around them return None when a process is gone.
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One look at a process: CPU seconds used so far, resident and peak memory (KiB)."""

    cpu_s: float
    rss_kb: int
    hwm_kb: int


def parse_stat_cpu(text: str) -> float:
    """utime + stime in seconds from the text of ``/proc/<pid>/stat``."""
    fields = text[text.rindex(")") + 2 :].split()
    # after "pid (comm) ", the state is field 3 of the man page; utime, stime are 14, 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def parse_status_kb(text: str, key: str) -> int:
    """A ``kB`` field (``VmRSS``, ``VmHWM``...) of ``/proc/<pid>/status``; -1 when missing."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    return -1


def read_proc(pid: int) -> ProcSample | None:
    """CPU and memory of ``pid``; None if it has gone or cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return ProcSample(parse_stat_cpu(stat), parse_status_kb(status, "VmRSS"), parse_status_kb(status, "VmHWM"))


def parse_core_times(text: str) -> dict[int, tuple[int, int]]:
    """Per core (busy, total) clock ticks from the text of ``/proc/stat``.

    Busy includes irq and softirq time, where loopback network work lands
    without being charged to any process.
    """
    cores: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu" or len(values) < 8:
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
        busy = user + nice + system + irq + softirq + steal
        cores[int(name[3:])] = (busy, busy + idle + iowait)
    return cores


def core_times() -> dict[int, tuple[int, int]]:
    try:
        return parse_core_times(Path("/proc/stat").read_text())
    except OSError:
        return {}


def busy_pct(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> dict[int, float]:
    """Busy % of each core between two :func:`core_times` readings."""
    out = {}
    for core, (busy1, total1) in after.items():
        busy0, total0 = before.get(core, (busy1, total1))
        span = total1 - total0
        out[core] = round(100.0 * (busy1 - busy0) / span, 1) if span > 0 else 0.0
    return out


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit to ``wanted`` (or as far as allowed); return the limit.

    Children inherit it, so raising it before starting the server raises the server's too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


@dataclass(frozen=True, slots=True)
class CorePlan:
    """Where the server and the load run; empty sets mean "leave it to the kernel"."""

    server: frozenset[int]
    load: frozenset[int]
    note: str


def plan_cores(available: set[int], *, server_cores: set[int] | None = None, pin_server: bool = True) -> CorePlan:
    """Server on the lowest core, load on the rest, when there are at least two.

    ``server_cores``: where a server we did not start runs (its affinity);
    the load then takes the other cores and the server is left alone.
    """
    if len(available) < 2:
        return CorePlan(frozenset(), frozenset(), "only one core: server and load share it (figures are pessimistic)")
    if server_cores is not None:
        rest = available - server_cores
        if not rest:
            return CorePlan(frozenset(), frozenset(), "the server may run on every core: load not pinned")
        return CorePlan(frozenset(), frozenset(rest), f"load on cores {_cores(rest)}, away from the server")
    if not pin_server:
        return CorePlan(frozenset(), frozenset(), "server unknown: nothing pinned")
    server = {min(available)}
    load = available - server
    return CorePlan(frozenset(server), frozenset(load), f"server on core {_cores(server)}, load on {_cores(load)}")


def _cores(cores: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cores))


def machine_facts(nproc: int) -> dict[str, object]:
    """CPU model, Python and kernel (and ``nproc`` as given): what a figure was measured on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "nproc": nproc,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
    }
