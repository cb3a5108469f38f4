"""Structured logs: one line per event, as ``key=value`` text or as a JSON object.

Events are logged with :func:`event`, which keeps the fields apart from the
text so the JSON format can emit them as keys. Client messages are never
logged: only their size, type of refusal, and who sent them.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import orjson

LOG_FORMAT_TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log ``name`` with ``fields``: ``connected kind=bot peer=127.0.0.1 …``."""
    if not logger.isEnabledFor(level):
        return
    text = " ".join([name, *(f"{key}={_text(value)}" for key, value in fields.items())])
    logger.log(level, "%s", text, extra={"event": name, "fields": fields})


def _text(value: Any) -> str:
    """A value as one token: quoted and escaped (as JSON) when it holds spaces, quotes or control
    characters, so a client's text can never start a line of its own."""
    if value is None or value == "":
        return "-"
    text = str(value)
    if any(c in text for c in ' "\\') or not text.isprintable():
        return json.dumps(text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and its fields (or the message)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        name = getattr(record, "event", None)
        if name is not None:
            line["event"] = name
            line.update(getattr(record, "fields", {}))
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, fmt: str = "text") -> None:
    """Root logging for the service: ``text`` or ``json`` lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(LOG_FORMAT_TEXT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
