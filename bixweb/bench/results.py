"""The workers' reports and the parent's readings → one JSON-ready result.

Every figure is computed here from values; nothing is read or awaited.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bixweb import __version__
from bixweb.bench.procstat import busy_pct, machine_facts
from bixweb.bench.stats import Histogram, WireHistogram

if TYPE_CHECKING:
    from bixweb.bench.runner import Mark, Meter, Setup
    from bixweb.bench.worker import ConnectReport, WindowReport

BOTTLENECK_PCT = 90.0
"""Load CPU above this share of its cores (or of one core, for one worker): the load may be the limit."""
OFFER_SHARE = 0.95
"""Delivered below this share of the offered ticker messages: the server did not keep up."""
SATURATED_PCT = 95.0
FORMAT = 1


def assemble(setup: Setup, connects: list[ConnectReport], windows: list[WindowReport], meter: Meter) -> dict[str, Any]:
    opened = sum(r["bots"] + r["stalled"] + r["dashboards"] for r in connects)
    out: dict[str, Any] = {
        "format": FORMAT,
        "bixweb": __version__,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(len(setup.available)),
        "config": config_section(setup),
        "connect": connect_section(connects, meter),
        "throughput": throughput_section(windows, offered_per_s(setup)),
        "latency_ms": merged(w["latency"] for w in windows).summary(),
        "fairness": fairness_section(windows),
        "server": server_section(setup.server_pid, meter, opened),
        "load": load_section(setup, windows, meter),
        "cores_busy_pct": busy_pct(meter.marks["open"].cores, meter.marks["close"].cores),
        "notes": [setup.cores.note, *setup.notes],
    }
    if setup.options.ui_clients:
        out["dashboard"] = dashboard_section(windows)
    if setup.options.stalled:
        out["stalled"] = {"clients": setup.options.stalled, "opened": sum(r["stalled"] for r in connects)}
    out["warnings"] = warnings(out)
    return out


def merged(wires: Iterable[WireHistogram]) -> Histogram:
    hist = Histogram()
    for wire in wires:
        hist.merge_wire(wire)
    return hist


def config_section(setup: Setup) -> dict[str, Any]:
    o = setup.options
    return {
        "clients": o.clients,
        "ui_clients": o.ui_clients,
        "stalled": o.stalled,
        "symbols": o.symbols,
        "channels": list(o.channels),
        "rate": o.rate,
        "duration_s": o.duration,
        "warmup_s": o.warmup,
        "workers": len(setup.plans),
        "connect_concurrency": o.connect_concurrency,
        "url": o.url,
        "target": f"ws://{setup.target.authority}{setup.target.bot_path}",
        "server_command": setup.server_command,
        "server_pid": setup.server_pid,
        "server_cores": sorted(setup.cores.server),
        "load_cores": sorted(setup.cores.load),
        "source_addresses": list(setup.plans[0].sources) if setup.plans else [],
    }


def _pct(cpu_before: Mark, cpu_after: Mark) -> float | None:
    if cpu_before.server is None or cpu_after.server is None or cpu_after.at <= cpu_before.at:
        return None
    return round(100.0 * (cpu_after.server.cpu_s - cpu_before.server.cpu_s) / (cpu_after.at - cpu_before.at), 1)


def connect_section(connects: list[ConnectReport], meter: Meter) -> dict[str, Any]:
    opened = sum(r["bots"] + r["stalled"] + r["dashboards"] for r in connects)
    seconds = max(r["opened_at"] for r in connects) - min(r["started_at"] for r in connects)
    return {
        "opened": opened,
        "failed": sum(r["failed"] for r in connects),
        "seconds": round(seconds, 3),
        "per_s": round(opened / seconds, 1) if seconds > 0 else None,
        "handshake_ms": merged(r["handshake"] for r in connects).summary(),
        "server_cpu_pct": _pct(meter.marks["connect"], meter.marks["connected"]),
        "errors": sorted({r["last_error"] for r in connects if r["last_error"]}),
    }


def per_s(windows: list[WindowReport], count: Callable[[WindowReport], int]) -> float:
    """A count per second, summed over the workers' windows."""
    return round(sum(count(w) / w["window_s"] for w in windows if w["window_s"] > 0), 1)


def offered_per_s(setup: Setup) -> float | None:
    """Ticker messages the market offers the bots per second, when bench set the tick rate and that is all."""
    o = setup.options
    if o.url is not None or o.channels != ("ticker",):
        return None
    return o.clients * o.symbols * o.rate


def throughput_section(windows: list[WindowReport], offered: float | None) -> dict[str, Any]:
    return {
        "window_s": round(max(w["window_s"] for w in windows), 3),
        "messages": sum(w["msgs"] for w in windows),
        "messages_per_s": per_s(windows, lambda w: w["msgs"]),
        "offered_per_s": offered,
        "frames_per_s": per_s(windows, lambda w: w["frames"]),
        "bytes_per_s": per_s(windows, lambda w: w["bytes"]),
        "messages_per_frame": round(sum(w["msgs"] for w in windows) / max(1, sum(w["frames"] for w in windows)), 2),
        "pings": sum(w["pings"] for w in windows),
    }


def fairness_section(windows: list[WindowReport]) -> dict[str, Any]:
    counts = [c for w in windows for c in w["per_client"]]
    return {
        "clients": len(counts),
        "min": min(counts, default=0),
        "max": max(counts, default=0),
        "mean": round(sum(counts) / len(counts), 1) if counts else 0,
        "without_messages": sum(1 for c in counts if c == 0),
        "closed_during_window": sum(w["closed"] for w in windows),
        "open_at_end": sum(w["open_at_end"] for w in windows),
    }


def fanout_spread(stamps: list[dict[bytes, list[float]]]) -> Histogram:
    """Per status broadcast, each socket's arrival minus the first arrival on any socket (ms)."""
    arrivals: dict[bytes, list[float]] = {}
    for per_worker in stamps:
        for stamp, times in per_worker.items():
            arrivals.setdefault(stamp, []).extend(times)
    hist = Histogram()
    for times in arrivals.values():
        first = min(times)
        hist.extend(t - first for t in times)
    return hist


def dashboard_section(windows: list[WindowReport]) -> dict[str, Any]:
    rendered = merged(w["ui_latency"] for w in windows)
    spread = fanout_spread([w["ui_stamps"] for w in windows])
    broadcasts = len({s for w in windows for s in w["ui_stamps"]})
    return {
        "frames_per_s": per_s(windows, lambda w: w["ui_frames"]),
        "bytes_per_s": per_s(windows, lambda w: w["ui_bytes"]),
        "status_broadcasts": broadcasts,
        "latency_ms": rendered.summary() if rendered.total else None,
        "latency_method": "status <time datetime> (ms) to receipt"
        if rendered.total
        else "unavailable: the status <time datetime> has whole seconds only",
        "fanout_spread_ms": spread.summary(),
    }


def server_section(pid: int | None, meter: Meter, opened: int) -> dict[str, Any]:
    marks = meter.marks
    samples = {name: marks[name].server for name in ("start", "connected", "open", "close") if name in marks}
    rss = {name: sample.rss_kb if sample is not None else None for name, sample in samples.items()}
    start, settled = rss.get("start"), rss.get("open")
    per_conn = round((settled - start) / opened, 2) if start is not None and settled is not None and opened else None
    last = marks["close"].server
    return {
        "pid": pid,
        "cpu_pct": _pct(marks["open"], marks["close"]),
        "rss_kb": {**rss, "peak": meter.peak_rss_kb or None, "hwm": last.hwm_kb if last else None},
        "rss_per_connection_kb": per_conn,
    }


def load_section(setup: Setup, windows: list[WindowReport], meter: Meter) -> dict[str, Any]:
    window = max((w["window_s"] for w in windows), default=0.0)
    own = meter.marks["close"].own_cpu_s - meter.marks["open"].own_cpu_s
    per_worker = [round(100.0 * w["cpu_s"] / w["window_s"], 1) if w["window_s"] > 0 else 0.0 for w in windows]
    total = sum(w["cpu_s"] for w in windows) + own
    cores = len(setup.cores.load) or None
    pct = round(100.0 * total / window, 1) if window > 0 else math.nan
    return {
        "workers": len(windows),
        "cores": sorted(setup.cores.load),
        "cpu_pct": pct,
        "cpu_pct_of_cores": round(pct / cores, 1) if cores else None,
        "worker_cpu_pct": per_worker,
        "errors": sum(w["errors"] for w in windows),
    }


def warnings(result: dict[str, Any]) -> list[str]:
    out = []
    load = result["load"]
    share = load["cpu_pct_of_cores"]
    if (share is not None and share > BOTTLENECK_PCT) or any(p > BOTTLENECK_PCT for p in load["worker_cpu_pct"]):
        out.append(
            f"the load generator is near its limit (CPU {load['cpu_pct']} %, workers "
            f"{load['worker_cpu_pct']}): it, not the server, may be the bottleneck; add --workers or cores"
        )
    if result["connect"]["failed"]:
        out.append(f"{result['connect']['failed']} connections failed: {'; '.join(result['connect']['errors'][:3])}")
    if result["fairness"]["closed_during_window"]:
        out.append(f"{result['fairness']['closed_during_window']} connections closed during the window")
    latency = result["latency_ms"]
    if latency["samples"] and latency["negative"] > latency["samples"] / 100:
        out.append(f"{latency['negative']} latency samples below 0: clocks disagree?")
    delivered, offered = result["throughput"]["messages_per_s"], result["throughput"]["offered_per_s"]
    if offered and delivered < OFFER_SHARE * offered:
        out.append(
            f"delivered {delivered:.0f} messages/s of {offered:.0f} offered (clients x symbols x rate): "
            "ticks were late or messages lost"
        )
    server_cpu = result["server"]["cpu_pct"]
    if server_cpu is not None and server_cpu >= SATURATED_PCT:
        out.append(f"the server used {server_cpu} % of a core: it is saturated")
    if result["server"]["pid"] is None:
        out.append("server CPU and memory unknown: give --server-pid with --url")
    return out
