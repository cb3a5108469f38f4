"""Plain HTTP: the page at ``/`` and the schema files at ``/schemas/``."""

from __future__ import annotations

import json

import aiohttp_jinja2
from aiohttp import web

from bixweb import __version__, protocol
from bixweb.web.service import SERVICE, now_ms


@aiohttp_jinja2.template("index.html")
async def index(request: web.Request) -> dict[str, object]:
    service = request.app[SERVICE]
    market = service.market
    tickers = [state.ticker() for state in market.states.values() if state.has_price]
    return {
        "version": __version__,
        "tickers": tickers,
        "feed": service.feed_state(now_ms()),
        "host": request.host,
    }


async def schema_index(request: web.Request) -> web.Response:
    files = protocol.schemas().files
    index: dict[str, object] = {"protocol": 1, "server": {}, "client": {}, "common": "/schemas/common.json"}
    for name in files:
        direction, _, filename = name.partition("/")
        if direction in ("server", "client"):
            index[direction][filename.removesuffix(".json")] = f"/schemas/{name}"  # type: ignore[index]
    return web.json_response(index)


async def schema_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    schema = protocol.schemas().files.get(name)
    if schema is None:
        raise web.HTTPNotFound(text=json.dumps({"code": "not_found", "message": f"no schema {name}"}),
                               content_type="application/json")
    return web.Response(
        text=json.dumps(schema, indent=2), content_type="application/schema+json",
        headers={"Cache-Control": "public, max-age=300"},
    )
