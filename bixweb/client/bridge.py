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
from typing import Any, TypeVar

T = TypeVar("T")

OWN_LOOP = (
    "{what}: .result() was called on the client's own event loop (in a callback?), where it would wait "
    "for itself; there, `await` it in a task of your own (asyncio.create_task), or send it without waiting"
)
IN_CALLBACK = (
    "{what}: awaited inside a callback, which the receive loop is waiting for: the answer could not be "
    "read until it returns. The request is sent; to use its answer, start a task "
    "(asyncio.create_task(handle(client.{what}(...)))) or read it in on_message"
)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, if any."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _fail(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    """Fail ``future`` unless another thread settled or cancelled it first."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if not future.done():
            future.set_exception(error)


def _stopped(what: str) -> ConnectionError:
    return ConnectionError(f"{what}: not connected (the client is not running)")


def _cancelled(what: str) -> ConnectionError:
    return ConnectionError(f"{what}: the request was cancelled (its waiter gave up, or the client stopped)")


class Reply(Coroutine[Any, Any, T]):
    """The answer to one request, already on its way: ``await`` it, or call :meth:`result`.

    It is a coroutine too, so ``asyncio.create_task(client.subscribe(...))``
    and ``asyncio.run(client.ping())`` (from another thread) work as they did
    when the requests were coroutine functions.
    """

    __slots__ = ("_future", "_loop", "_timeout", "_what", "_blocked", "_task", "_waiter")

    def __init__(
        self,
        future: concurrent.futures.Future[T],
        loop: asyncio.AbstractEventLoop | None,
        what: str,
        timeout: float,
        blocked: Callable[[], bool] | None = None,
        task: asyncio.Task[T] | None = None,
    ) -> None:
        self._future = future
        self._loop = loop
        self._what = what
        self._timeout = timeout
        self._blocked = blocked
        self._task = task
        self._waiter: Coroutine[Any, Any, T] | None = None

    async def _wait(self) -> T:
        if self._future.cancelled():
            raise _cancelled(self._what)
        if self._blocked is not None and not self._future.done() and self._blocked():
            raise RuntimeError(IN_CALLBACK.format(what=self._what))
        try:
            # The client's loop may stop before it answers: never wait longer than the request can take.
            async with asyncio.timeout(self._timeout):
                return await asyncio.wrap_future(self._future)  # given up on, it cancels the request too
        except asyncio.CancelledError:
            if self._task is not None:  # the waiter gave up on the client's loop: so does the request
                self._task.cancel()
            raise
        except concurrent.futures.CancelledError:
            raise _cancelled(self._what) from None

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    def _coroutine(self) -> Coroutine[Any, Any, T]:
        if self._waiter is None:
            self._waiter = self._wait()
        return self._waiter

    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, *args: Any) -> Any:
        return self._coroutine().throw(*args)

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.close()

    def result(self, timeout: float | None = None) -> T:
        """Wait for the answer in this thread (``timeout`` seconds; default: the request's timeout).

        Raises what the request raised (:class:`~bixweb.errors.ProtocolError`,
        :class:`ConnectionError`, :class:`TimeoutError`), or :class:`RuntimeError`
        at once on the client's own loop.
        """
        if self._loop is not None and running_loop() is self._loop and not self._future.done():
            raise RuntimeError(OWN_LOOP.format(what=self._what))
        wait = self._timeout if timeout is None else timeout
        try:
            return self._future.result(wait)
        except concurrent.futures.CancelledError:
            raise _cancelled(self._what) from None
        except TimeoutError:
            if self._future.done():
                raise  # the request's own timeout
            self._future.cancel()  # and so the request: it must not take effect after its caller gave up
            raise TimeoutError(f"{self._what}: no answer within {wait} s") from None

    def done(self) -> bool:
        """Whether the answer (or the failure) is in."""
        return self._future.done()

    def __repr__(self) -> str:
        state = "done" if self._future.done() else "pending"
        return f"<Reply to {self._what} ({state}): `await` it, or call .result() from another thread>"


def _settle(target: concurrent.futures.Future[T], task: asyncio.Task[T]) -> None:
    if task.cancelled():
        _fail(target, ConnectionError("the request was cancelled: the client stopped or disconnected"))
    elif (error := task.exception()) is not None:
        _fail(target, error)
    else:
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if not target.done():
                target.set_result(task.result())


def _follow_cancel(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any], future: concurrent.futures.Future[Any]
) -> None:
    """The caller gave up on ``future`` (from any thread): cancel the request's ``task`` on its loop."""
    if future.cancelled():
        with contextlib.suppress(RuntimeError):  # the loop has closed: the task is gone with it
            loop.call_soon_threadsafe(task.cancel)


class Bridge:
    """The requests of one client in flight, from whichever thread made them, on the client's loop.

    Every request runs as a task on the client's loop; :meth:`close` (the
    loop is ending) cancels those still running and fails every answer still
    awaited, so no caller waits out a timeout on a client that has stopped.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._futures: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()
        self.open = False
        """Whether requests are taken (from the loop's start to its end)."""

    def submit(
        self,
        loop: asyncio.AbstractEventLoop | None,
        make: Callable[[], Coroutine[Any, Any, T]],
        what: str,
        timeout: float,
        blocked: Callable[[], bool] | None = None,
    ) -> Reply[T]:
        """Run ``make()`` on ``loop`` (the client's); return its :class:`Reply` at once."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._lock:
            usable = self.open and loop is not None and not loop.is_closed()
            if usable:
                self._futures.add(future)
        if not usable or loop is None:
            _fail(future, _stopped(what))
            return Reply(future, loop, what, timeout)
        future.add_done_callback(self._forget)
        if running_loop() is loop:
            task = self._start(future, make, what)
            return Reply(future, loop, what, timeout, blocked, task)
        try:
            loop.call_soon_threadsafe(self._start, future, make, what)
        except RuntimeError:  # the loop closed meanwhile
            _fail(future, _stopped(what))
        return Reply(future, loop, what, timeout, blocked)

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _start(
        self, future: concurrent.futures.Future[T], make: Callable[[], Coroutine[Any, Any, T]], what: str
    ) -> asyncio.Task[T] | None:
        if future.done():
            return None
        loop = asyncio.get_running_loop()
        task = loop.create_task(make(), name=f"bixweb-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda done: _settle(future, done))
        future.add_done_callback(lambda done: _follow_cancel(loop, task, done))
        return task

    async def close(self) -> None:
        """On the client's loop, as it ends: cancel the requests running, fail those not started."""
        with self._lock:
            self.open = False
            futures = list(self._futures)
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in futures:
            _fail(future, ConnectionError("the client stopped before it answered"))


class Background:
    """One daemon thread running a client's loop: :meth:`start` it, :meth:`stop` it from another thread."""

    def __init__(self, name: str = "bixweb-client") -> None:
        self.name = name
        self._lock = threading.Lock()  # two threads calling start() at once: one wins
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

        with self._lock:
            if self.running():
                raise RuntimeError("the client is already running in the background")
            thread = self.thread = threading.Thread(target=thread_main, name=self.name, daemon=True)
            thread.start()
        started.wait(timeout=5.0)
        return thread

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
