"""How a broker's link is reported: a WARNING when it is lost or cannot be made, repeated at a
bounded rate while the trouble lasts, and one INFO line when it is back.

Values in, values out: :class:`LinkLog` is told each attempt's outcome with
the time and answers what to log; the broker does the logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

LINK_WARNING_INTERVAL = 30.0
"""Seconds between the WARNING lines of one outage (the first comes at once)."""


def redacted(url: str) -> str:
    """``url`` without its user, password and query values (``redis://***@host:6379/0?password=***``;
    redis-py takes a password in either place): fit for logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc and not parts.query:
        return url
    netloc = "***@" + parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    query = "&".join(f"{key}=***" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


@dataclass(frozen=True, slots=True)
class Outage:
    """What to say about a link that is down: since when, how many attempts failed, the last error."""

    seconds: float
    failures: int
    error: str


class LinkLog:
    """The outcomes of link attempts → the lines worth logging."""

    def __init__(self, interval: float = LINK_WARNING_INTERVAL) -> None:
        self.interval = interval
        self.down_since: float | None = None
        """When the current outage began (None: linked, or never tried)."""
        self.failures = 0
        self.error = ""
        """The last attempt's error, as text (empty while linked)."""
        self._next_warning = float("-inf")
        self._up_since: float | None = None

    def failed(self, now: float, error: str) -> Outage | None:
        """An attempt failed or the link was lost: the outage to warn of now, or None within the interval."""
        if self.down_since is None:
            self.down_since = now
            if self._up_since is None or now - self._up_since >= self.interval:
                self._next_warning = float("-inf")  # after a while up, a new outage is news at once
            # else a flapping link: its last WARNING still counts, or each cycle would warn
        self.failures += 1
        self.error = error
        if now < self._next_warning:
            return None
        self._next_warning = now + self.interval
        return Outage(now - self.down_since, self.failures, error)

    def linked(self, now: float) -> Outage | None:
        """The link is up: the outage it ends (None if there was none)."""
        ended = None
        if self.down_since is not None:
            ended = Outage(now - self.down_since, self.failures, self.error)
        if self.down_since is not None or self._up_since is None:
            self._up_since = now
        self.down_since, self.failures, self.error = None, 0, ""
        return ended
