""" Run a real Bokeh server with memwatch in a background thread.

Used by memwatch's own tests, by ``bench/`` and by ``bokeh-memwatch check``:
the server gets its own IOLoop in a daemon thread, so the caller can use
blocking clients (``bokeh.client.pull_session``, urllib) from its own thread.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from bokeh.application import Application
from tornado.ioloop import IOLoop

from ..memwatch import MemWatch
from ..server import memwatch_server

if TYPE_CHECKING:
    from bokeh.client.session import ClientSession

log = logging.getLogger(__name__)

__all__ = ("FAST_SESSIONS", "ServerThread", "call_on_loop", "client_session")

T = TypeVar("T")

#: Short session lifetimes so Bokeh destroys closed sessions quickly.
FAST_SESSIONS: dict[str, Any] = {
    "check_unused_sessions_milliseconds": 100,
    "unused_session_lifetime_milliseconds": 100,
}


def call_on_loop(loop: IOLoop, fn: Callable[[], T], timeout_s: float = 30.0) -> T:
    """ Run ``fn`` on ``loop`` (a server's IOLoop in another thread), wait
    for it and return its result or raise its exception. """
    done = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:
            box["error"] = e
        finally:
            done.set()

    loop.add_callback(run)
    if not done.wait(timeout_s):
        raise TimeoutError("the server's IOLoop did not answer")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@contextlib.contextmanager
def client_session(url: str, arguments: Mapping[str, str] | None = None) -> Iterator[ClientSession]:
    """ ``bokeh.client.pull_session(url=url, arguments=arguments)`` on an
    IOLoop of its own, closed with the session; usable from any thread.

    Left to itself the client makes its loop with ``IOLoop()``, which makes
    it *current* without running it: tornado then asks
    ``asyncio.get_event_loop()`` for the loop to restore, and in a thread
    that never set one (the main thread of a test run or of
    ``bokeh-memwatch check``) Python 3.12 warns "There is no current event
    loop"; and that loop is never closed.  Tornado's way is
    ``IOLoop(make_current=False)``, used only while it runs (Bokeh's blocking
    client runs it while it waits; ``close`` writes the websocket's close
    frame, which makes a Future, so it runs on the loop too), and closed by
    its owner.
    """
    from bokeh.client import pull_session

    loop = IOLoop(make_current=False)
    try:
        session = pull_session(url=url, io_loop=loop, arguments=dict(arguments or {}))
        try:
            yield session
        finally:
            loop.run_sync(session.close, timeout=30)
    finally:
        loop.close(all_fds=True)


def _finish_tasks(loop: asyncio.AbstractEventLoop, timeout_s: float = 10.0) -> None:
    """ Before a stopped loop is closed, as ``asyncio.run`` does: let the
    tasks the server left (Bokeh's "connection lost" notices of the last
    clients, say) finish, cancel what is still pending after ``timeout_s``,
    and close async generators.  Closing the loop with a task pending
    destroys it mid-way ("Task was destroyed but it is pending!"). """
    for _ in range(3):  # a finishing task may start another; bounded
        pending = asyncio.all_tasks(loop)
        if not pending:
            break
        loop.run_until_complete(asyncio.wait(pending, timeout=timeout_s))
        late = [t for t in pending if not t.done()]
        for task in late:
            task.cancel()
        if late:
            loop.run_until_complete(asyncio.gather(*late, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


class ServerThread:
    """ A real Bokeh server with memwatch, on its own IOLoop in a thread. """

    def __init__(self, apps: Mapping[str, Application], memwatch: MemWatch, *,
                 make_server: Callable[..., Any] = memwatch_server, **server_kwargs: Any) -> None:
        """ ``make_server(apps, memwatch=memwatch, io_loop=loop, **server_kwargs)``
        makes the server on its loop (default: ``memwatch_server``). """
        self.apps = apps
        self.make_server = make_server
        self.memwatch = memwatch
        self.server_kwargs = {"port": 0, "address": "127.0.0.1", **FAST_SESSIONS, **server_kwargs}
        self.loop: IOLoop | None = None
        self.server: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bokeh-test-server", daemon=True)

    def _run(self) -> None:
        asyncio_loop = asyncio.new_event_loop()
        asyncio.set_event_loop(asyncio_loop)
        try:
            self.loop = IOLoop.current()
            self.server = self.make_server(self.apps, memwatch=self.memwatch, io_loop=self.loop, **self.server_kwargs)
            self.server.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.start()
        try:
            _finish_tasks(asyncio_loop)
        finally:
            self.loop.close(all_fds=True)
            asyncio.set_event_loop(None)

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("server did not start in 30 s")
        if self._error is not None:
            raise self._error
        return self

    @property
    def url(self) -> str:
        prefix = self.server.prefix
        return f"http://127.0.0.1:{self.server.port}{prefix}"

    def call(self, fn: Callable[[], T], timeout_s: float = 30.0) -> T:
        """ Run ``fn`` on the server's loop and return its result. """
        assert self.loop is not None
        return call_on_loop(self.loop, fn, timeout_s)

    def stop(self) -> None:
        if self.loop is None or not self._thread.is_alive():
            return

        def shutdown() -> None:
            try:
                self.server.stop()
                self.server.unlisten()
            finally:
                assert self.loop is not None
                self.loop.add_callback(self.loop.stop)

        self.loop.add_callback(shutdown)
        self._thread.join(30)
        assert not self._thread.is_alive(), "server thread did not stop"
