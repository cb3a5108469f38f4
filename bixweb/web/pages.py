"""Plain HTTP: the schema files at ``/schemas/`` and htmx at ``/vendor/``."""

from __future__ import annotations

import json

from aiohttp import web

from bixweb import protocol


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


VENDOR_FILES = {
    "htmx.min.js": "htmx.org/dist/htmx.min.js",
    "ext/hx-ws.min.js": "htmx.org/dist/ext/hx-ws.min.js",
}
"""The only scripts the dashboard loads: htmx and its WebSocket extension, from npm (``package.json``)."""
NODE_MODULES = protocol.ROOT / "node_modules"


async def vendor_file(request: web.Request) -> web.FileResponse:
    relative = VENDOR_FILES.get(request.match_info["name"])
    path = NODE_MODULES / relative if relative else None
    if path is None or not path.is_file():
        raise web.HTTPNotFound(text="not installed: run `npm ci` (make run does)" if relative else "not found")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})
