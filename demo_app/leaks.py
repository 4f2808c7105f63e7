"""The demo's deliberate leaks, in a module with a stable name.

Bokeh runs ``demo_app/main.py`` as a throwaway ``bokeh_app_<uuid>`` module per
session and clears it when the session ends, so everything that outlives a
session lives here, imported by main.py as ``demo_app.leaks``; every session
shares this one module object. Functions here use only this module's globals
and their own closure cells, never main.py's.

Leak modes and what holds the session's Document afterwards:

- ``global``: ``demo_app.leaks.CACHE[i]`` is a ``(Document, ColumnDataSource)``
  tuple, never pruned.
- ``thread``: the daemon thread ``demo-leak-worker-<n>`` runs ``poll``, a
  closure whose cell ``doc`` is the Document (thread -> frame -> cell).
- ``callback``: a tornado PeriodicCallback on the server's IOLoop, never
  stopped: the loop's timer -> ``PeriodicCallback._run`` -> ``refresh``
  closure -> cell ``doc``. ``CALLBACKS`` is a WeakSet, for :func:`reset` only.

``ACTIVE_SESSIONS`` is state the app owns legitimately (session id -> leak
mode); main.py removes its entry in ``on_session_destroyed``.

:func:`reset` releases every leak and stops the threads and callbacks.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from tornado.ioloop import PeriodicCallback

if TYPE_CHECKING:
    from bokeh.document import Document
    from bokeh.models import ColumnDataSource

log = logging.getLogger(__name__)

__all__ = (
    "ACTIVE_SESSIONS",
    "CACHE",
    "CALLBACKS",
    "LEAK_MODES",
    "STOP",
    "WORKER_PREFIX",
    "leak",
    "leak_callback",
    "leak_global",
    "leak_thread",
    "reset",
)

#: URL argument value -> button label, in button order ("off" first).
LEAK_MODES: dict[str, str] = {
    "off": "off",
    "global": "global cache",
    "thread": "thread",
    "callback": "tornado callback",
}

#: Session id -> leak mode, for the sessions currently open (owned by main.py).
ACTIVE_SESSIONS: dict[str, str] = {}

#: The "global cache" leak: one (Document, ColumnDataSource) per session, never pruned.
CACHE: list[tuple[Document, ColumnDataSource]] = []

#: Setting it makes every demo-leak-worker thread return.
STOP = threading.Event()

#: Thread-name prefix of the "thread" leak's workers.
WORKER_PREFIX = "demo-leak-worker-"

#: The "tornado callback" leak's PeriodicCallbacks. Weak: the IOLoop is the holder.
CALLBACKS: weakref.WeakSet[PeriodicCallback] = weakref.WeakSet()

WORKER_POLL_INTERVAL_S = 0.5
REFRESH_INTERVAL_MS = 5_000

_worker_numbers = itertools.count(1)
_lock = threading.Lock()


def leak_global(doc: Document, source: ColumnDataSource) -> None:
    """Cache the session's Document and source in a module-level list."""
    CACHE.append((doc, source))


def leak_thread(doc: Document) -> threading.Thread:
    """Start a daemon worker whose closure holds *doc* until :data:`STOP` is set."""
    stop = STOP
    pending: list[Callable[[], None]] = []

    def poll() -> None:
        # A background refresher meant to push results into the page with
        # doc.add_next_tick_callback(); it never notices the session ended.
        while not stop.wait(WORKER_POLL_INTERVAL_S):
            if pending:
                doc.add_next_tick_callback(pending.pop())

    with _lock:
        name = f"{WORKER_PREFIX}{next(_worker_numbers)}"
    thread = threading.Thread(target=poll, name=name, daemon=True)
    thread.start()
    return thread


def leak_callback(doc: Document) -> PeriodicCallback:
    """Start a PeriodicCallback on the current IOLoop that is never stopped.

    The clean version is ``doc.add_periodic_callback`` (removed with the
    session), or stopping it in ``doc.on_session_destroyed``.
    """
    ticks = 0
    title = ""

    def refresh() -> None:
        nonlocal ticks, title
        ticks += 1
        title = doc.title

    callback = PeriodicCallback(refresh, REFRESH_INTERVAL_MS)
    callback.start()  # binds to IOLoop.current(): the server's loop
    CALLBACKS.add(callback)
    return callback


def leak(mode: str, doc: Document, source: ColumnDataSource) -> None:
    """Perform the leak named by *mode* (a key of :data:`LEAK_MODES`)."""
    if mode == "global":
        leak_global(doc, source)
    elif mode == "thread":
        leak_thread(doc)
    elif mode == "callback":
        leak_callback(doc)
    elif mode != "off":
        raise ValueError(f"unknown leak mode {mode!r}; expected one of {sorted(LEAK_MODES)}")
    log.info("demo_app: leak mode %r applied", mode)


def _stop_callback(pc: PeriodicCallback, timeout_s: float) -> None:
    """Stop *pc* on its own loop's thread, waiting up to *timeout_s*."""
    io_loop = getattr(pc, "io_loop", None)
    asyncio_loop = getattr(io_loop, "asyncio_loop", None)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if io_loop is None or asyncio_loop is None or not asyncio_loop.is_running() or asyncio_loop is running:
        pc.stop()
        return
    done = threading.Event()

    def stop_on_loop() -> None:
        try:
            pc.stop()
        finally:
            done.set()

    io_loop.add_callback(stop_on_loop)
    if not done.wait(timeout_s):
        log.warning("PeriodicCallback %r did not stop within %.1f s", pc, timeout_s)


def reset(timeout_s: float = 5.0) -> None:
    """Release every leak: clear CACHE, stop the workers and the callbacks."""
    CACHE.clear()
    STOP.set()
    workers = [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]
    for thread in workers:
        thread.join(timeout_s)
    if any(t.is_alive() for t in workers):
        log.warning("demo leak workers did not stop")
    else:
        STOP.clear()
    callbacks = list(CALLBACKS)
    try:
        for pc in callbacks:
            _stop_callback(pc, timeout_s)
            CALLBACKS.discard(pc)
    finally:
        del callbacks
