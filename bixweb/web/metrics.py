"""``GET /metrics`` (Prometheus text format) and the probes ``GET /livez``, ``/readyz`` and
``/healthz`` (JSON; ``/healthz`` is ``/readyz`` under its old name).

The numbers are read from the running service when scraped, so nothing on
the fan-out path pays for them: live connections report their own counters,
closed ones left theirs in :attr:`Service.counters`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bixweb import __version__
from bixweb.market import Market
from bixweb.web import gate
from bixweb.web.service import SERVICE, Guarded, Service, feed_state, now_ms

KINDS = ("bot", "ui")
FEED_STATES = ("live", "stale", "down")
LOOP_LAG_PERIOD = 0.25
"""Seconds between event-loop lag samples."""


class ServiceCollector(Collector):
    """Prometheus families computed from one :class:`Service` at scrape time."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        service = self.service
        counters = service.counters
        live = list(service.connections)
        now = now_ms()

        connections = GaugeMetricFamily("bixweb_connections", "Open WebSocket connections", labels=["kind"])
        for kind in KINDS:
            connections.add_metric([kind], sum(1 for c in live if c.kind == kind))
        yield connections

        opened = CounterMetricFamily("bixweb_connections_opened", "WebSocket connections accepted", labels=["kind"])
        for kind in KINDS:
            opened.add_metric([kind], counters[f"opened:{kind}"])
        yield opened

        closed = CounterMetricFamily(
            "bixweb_connections_closed", "WebSocket connections ended, by close code", labels=["kind", "code"]
        )
        for key, value in sorted(counters.items()):
            if key.startswith("closed:"):
                _, kind, code = key.split(":", 2)
                closed.add_metric([kind, code], value)
        yield closed

        for name, attribute, text in (
            ("bixweb_frames_sent", "frames_sent", "WebSocket frames written"),
            ("bixweb_messages_sent", "messages_sent", "Messages handed to connections, alone or in batches"),
            ("bixweb_sent_bytes", "bytes_sent", "Payload bytes written (before any compression)"),
        ):
            family = CounterMetricFamily(name, text, labels=["kind"])
            for kind in KINDS:
                total = counters[f"{attribute}:{kind}"] + sum(getattr(c, attribute) for c in live if c.kind == kind)
                family.add_metric([kind], total)
            yield family

        yield GaugeMetricFamily(
            "bixweb_tcp_connections",
            "Open TCP connections, plain HTTP and WebSocket, as --max-connections counts them",
            value=service.limits.open,
        )

        yield CounterMetricFamily(
            "bixweb_conflated",
            "State messages replaced by a newer one before a slow reader got them",
            value=counters["conflated"] + sum(c.outbox.conflated for c in live),
        )
        yield CounterMetricFamily(
            "bixweb_slow_consumer_closes",
            "Connections closed because their outbox overflowed",
            value=counters["slow_consumer_closes"],
        )

        yield from vital_families(service, now)
        yield GaugeMetricFamily(
            "bixweb_event_loop_lag_seconds", "How late the event loop woke at its last check", value=service.loop_lag
        )


def vital_families(vitals: Vitals, now: int) -> Iterator[Metric]:
    """The families a web process and the feed process both report: feed, broker, uptime."""
    state = vitals.feed_state(now)
    feed = GaugeMetricFamily("bixweb_feed_state", "1 for the feed's current state", labels=["state"])
    for name in FEED_STATES:
        feed.add_metric([name], 1.0 if name == state else 0.0)
    yield feed
    last = vitals.market.last_event_ms
    yield GaugeMetricFamily(
        "bixweb_feed_lag_seconds",
        "Seconds since the feed's last event",
        value=(now - last) / 1000 if last is not None else float("nan"),
    )
    yield GaugeMetricFamily(
        "bixweb_broker_up",
        "1 while linked to the broker (always 1 with memory://)",
        value=0.0 if vitals.broker_down else 1.0,
    )
    yield GaugeMetricFamily("bixweb_uptime_seconds", "Seconds since the process started", value=vitals.uptime_s)
    refused = CounterMetricFamily(
        "bixweb_refused",
        "Requests refused before their handler, and connections turned away, by reason",
        labels=["reason"],
    )
    for key, value in sorted(vitals.counters.items()):
        if key.startswith("refused:"):
            refused.add_metric([key.split(":", 1)[1]], value)
    yield refused


class VitalsCollector(Collector):
    """The feed process's families: :func:`vital_families`, and what it published."""

    def __init__(self, vitals: Vitals, published: Callable[[], int], queued: Callable[[], int]) -> None:
        self.vitals = vitals
        self.published = published
        self.queued = queued

    def collect(self) -> Iterator[Metric]:
        yield from vital_families(self.vitals, now_ms())
        yield CounterMetricFamily(
            "bixweb_publications", "Flush windows published in this epoch", value=self.published()
        )
        yield GaugeMetricFamily(
            "bixweb_publications_queued", "Publications waiting for the broker to take them", value=self.queued()
        )


def registry_for(collector: Service | Collector) -> CollectorRegistry:
    """A registry of this service (or of ``collector``) only, not the process-wide default registry."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ServiceCollector(collector) if isinstance(collector, Service) else collector)
    return registry


REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; to loopback clients or with a token (:func:`gate.metrics_access`)."""
    refused = gate.metrics_access(request, request.app[VITALS])
    if refused is not None:
        return refused
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class Vitals(Guarded, Protocol):
    """What the probes and ``/metrics`` read: the web service (:class:`Service`) and the feed
    process alike."""

    @property
    def market(self) -> Market: ...
    @property
    def feed_down(self) -> bool: ...
    @property
    def broker_down(self) -> bool: ...
    @property
    def shutting_down(self) -> bool: ...
    @property
    def uptime_s(self) -> float: ...
    @property
    def upstream(self) -> Callable[[], bool | None]: ...
    def feed_state(self, now: int) -> str: ...
    def broker_problem(self) -> str: ...


VITALS: web.AppKey[Vitals] = web.AppKey("vitals")
NO_STORE = {"Cache-Control": "no-store"}


def readiness(vitals: Vitals, now: int) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body of ``/readyz``: 503 with the reasons while shutting down, the feed
    is down (for a web process: also no feed process publishing to its Redis) or the broker is
    unreachable; 200 ``degraded`` with a feed that is only stale (it may be a quiet market:
    taking the process out of service would not help its clients)."""
    state = vitals.feed_state(now)
    last = vitals.market.last_event_ms
    lag = round((now - last) / 1000, 3) if last is not None else None
    reasons: list[dict[str, str]] = []
    if vitals.shutting_down:
        reasons.append({"code": "shutting_down", "message": "the process is shutting down"})
    problem = vitals.broker_problem()
    if vitals.broker_down:
        # probes are public (any Host, through the proxy): where the broker is and why it failed
        # go to the log, not to whoever asks
        reasons.append({"code": "broker_unreachable", "message": "the broker cannot be reached (the log says why)"})
    orphaned = bool(problem) and not vitals.broker_down  # linked, but no feed process keeps its mark
    own = feed_state(  # the feed's own state: a web process's feed is "down" when only its broker is
        failed=vitals.feed_down,
        last_event_ms=last,
        now=now,
        stale_after=vitals.settings.stale_after,
        upstream=vitals.upstream(),
    )
    if orphaned:
        reasons.append(
            {"code": "feed_down", "message": "no feed process publishes to the broker (the log says since when)"}
        )
    elif vitals.feed_down:
        reasons.append({"code": "feed_down", "message": "the feed stopped (the log says why)"})
    elif own == "down":
        silent = f"no feed event for {lag:g} s" if lag is not None else "no feed event yet"
        reasons.append({"code": "feed_down", "message": f"{silent}, and the feed's link to its source is down"})
    elif own == "stale":
        silent = f"no feed event for {lag:g} s" if lag is not None else "no feed event yet"
        reasons.append({"code": "feed_stale", "message": silent})
    ready = all(reason["code"] == "feed_stale" for reason in reasons)
    if vitals.shutting_down:
        status = "shutting_down"
    else:
        status = ("degraded" if reasons else "ok") if ready else "down"
    body = {
        "status": status,
        "reasons": reasons,
        "feed": state,
        "last_event_ms": last,
        "feed_lag_s": lag,
        "uptime_s": round(vitals.uptime_s, 3),
        "epoch": vitals.market.epoch,
        "version": __version__,
    }
    return (200 if ready else 503), body


async def livez(request: web.Request) -> web.Response:
    """200 while the process serves, 503 once it is shutting down; nothing upstream counts."""
    vitals = request.app[VITALS]
    status = "shutting_down" if vitals.shutting_down else "ok"
    return web.json_response(
        {"status": status, "uptime_s": round(vitals.uptime_s, 3), "version": __version__},
        status=503 if vitals.shutting_down else 200,
        headers=NO_STORE,
    )


async def readyz(request: web.Request) -> web.Response:
    """:func:`readiness`, with the open sockets of a web process; ``/healthz`` is the same."""
    status, body = readiness(request.app[VITALS], now_ms())
    service = request.app.get(SERVICE)
    if service is not None:
        body["connections"] = {kind: sum(1 for c in service.connections if c.kind == kind) for kind in KINDS}
    return web.json_response(body, status=status, headers=NO_STORE)


async def watch_loop_lag(service: Service) -> None:
    """Sample how late the event loop wakes: a blocked loop delays every client."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + LOOP_LAG_PERIOD
        await asyncio.sleep(LOOP_LAG_PERIOD)
        service.loop_lag = max(0.0, loop.time() - expected)
