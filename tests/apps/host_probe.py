"""Stable holder for the "never break the host" apps (tests/test_host_safety.py).

The apps import this module by its package name (see holders.py for why), so
the test, which runs the server in-process, reads the same state.

- ``start_locals_watcher`` (locals_thread.py): a daemon thread whose function
  did ``params = locals()`` and edited that dict, then checks every 10 ms
  that nobody else changed it (any key added, removed or rewritten is
  recorded in ``ERRORS``).  The session's Document is a local of that frame,
  so a chain search for the orphan reads that very frame.

:func:`reset` stops every thread and clears the state.
"""
from __future__ import annotations

import threading
from typing import Any

__all__ = ("CHECKS", "ERRORS", "STOP", "checks", "reset", "start_locals_watcher")

#: Set to make every probe thread return.
STOP = threading.Event()

#: What a probe saw go wrong, as text.
ERRORS: list[str] = []

#: How many checks each probe made, by kind.
CHECKS: dict[str, int] = {}

_lock = threading.Lock()
_threads: list[threading.Thread] = []

LOCALS_EVERY_S = 0.01


def checks(kind: str) -> int:
    with _lock:
        return CHECKS.get(kind, 0)


def _count(kind: str) -> None:
    with _lock:
        CHECKS[kind] = CHECKS.get(kind, 0) + 1


def _error(text: str) -> None:
    with _lock:
        ERRORS.append(text)


def _watch_params(doc: Any, every_s: float) -> None:
    # The idiom from the issue: capture the arguments with locals(), edit the
    # dict, and keep using it.
    params = locals()
    params["every_s"] = every_s * 1.0
    params["note"] = "edited by the app"
    expected = {key: params[key] for key in ("doc", "every_s", "note")}
    while not STOP.wait(LOCALS_EVERY_S):
        try:
            if sorted(params) != sorted(expected) or any(params[k] is not v for k, v in expected.items()):
                _error(f"params changed under the app: keys {sorted(params)}")
                return
            if params["every_s"] <= 0:  # the app reading its own dict
                _error("every_s is not positive")
        except Exception as e:  # KeyError when the dict was emptied
            _error(f"params unusable: {e!r}")
            return
        _count("locals")


def start_locals_watcher(doc: Any) -> threading.Thread:
    thread = threading.Thread(
        target=_watch_params, args=(doc, LOCALS_EVERY_S), name="locals-watcher", daemon=True,
    )
    thread.start()
    with _lock:
        _threads.append(thread)
    return thread


def reset(timeout_s: float = 10.0) -> list[str]:
    """ Stop every probe thread; clear the state; return the names still alive. """
    STOP.set()
    with _lock:
        threads = list(_threads)
        _threads.clear()
    for thread in threads:
        thread.join(timeout_s)
    alive = [t.name for t in threads if t.is_alive()]
    with _lock:
        ERRORS.clear()
        CHECKS.clear()
    if not alive:
        STOP.clear()
    return alive
