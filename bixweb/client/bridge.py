"""The thread bridge: a client's requests from any thread or loop, and its background thread.

A client lives on one event loop: its own (``start_background()``) or the
program's. Its requests (``subscribe``, ``ping``, alerts, annotations) may be
made from anywhere, and each returns a :class:`Reply` at once, the request
already handed to the client's loop:

- ``await reply`` on the client's loop, or on any other loop (a thread's own
  ``asyncio.run``): the other loop keeps running while it waits;
- ``reply.result()`` from a thread that is not the client's: blocks that
  thread until the answer (or the timeout).

``reply.result()`` on the client's own loop, e.g. in a callback, would wait
for an answer that only the blocked loop can read: it is refused at once.
:meth:`Background.stop` there only asks the thread to end (it cannot join
itself). A client that is not running refuses every request at once with
:class:`ConnectionError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

OWN_LOOP = (
    "{what}: .result() was called on the client's own event loop (in a callback?), where it would wait "
    "for itself; use `await` there"
)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Reply(Generic[T]):
    """The answer to one request, already on its way: ``await`` it, or call :meth:`result`."""

    __slots__ = ("_future", "_loop", "_timeout", "_what")

    def __init__(
        self,
        future: concurrent.futures.Future[T],
        loop: asyncio.AbstractEventLoop | None,
        what: str,
        timeout: float,
    ) -> None:
        self._future = future
        self._loop = loop
        self._what = what
        self._timeout = timeout

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    async def _wait(self) -> T:
        # The client's loop may stop before it answers: never wait longer than the request can take.
        async with asyncio.timeout(self._timeout):
            return await asyncio.wrap_future(self._future)

    def result(self, timeout: float | None = None) -> T:
        """Wait for the answer in this thread (``timeout`` seconds; default: the request's timeout).

        Raises what the request raised (:class:`~bixweb.errors.ProtocolError`,
        :class:`ConnectionError`, :class:`TimeoutError`), or :class:`RuntimeError`
        at once on the client's own loop.
        """
        if self._loop is not None and running_loop() is self._loop and not self._future.done():
            raise RuntimeError(OWN_LOOP.format(what=self._what))
        try:
            return self._future.result(self._timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"{self._what}: no answer within {self._timeout if timeout is None else timeout} s"
            ) from None

    def done(self) -> bool:
        """Whether the answer (or the failure) is in."""
        return self._future.done()

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<Reply to {self._what} ({state}): `await` it, or call .result() from another thread>"


def _copy_outcome(target: concurrent.futures.Future[T], task: asyncio.Future[T]) -> None:
    if task.cancelled():
        target.cancel()
    elif (error := task.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(task.result())


def submit(
    loop: asyncio.AbstractEventLoop | None,
    make: Callable[[], Coroutine[Any, Any, T]],
    what: str,
    timeout: float,
) -> Reply[T]:
    """Run ``make()`` on ``loop`` (the client's), from whichever thread calls; return its :class:`Reply`."""
    future: concurrent.futures.Future[T]
    if loop is None or loop.is_closed() or not loop.is_running():
        future = concurrent.futures.Future()
        future.set_exception(ConnectionError(f"{what}: not connected (the client is not running)"))
    elif running_loop() is loop:
        future = concurrent.futures.Future()
        task = loop.create_task(make(), name=f"bixweb-{what}")
        task.add_done_callback(lambda done: _copy_outcome(future, done))
    else:
        coroutine = make()
        try:
            future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        except RuntimeError:  # the loop closed meanwhile
            coroutine.close()
            future = concurrent.futures.Future()
            future.set_exception(ConnectionError(f"{what}: not connected (the client has stopped)"))
    return Reply(future, loop, what, timeout)


class Background:
    """One daemon thread running a client's loop: :meth:`start` it, :meth:`stop` it from another thread."""

    def __init__(self, name: str = "bixweb-client") -> None:
        self.name = name
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def on_own_thread(self) -> bool:
        return self.thread is threading.current_thread()

    def start(self, main: Callable[[Callable[[], None], asyncio.Event], Awaitable[None]]) -> threading.Thread:
        """Run ``main(started, stop)`` in a new thread's ``asyncio.run``; return once it calls ``started()``.

        ``main`` returns when ``stop`` is set (by :meth:`stop`) or when it is done.
        """
        if self.running():
            raise RuntimeError("the client is already running in the background")
        started = threading.Event()

        async def run() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await main(started.set, self._stop)

        def thread_main() -> None:
            try:
                asyncio.run(run())
            finally:
                self._stop = None
                started.set()

        self.thread = threading.Thread(target=thread_main, name=self.name, daemon=True)
        self.thread.start()
        started.wait(timeout=5.0)
        return self.thread

    def stop(self, timeout: float) -> None:
        """Ask the loop to end and join the thread; on the thread itself (a callback), only ask."""
        thread, loop, stop = self.thread, self.loop, self._stop
        if thread is None:
            return
        if thread is threading.current_thread():
            # A callback: joining would wait for itself. Ask, and let the thread end after it returns.
            if stop is not None:
                stop.set()
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"the client thread did not stop within {timeout} s")
        self.thread = None
