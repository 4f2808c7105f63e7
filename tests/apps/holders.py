"""Stable, importable holders for the test apps' deliberate leaks.

Bokeh runs every app script as a fresh ``bokeh_app_<uuid>`` module and, when
the session ends, removes it from ``sys.modules`` and clears its ``__dict__``.
Anything that is meant to outlive a session (which is the point of a leak)
therefore lives here, under the stable name ``tests.apps.holders``; the apps
import it with ``from tests.apps import holders`` so every session shares this
one module object.

What holds what (the paths memwatch is expected to report):

- ``DOCS`` (leak_global.py): ``tests.apps.holders.DOCS[i]`` is a Document.
- ``LAST`` (leak_last_session.py): ``tests.apps.holders.LAST`` is the most
  recent session's Document; a bounded leak of one.
- ``STOP`` (leak_thread.py): the ``leaky-worker-<n>`` daemon threads poll this
  Event; the Document is held by the running thread's frame (a closure cell),
  not by this module.
- ``CALLBACKS`` (leak_callback.py): a WeakSet of the PeriodicCallbacks, kept
  only so :func:`stop_all` can find them. The strong holder is the IOLoop's
  scheduled timer -> ``PeriodicCallback._run`` -> the callback closure.
- ``GLOBAL_SELECT`` (panel_leak_models.py): a Panel Select shared by all
  sessions. Each session adds a ``param.watch`` callback whose closure holds
  that session's ColumnDataSource and data arrays, so those outlive the
  session while the Document itself is freed.

:func:`reset` undoes all of it and leaves no thread or timer running; tests
call it in teardown.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bokeh.document import Document
    from panel.widgets import Select
    from tornado.ioloop import PeriodicCallback

log = logging.getLogger(__name__)

__all__ = (
    "CALLBACKS",
    "DOCS",
    "FEED",
    "GLOBAL_SELECT",
    "LAST",
    "NASTY",
    "STOP",
    "WORKER_PREFIX",
    "Nasty",
    "counts",
    "global_select",
    "next_worker_name",
    "reset",
    "stop_all",
    "stop_threads",
)

#: Documents appended by leak_global.py, one per session, never removed.
DOCS: list[Document] = []

class Nasty:
    """ Holds a Document; every dunder a diagnostic tool might call misbehaves. """

    def __init__(self, doc: Any, mode: str) -> None:
        self.doc = doc
        self.mode = mode

    def __repr__(self) -> str:
        if self.mode == "raise":
            raise RuntimeError("repr refuses")
        import time

        while True:  # hangs: only a deadline gets out of here
            time.sleep(0.01)

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq refuses")

    def __hash__(self) -> int:
        raise RuntimeError("hash refuses")

    def __del__(self) -> None:
        raise RuntimeError("del refuses")


#: Feed subscribers of clean_periodic.py sessions; each session removes its own at destroy.
FEED: list[Any] = []

#: Nasty objects appended by leak_nasty.py.
NASTY: list[Nasty] = []

#: The last session's Document, overwritten by each new leak_last_session.py session.
LAST: Document | None = None

#: leak_numpy.py: one 2 MB numpy array per session.
ARRAYS: list[Any] = []

#: Set to make every leaky-worker thread return; :func:`stop_threads` clears it again.
STOP = threading.Event()

#: Thread-name prefix of the leak_thread.py workers.
WORKER_PREFIX = "leaky-worker-"

#: PeriodicCallbacks started by leak_callback.py. Weak on purpose: see the module docstring.
CALLBACKS: weakref.WeakSet[PeriodicCallback] = weakref.WeakSet()

#: The Panel widget shared by every panel_leak_models.py session; see :func:`global_select`.
GLOBAL_SELECT: Select | None = None

GLOBAL_SELECT_OPTIONS = ("sin", "cos", "damped")

_worker_numbers = itertools.count(1)
_lock = threading.Lock()


def next_worker_name() -> str:
    """Return ``leaky-worker-<n>`` with n = 1, 2, ... across the process."""
    with _lock:
        return f"{WORKER_PREFIX}{next(_worker_numbers)}"


def global_select() -> Select:
    """Return the process-wide Select, creating it on first use.

    Created lazily so importing this module does not import Panel.
    """
    global GLOBAL_SELECT
    with _lock:
        if GLOBAL_SELECT is None:
            import panel as pn

            GLOBAL_SELECT = pn.widgets.Select(
                name="Curve (shared by all sessions)",
                options=list(GLOBAL_SELECT_OPTIONS),
                value=GLOBAL_SELECT_OPTIONS[0],
            )
        return GLOBAL_SELECT


def stop_threads(timeout_s: float = 5.0) -> list[str]:
    """Stop and join every leaky-worker thread; return the names still alive.

    ``STOP`` is cleared again afterwards so later sessions start workers that
    leak as intended.
    """
    STOP.set()
    workers = [t for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]
    for thread in workers:
        thread.join(timeout_s)
    alive = [t.name for t in workers if t.is_alive()]
    if alive:
        log.warning("leaky-worker threads did not stop: %s", alive)
    else:
        STOP.clear()
    return alive


def _stop_callback(pc: PeriodicCallback, timeout_s: float) -> None:
    """Stop *pc* on its own loop's thread, waiting up to *timeout_s*."""
    io_loop = getattr(pc, "io_loop", None)
    asyncio_loop: asyncio.AbstractEventLoop | None = getattr(io_loop, "asyncio_loop", None)
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


def stop_all(timeout_s: float = 5.0) -> int:
    """Stop every PeriodicCallback leak_callback.py started; return how many.

    Safe from any thread: a callback whose loop runs in another thread is
    stopped on that loop. A stopped callback is no longer referenced by its
    loop, so it (and the Document its closure holds) becomes garbage.
    """
    callbacks = list(CALLBACKS)
    try:
        for pc in callbacks:
            _stop_callback(pc, timeout_s)
            CALLBACKS.discard(pc)
        return len(callbacks)
    finally:
        del callbacks


class _Defused:
    """ What a Nasty becomes before it is dropped, so its __del__ stays quiet. """


def reset(timeout_s: float = 5.0) -> None:
    """Release every leak held by this module and stop threads and timers."""
    global LAST, GLOBAL_SELECT
    DOCS.clear()
    FEED.clear()
    ARRAYS.clear()
    for nasty in NASTY:
        nasty.__class__ = _Defused  # type: ignore[assignment]
    NASTY.clear()
    LAST = None
    stop_threads(timeout_s)
    stop_all(timeout_s)
    with _lock:
        # Dropping the widget drops every per-session watcher registered on it.
        GLOBAL_SELECT = None


def counts() -> dict[str, Any]:
    """How much each holder holds, for test messages (no references to held objects)."""
    return {
        "docs": len(DOCS),
        "last": LAST is not None,
        "threads": sum(t.name.startswith(WORKER_PREFIX) for t in threading.enumerate()),
        "callbacks": len(CALLBACKS),
        "global_select": GLOBAL_SELECT is not None,
    }
