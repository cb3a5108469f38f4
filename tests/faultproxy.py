"""A TCP proxy that misbehaves on command, for fault-injection tests.

::

    async with FaultProxy(server.port) as proxy:
        ws = await session.ws_connect(f"http://127.0.0.1:{proxy.port}/ws")
        proxy.latency_ms = 50
        proxy.blackhole()
        ...

Every accepted connection gets its own connection to the target and, per
direction, a reader that takes chunks off one socket and a writer that puts
them on the other. The writer applies the proxy's *current* faults to each
chunk, so switching a fault on affects connections that are already open:

``latency_ms``
    each chunk goes out ``latency_ms`` after it was read. Chunks are
    pipelined: this is delay, not a throughput cap.
``bandwidth``
    each direction of each connection is paced to that many bytes per second.
:meth:`FaultProxy.blackhole`
    nothing is forwarded in either direction and nothing is closed, like a
    network partition. Bytes already read are held, not dropped, and go out
    after :meth:`FaultProxy.resume` (a healed partition).
:meth:`FaultProxy.reset`
    every open connection is aborted with a TCP RST on both sides; new
    connections are still accepted.
:meth:`FaultProxy.cut`
    a reset, and every new connection is reset as soon as it is accepted,
    until :meth:`FaultProxy.resume` (a link that is down for a while).

Buffering between the two sockets is bounded (``socket_buffer`` and a small
chunk queue), so a slow or blackholed link pushes back on the sender the way
a real network does instead of soaking up everything in the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from types import TracebackType

CHUNK_BYTES = 65_536
QUEUED_CHUNKS = 16
PACING_STEPS_PER_S = 20
"""With a bandwidth cap, chunks hold at most 1/20 s worth of bytes, so pacing is smooth."""


@dataclass(frozen=True, slots=True)
class _Chunk:
    data: bytes
    read_at: float


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port`` with injectable faults.

    ``socket_buffer`` sets ``SO_RCVBUF``/``SO_SNDBUF`` on both sides and the
    stream buffer limit, for tests that need back-pressure to reach the
    sender quickly. Use as an async context manager; leaving it aborts every
    connection still open.
    """

    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", socket_buffer: int | None = None) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.socket_buffer = socket_buffer
        self.latency_ms = 0.0
        """Added to every chunk in both directions; takes effect at once."""
        self.bandwidth: int | None = None
        """Bytes per second per direction per connection; None: no cap."""
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    @property
    def connections(self) -> int:
        """Connections open through the proxy now."""
        return len(self._links)

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def blackhole(self) -> None:
        """Stop forwarding in both directions; keep every socket open."""
        self._flowing.clear()

    def reset(self) -> None:
        """Abort every open connection with RST, on the client side and the target side."""
        for link in list(self._links):
            link.abort()

    def cut(self) -> None:
        """Reset every open connection and every new one until :meth:`resume`."""
        self._refusing = True
        self.reset()

    def resume(self) -> None:
        """Back to normal: no latency, no cap, forwarding on (held bytes go out now), connections taken."""
        self.latency_ms = 0.0
        self.bandwidth = None
        self._refusing = False
        self._flowing.set()

    async def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._size_buffers(listener)  # accepted sockets inherit it, window scaling included
        listener.bind(("127.0.0.1", 0))
        self.port = int(listener.getsockname()[1])
        self._server = await asyncio.start_server(self._accept, sock=listener, limit=self._stream_limit)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(link.done for link in links), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------

    @property
    def _stream_limit(self) -> int:
        return self.socket_buffer or CHUNK_BYTES

    def _size_buffers(self, sock: socket.socket) -> None:
        if self.socket_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.socket_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.socket_buffer)

    def _chunk_size(self) -> int:
        bandwidth = self.bandwidth
        if bandwidth is None:
            return CHUNK_BYTES
        return max(256, min(CHUNK_BYTES, bandwidth // PACING_STEPS_PER_S))

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            _abort(client_writer)
            return
        loop = asyncio.get_running_loop()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._size_buffers(upstream)
            upstream.setblocking(False)
            await loop.sock_connect(upstream, (self.target_host, self.target_port))
            target_reader, target_writer = await asyncio.open_connection(sock=upstream, limit=self._stream_limit)
        except OSError:
            upstream.close()
            _abort(client_writer)
            return
        link = _Link(self, (client_reader, client_writer), (target_reader, target_writer))
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)

    async def _pump_in(self, reader: asyncio.StreamReader, queue: asyncio.Queue[_Chunk | None]) -> None:
        loop = asyncio.get_running_loop()
        while data := await reader.read(self._chunk_size()):
            await queue.put(_Chunk(data, loop.time()))
        await queue.put(None)

    async def _pump_out(self, queue: asyncio.Queue[_Chunk | None], writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        free_at = 0.0  # when the capped link can take its next byte
        while (chunk := await queue.get()) is not None:
            data = chunk.data
            while data:
                await self._hold(chunk.read_at, free_at)
                # the chunk may have been read before the cap was set: send it in steps of the cap
                size = self._chunk_size()
                piece, data = data[:size], data[size:]
                writer.write(piece)
                await writer.drain()
                bandwidth, now = self.bandwidth, loop.time()
                free_at = max(free_at, now) + len(piece) / bandwidth if bandwidth else now
        if writer.can_write_eof():
            writer.write_eof()

    async def _hold(self, read_at: float, free_at: float) -> None:
        """Wait while blackholed, until the latency since ``read_at`` has passed and the capped link is free."""
        loop = asyncio.get_running_loop()
        while True:
            await self._flowing.wait()
            now = loop.time()
            wait = max(read_at + self.latency_ms / 1000 - now, free_at - now if self.bandwidth else 0.0)
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, 0.05))  # short naps: a fault switched meanwhile applies at once


class _Link:
    """One proxied connection: two sockets and the four tasks between them."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.writers = (client[1], target[1])
        upstream: asyncio.Queue[_Chunk | None] = asyncio.Queue(QUEUED_CHUNKS)
        downstream: asyncio.Queue[_Chunk | None] = asyncio.Queue(QUEUED_CHUNKS)
        self.tasks = [
            asyncio.create_task(proxy._pump_in(client[0], upstream)),
            asyncio.create_task(proxy._pump_out(upstream, target[1])),
            asyncio.create_task(proxy._pump_in(target[0], downstream)),
            asyncio.create_task(proxy._pump_out(downstream, client[1])),
        ]
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        try:
            results = await asyncio.gather(*self.tasks, return_exceptions=True)
            if any(isinstance(r, BaseException) for r in results):
                self.abort()  # one side failed: the other learns it the way TCP would tell it
            for writer in self.writers:
                writer.close()
        finally:
            if not self.done.done():
                self.done.set_result(None)

    def abort(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: linger on, timeout zero."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
