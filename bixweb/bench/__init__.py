"""``python -m bixweb bench``: a load generator and meter for a bixweb server.

The parent process starts (or targets) a server, spreads N raw WebSocket
connections over worker processes, drives a warm-up and a measuring window,
and reads the server's CPU and memory from ``/proc``. Modules:

- ``wsframes``: sans-I/O WebSocket client framing and the upgrade handshake;
- ``scan``: cheap byte searches in bixweb frames (message count, ``ts``);
- ``stats``: latency histogram and percentiles;
- ``procstat``: ``/proc`` readings, file-descriptor limit, core plan;
- ``wsclient``: the ``asyncio.Protocol`` per connection (bot, dashboard);
- ``worker``: one load process: connect, count, report over a pipe;
- ``server``: the server child process;
- ``runner``: one run, from the parent's side;
- ``report``, ``plot``: the table, progress line, JSON and SVG;
- ``compression``: ``--compression``, what permessage-deflate saves on the wire and costs the server;
- ``cli``: options and ``main``.
"""

from __future__ import annotations

from bixweb.bench.cli import main

__all__ = ["main"]
