"""Acceptance of the package: the wheel, installed alone in a fresh venv outside the checkout, serves
everything (pages, htmx, schemas, a live dashboard), and a broken copy of it refuses to start in one line.

The wheel is built as ``make dist`` builds it (the sdist, then the wheel from the sdist) once per
module; ``-m install`` selects these tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from bixweb import assets
from tests.browser import require
from tests.support import ROOT, ServerProcess

pytestmark = [pytest.mark.install, pytest.mark.timeout(300)]

SCHEMA_ID_PREFIX = "https://bixweb.example/schemas/"


def venv_env(venv: Path) -> dict[str, str]:
    """The environment without anything that would lead Python (or bixweb) back to the checkout."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("BIXWEB_", "PYTHON", "VIRTUAL_ENV"))}
    return {**kept, "PATH": f"{venv / 'bin'}{os.pathsep}{kept.get('PATH', '')}"}


def venv_python(venv: Path, code: str) -> str:
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=venv.parent,
        env=venv_env(venv),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@dataclass(frozen=True)
class Installed:
    """A fresh venv outside the checkout with only the wheel (and its dependencies) in it."""

    home: Path
    """A temporary directory outside the checkout: the venv, the working directory, the data."""
    venv: Path
    wheel: Path
    package: Path
    """``bixweb/`` inside the venv's site-packages."""

    @property
    def command(self) -> list[str]:
        return [str(self.venv / "bin" / "bixweb")]

    def env(self) -> dict[str, str]:
        return venv_env(self.venv)

    def python(self, code: str) -> str:
        return venv_python(self.venv, code)


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, **kwargs)
    assert result.returncode == 0, f"{command[:3]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    require((ROOT / "node_modules" / "htmx.org").is_dir(), "htmx is not installed: npm ci (make test does)")
    home = tmp_path_factory.mktemp("bixweb-install")
    assert not home.resolve().is_relative_to(ROOT.resolve())
    dist = home / "dist"
    started = time.monotonic()
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=ROOT)
    (wheel,) = dist.glob("bixweb-*.whl")
    built = time.monotonic()
    venv.create(home / "venv", with_pip=True)
    pip = [str(home / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    run([*pip, "-c", str(ROOT / "constraints.txt"), str(wheel)], cwd=home)
    package = Path(venv_python(home / "venv", "import bixweb.assets as a; print(a.package_dir())"))
    print(f"wheel built in {built - started:.1f} s, venv and install in {time.monotonic() - built:.1f} s")
    yield Installed(home, home / "venv", wheel, package)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def server(installed: Installed) -> Iterator[ServerProcess]:
    """``bixweb --port 0`` from the venv, started in a directory that is not the checkout."""
    (installed.home / "data").mkdir(exist_ok=True)
    process = ServerProcess(
        "--tick-rate", "20", "--data-dir", str(installed.home / "data"), command=installed.command, cwd=installed.home
    )
    process.env = installed.env()
    process.start(timeout=30)
    yield process
    assert process.stop() == 0, process.output.decode(errors="replace")[-2000:]


def test_the_venv_runs_the_installed_copy_not_the_checkout(installed: Installed) -> None:
    assert installed.package.is_relative_to(installed.venv)
    assert not any(path.is_symlink() for path in installed.package.rglob("*"))
    assert (installed.package / "py.typed").is_file()
    assert installed.python("import bixweb.client; print(bixweb.client.__file__)").startswith(str(installed.venv))
    # the redis extra was not asked for, so the memory:// server below runs without it
    assert installed.python("import importlib.util; print(importlib.util.find_spec('redis'))") == "None"
    assert assets.check_wheel(installed.wheel) == []


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as response:
        return response.status, await response.read()


async def test_pages_htmx_and_schemas_answer_200(installed: Installed, server: ServerProcess) -> None:
    base = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        status, page = await get(session, base + "/")
        assert status == 200 and page.startswith(b"<!doctype html>")
        for name, relative in assets.VENDOR_FILES.items():
            status, body = await get(session, f"{base}/vendor/{name}")
            assert status == 200
            assert body == (ROOT / "node_modules" / "htmx.org" / relative).read_bytes()  # npm's very file
        status, body = await get(session, base + "/schemas/")
        assert status == 200
        assert json.loads(body)["server"]["welcome"] == "/schemas/server/welcome.json"
        status, body = await get(session, base + "/static/bixweb.css")
        assert status == 200 and body == (ROOT / "static" / "bixweb.css").read_bytes()


def served_registry(base: str) -> Registry[Any]:
    """A registry that resolves every ``$ref`` by fetching the file the installed server serves."""

    def retrieve(uri: str) -> Resource[Any]:
        assert uri.startswith(SCHEMA_ID_PREFIX), uri
        with urllib.request.urlopen(f"{base}/schemas/{uri.removeprefix(SCHEMA_ID_PREFIX)}", timeout=10) as response:
            return Resource.from_contents(json.load(response))

    return Registry(retrieve=retrieve)


async def test_a_bots_welcome_and_initial_data_validate_against_the_served_schemas(server: ServerProcess) -> None:
    base = f"http://127.0.0.1:{server.port}"
    registry = served_registry(base)
    received: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?channels=none") as ws:
            received["welcome"] = await ws.receive_json(timeout=10)
            assert received["welcome"]["type"] == "welcome" and received["welcome"]["subscriptions"] == {}
            subscribe = {"type": "subscribe", "id": 1, "symbols": ["BTCUSDT"], "channels": ["ticker", "trades", "book"]}
            await ws.send_json(subscribe)
            async with asyncio.timeout(10):
                while "initial_data" not in received:
                    frame = await ws.receive_json()
                    for message in frame["messages"] if frame["type"] == "batch" else [frame]:
                        received.setdefault(message["type"], message)
        index = json.loads((await get(session, base + "/schemas/"))[1])
    assert received["ack"]["id"] == 1
    for kind in ("welcome", "ack", "initial_data"):
        schema = registry.get_or_retrieve(SCHEMA_ID_PREFIX + index["server"][kind].removeprefix("/schemas/"))
        validator = Draft202012Validator(schema.value.contents, registry=registry)
        errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(received[kind])]
        assert errors == [], (kind, errors[:3])
    assert "BTCUSDT" in received["initial_data"]["tickers"] and received["initial_data"]["books"]["BTCUSDT"]["bids"]


async def test_chromium_shows_the_dashboard_updating_live(browser: Any, server: ServerProcess) -> None:
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"http://127.0.0.1:{server.port}/")
    await page.locator(".conn-up").wait_for(state="visible", timeout=10_000)
    price = page.locator("#ticker-BTCUSDT .price")
    first = await price.get_attribute("data-price")
    deadline = time.monotonic() + 5
    while await price.get_attribute("data-price") == first:
        assert time.monotonic() < deadline, f"the BTCUSDT card still shows {first} after 5 s"
        await asyncio.sleep(0.1)
    assert await page.locator(".conn-up").is_visible()
    assert errors == []


@pytest.fixture
def stopped(server: ServerProcess) -> None:
    """The module's server stopped for good (cleanly), so that breaking the install cannot touch it."""
    assert server.stop() == 0, server.output.decode(errors="replace")[-2000:]


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        ("vendor/dist/htmx.min.js", "htmx assets missing"),
        ("schemas/server/initial_data.json", "JSON Schemas missing"),
        ("templates", "page templates missing"),
    ],
)
@pytest.mark.usefixtures("stopped")
def test_a_broken_install_exits_2_with_one_line_and_no_traceback(
    installed: Installed, removed: str, named: str
) -> None:
    """Last in this module: it breaks the install for a moment, after the server's tests."""
    target = installed.package / removed
    aside = installed.home / "aside"
    shutil.move(target, aside)
    try:
        result = subprocess.run(
            [*installed.command, "--port", "0", "--data-dir", str(installed.home / "data")],
            cwd=installed.home,
            env=installed.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.move(aside, target)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bixweb: broken install: ") and named in lines[0]
    assert str(target) in lines[0] and "reinstall bixweb" in lines[0] and "make dist" in lines[0]
    assert "listening" not in result.stdout
