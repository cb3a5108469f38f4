"""Real Chromium (Debian's ``chromium``) driven by Playwright's async API.

Locally a missing browser skips these tests with the reason; under
``CI=true`` it fails them, as every missing component does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

CHROMIUM = Path(os.environ.get("BIXWEB_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require(ok: bool, reason: str) -> None:
    """Skip locally, fail in CI."""
    if ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing component fails the test)")
    pytest.skip(reason)


class ConsoleLog:
    """Everything the page said on its console and every uncaught error."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str]] = []

    def console(self, message: Any) -> None:
        self.entries.append((message.type, message.text))

    def page_error(self, error: Any) -> None:
        self.entries.append(("pageerror", str(error)))

    @property
    def errors(self) -> list[str]:
        return [text for kind, text in self.entries if kind in ("error", "pageerror")]


async def launch() -> AsyncIterator[Any]:
    require(CHROMIUM.exists(), f"no Chromium at {CHROMIUM}: apt-get install chromium (make test does)")
    require((ROOT / "node_modules" / "htmx.org").is_dir(), "htmx is not installed: npm ci (make test does)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        require(False, "playwright is not installed: pip install -e '.[test]' (make test does)")
        return
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def screenshot_path(name: str) -> Path:
    folder = ARTIFACTS / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
