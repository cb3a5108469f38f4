"""Plain HTTP: the schema files at ``/schemas/`` and htmx at ``/vendor/``."""

from __future__ import annotations

import json

from aiohttp import web

from bixweb import assets, protocol


async def schema_index(request: web.Request) -> web.Response:
    files = protocol.schemas().files
    index: dict[str, object] = {"protocol": 1, "server": {}, "client": {}, "ui": {}, "common": "/schemas/common.json"}
    for name in files:
        direction, _, filename = name.partition("/")
        if direction in ("server", "client", "ui"):
            index[direction][filename.removesuffix(".json")] = f"/schemas/{name}"  # type: ignore[index]
    return web.json_response(index)


async def to_schema_index(request: web.Request) -> web.Response:
    """``/schemas`` is the index at ``/schemas/``: a permanent redirect (308 keeps the method)."""
    raise web.HTTPPermanentRedirect("/schemas/")


async def schema_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    schema = protocol.schemas().files.get(name)
    if schema is None:
        raise web.HTTPNotFound(
            text=json.dumps({"code": "not_found", "message": f"no schema {name}"}), content_type="application/json"
        )
    return web.Response(
        text=json.dumps(schema, indent=2),
        content_type="application/schema+json",
        headers={"Cache-Control": "public, max-age=300"},
    )


async def vendor_file(request: web.Request) -> web.FileResponse:
    """htmx and its WebSocket extension (:data:`bixweb.assets.VENDOR_FILES`); the start-up check saw them."""
    path = assets.vendor_file(request.match_info["name"])
    if path is None or not path.is_file():
        raise web.HTTPNotFound(text="not found")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})
