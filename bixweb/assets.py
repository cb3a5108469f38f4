"""The server's own files: page templates, static files, the JSON Schemas and htmx.

They are package data of ``bixweb``, found through :mod:`importlib.resources`
and nowhere else. In a checkout (and an editable install) ``bixweb/templates``,
``bixweb/static`` and ``bixweb/schemas`` are symlinks to the top-level
directories, and ``bixweb/vendor`` is one to ``node_modules/htmx.org`` (made by
``npm ci``); a wheel holds copies of the files themselves (``make dist``).

:func:`check` proves at start-up that every file the server names is there,
so a broken install stops with one line saying what is missing and how to
mend it, instead of serving a page that freezes.
"""

from __future__ import annotations

import functools
import sys
import zipfile
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Final

from bixweb.errors import InstallError

TEMPLATES: Final = (
    "dashboard.html",
    "fragments/alert_form.html",
    "fragments/alert_history.html",
    "fragments/alert_rules.html",
    "fragments/alerts.html",
    "fragments/annotations.html",
    "fragments/book.html",
    "fragments/chart.html",
    "fragments/controls.html",
    "fragments/notice.html",
    "fragments/status.html",
    "fragments/ticker_card.html",
    "fragments/tickers.html",
    "fragments/trades.html",
)
"""Every template the server renders or includes, under ``bixweb/templates``."""

SERVER_MESSAGES: Final = (
    "welcome",
    "initial_data",
    "market_update",
    "trade",
    "book",
    "candle",
    "alert",
    "alert_rules",
    "annotations",
    "status",
    "pong",
    "ack",
    "error",
    "batch",
)
CLIENT_MESSAGES: Final = (
    "subscribe",
    "unsubscribe",
    "ping",
    "alert_create",
    "alert_delete",
    "alert_list",
    "annotation_add",
    "annotation_remove",
    "annotation_list",
)
SCHEMAS: Final = (
    "common.json",
    "ui/action.json",
    *(f"server/{kind}.json" for kind in SERVER_MESSAGES),
    *(f"client/{kind}.json" for kind in CLIENT_MESSAGES),
)
"""Every schema the protocol needs, under ``bixweb/schemas``: one per message type and direction."""

STATIC: Final = ("bixweb.css", "favicon.svg")
"""Every file the page loads from ``/static/``, under ``bixweb/static``."""

VENDOR_FILES: Final = {
    "htmx.min.js": "dist/htmx.min.js",
    "ext/hx-ws.min.js": "dist/ext/hx-ws.min.js",
}
"""The only scripts the page loads: name under ``/vendor/`` → file under ``bixweb/vendor`` (npm's htmx.org)."""


@functools.cache
def package_dir() -> Path:
    """The directory of the installed ``bixweb`` package.

    aiohttp's static route and Jinja's loader read directories, so bixweb
    runs only from files on disk (a wheel installed by pip), not from a zip.
    """
    root = files("bixweb")
    if not isinstance(root, Path):
        raise InstallError(f"bixweb is installed as {root!r}, not as files on disk: install the wheel with pip")
    return root


def templates_dir() -> Path:
    return package_dir() / "templates"


def static_dir() -> Path:
    return package_dir() / "static"


def schema_dir() -> Path:
    return package_dir() / "schemas"


def vendor_dir() -> Path:
    return package_dir() / "vendor"


def vendor_file(name: str) -> Path | None:
    """The file behind ``/vendor/<name>``, or None for a name the page never loads."""
    relative = VENDOR_FILES.get(name)
    return vendor_dir() / relative if relative is not None else None


RESTORE: Final = "restore them with `git checkout -- templates static schemas bixweb`"


def missing(kind: str, directory: Path, names: Iterable[str], *, in_checkout: str = RESTORE) -> str | None:
    """``<kind> missing (<first path> and N more): <how to mend it>``, or None when every one of
    ``names`` is a file under ``directory``.

    ``directory`` as a symlink means a checkout (``in_checkout`` says what to
    do there); as a plain directory, an installed wheel.
    """
    # an empty file is as broken as none: an htmx of 0 bytes freezes the page just the same
    absent = [path for path in (directory / name for name in names) if not path.is_file() or path.stat().st_size == 0]
    if not absent:
        return None
    more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
    if directory.is_symlink():
        mend = f"in a checkout {in_checkout}"
    else:
        mend = "reinstall bixweb (a wheel built without them is broken: rebuild it with `make dist`)"
    return f"{kind} missing ({absent[0]}{more}): {mend}"


def problems() -> list[str]:
    """What is missing, one phrase with its fix per kind of file; empty when the install is whole."""
    found = [
        missing("page templates", templates_dir(), TEMPLATES),
        missing("static files", static_dir(), STATIC),
        missing("JSON Schemas", schema_dir(), SCHEMAS),
        missing("htmx assets", vendor_dir(), VENDOR_FILES.values(), in_checkout="run `npm ci` (make run does)"),
    ]
    return [problem for problem in found if problem is not None]


def check() -> None:
    """Raise :class:`InstallError` (one line) unless every template, static file, schema and htmx
    file the server names is installed."""
    found = problems()
    if found:
        raise InstallError("broken install: " + "; ".join(found))


def packaged_files() -> list[str]:
    """Every file a wheel must carry besides the code, as paths under ``bixweb/``."""
    return [
        "py.typed",
        *(f"templates/{name}" for name in TEMPLATES),
        *(f"static/{name}" for name in STATIC),
        *(f"schemas/{name}" for name in SCHEMAS),
        *(f"vendor/{name}" for name in VENDOR_FILES.values()),
        "vendor/LICENSE",  # htmx's own licence, which its files carry with them (LICENSE says so)
    ]


def check_wheel(wheel: Path) -> list[str]:
    """The files of :func:`packaged_files` that ``wheel`` lacks (``make dist`` refuses such a wheel)."""
    with zipfile.ZipFile(wheel) as archive:
        carried = set(archive.namelist())
    return [name for name in packaged_files() if f"bixweb/{name}" not in carried]


def main(argv: Sequence[str]) -> int:
    """``python -m bixweb.assets WHEEL…``: exit 1 naming what a wheel lacks (``make dist`` runs it)."""
    failed = 0
    for wheel in map(Path, argv):
        absent = check_wheel(wheel)
        if absent:
            failed = 1
            shown = ", ".join(f"bixweb/{name}" for name in absent[:4]) + (" …" if len(absent) > 4 else "")
            print(
                f"{wheel} is incomplete, it lacks {len(absent)} files ({shown}); htmx's come from node_modules "
                "(`npm ci`, which make dist runs first), the rest from templates/, static/, schemas/",
                file=sys.stderr,
            )
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
