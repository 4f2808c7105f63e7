""" Run a real Bokeh server with memwatch in a background thread.

Used by memwatch's own tests, by ``bench/`` and by ``bokeh-memwatch check``:
the server gets its own IOLoop in a daemon thread, so the caller can use
blocking clients (``bokeh.client.pull_session``, urllib) from its own thread.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from bokeh.application import Application
from tornado.ioloop import IOLoop

from .core import MemWatch
from .server import memwatch_server

log = logging.getLogger(__name__)

__all__ = ("FAST_SESSIONS", "ServerThread", "call_on_loop")

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


class ServerThread:
    """ A real Bokeh server with memwatch, on its own IOLoop in a thread. """

    def __init__(self, apps: Mapping[str, Application], memwatch: MemWatch, **server_kwargs: Any) -> None:
        self.apps = apps
        self.memwatch = memwatch
        self.server_kwargs = {"port": 0, "address": "127.0.0.1", **FAST_SESSIONS, **server_kwargs}
        self.loop: IOLoop | None = None
        self.server: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bokeh-test-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self.loop = IOLoop.current()
            self.server = memwatch_server(self.apps, memwatch=self.memwatch, io_loop=self.loop, **self.server_kwargs)
            self.server.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.start()
        self.loop.close(all_fds=True)

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
