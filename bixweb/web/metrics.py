"""``GET /metrics`` (Prometheus text format) and ``GET /healthz`` (JSON).

The numbers are read from the running service when scraped, so nothing on
the fan-out path pays for them: live connections report their own counters,
closed ones left theirs in :attr:`Service.counters`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bixweb import __version__
from bixweb.web import gate
from bixweb.web.service import SERVICE, Service, now_ms

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

        refused = CounterMetricFamily(
            "bixweb_refused",
            "Requests refused before their handler, and connections turned away, by reason",
            labels=["reason"],
        )
        for key, value in sorted(counters.items()):
            if key.startswith("refused:"):
                refused.add_metric([key.split(":", 1)[1]], value)
        yield refused

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

        state = service.feed_state(now)
        feed = GaugeMetricFamily("bixweb_feed_state", "1 for the feed's current state", labels=["state"])
        for name in FEED_STATES:
            feed.add_metric([name], 1.0 if name == state else 0.0)
        yield feed
        last = service.market.last_event_ms
        yield GaugeMetricFamily(
            "bixweb_feed_lag_seconds",
            "Seconds since the feed's last event",
            value=(now - last) / 1000 if last is not None else float("nan"),
        )
        yield GaugeMetricFamily(
            "bixweb_event_loop_lag_seconds", "How late the event loop woke at its last check", value=service.loop_lag
        )
        yield GaugeMetricFamily(
            "bixweb_broker_up",
            "1 while linked to the broker (always 1 with memory://)",
            value=0.0 if service.broker_down else 1.0,
        )
        yield GaugeMetricFamily("bixweb_uptime_seconds", "Seconds since the service started", value=service.uptime_s)


def registry_for(service: Service) -> CollectorRegistry:
    """A registry of this service only (no process-wide default registry)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ServiceCollector(service))
    return registry


REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; to loopback clients or with a token (:func:`gate.metrics_access`)."""
    refused = gate.metrics_access(request, request.app[SERVICE])
    if refused is not None:
        return refused
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """Liveness and the feed's state; 503 when the feed is down or the server is shutting down."""
    service = request.app[SERVICE]
    now = now_ms()
    state = service.feed_state(now)
    status = "shutting_down" if service.shutting_down else ("ok" if state == "live" else "degraded")
    last = service.market.last_event_ms
    body = {
        "status": status,
        "feed": state,
        "last_event_ms": last,
        "feed_lag_s": round((now - last) / 1000, 3) if last is not None else None,
        "uptime_s": round(service.uptime_s, 3),
        "epoch": service.market.epoch,
        "version": __version__,
        "connections": {kind: sum(1 for c in service.connections if c.kind == kind) for kind in KINDS},
    }
    unhealthy = service.shutting_down or state == "down"
    return web.json_response(body, status=503 if unhealthy else 200, headers={"Cache-Control": "no-store"})


async def watch_loop_lag(service: Service) -> None:
    """Sample how late the event loop wakes: a blocked loop delays every client."""
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + LOOP_LAG_PERIOD
        await asyncio.sleep(LOOP_LAG_PERIOD)
        service.loop_lag = max(0.0, loop.time() - expected)
