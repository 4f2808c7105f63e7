"""Stable holder for the "never break the host" apps (tests/test_host_safety.py).

The apps import this module by its package name (see holders.py for why), so
the test, which runs the server in-process, reads the same state.

- ``start_blas_spinner`` (blas_thread.py): one daemon thread per process
  looping ``a = (a @ a) / 300.0`` on a 300x300 array, so the OpenBLAS pool
  is busy whenever memwatch forks; ``LEAKED`` keeps each session's Document.
- ``make_finalizable_garbage``: unreachable reference cycles, parked in the
  oldest gc generation, whose ``__del__`` methods and weakref callbacks write
  ``<pid> <what>`` lines to a file (a child running them shows up as another
  pid); some of them take ``LOCK``, which a probe thread holds
  (``hold_lock``), when they run in a process other than this one.
- ``ODD`` (odd_holders.py): each session's Document held (as ``.doc``) by
  an object of one of ``ODD_KINDS``, round robin: every dunder a diagnostic
  might touch raises (``__getattribute__``, a ``__class__`` property,
  ``__sizeof__``, ``__repr__``, ``__len__``, ``__eq__``/``__hash__``), or
  the class's metaclass raises (``__getattribute__``, ``__repr__``), or it
  is a lazy-object proxy (``__class__`` and every attribute forwarded).
- ``start_locals_watcher`` (locals_thread.py): a daemon thread whose function
  did ``params = locals()`` and edited that dict, then checks every 10 ms
  that nobody else changed it (any key added, removed or rewritten is
  recorded in ``ERRORS``).  The session's Document is a local of that frame,
  so a chain search for the orphan reads that very frame.

:func:`reset` stops every thread and clears the state.
"""
from __future__ import annotations

import functools
import os
import threading
import weakref
from typing import Any

__all__ = (
    "CHECKS",
    "ERRORS",
    "LEAKED",
    "LOCK",
    "ODD",
    "ODD_KINDS",
    "STOP",
    "checks",
    "hold_lock",
    "make_finalizable_garbage",
    "make_odd_holder",
    "reset",
    "start_blas_spinner",
    "start_locals_watcher",
)

#: Set to make every probe thread return.
STOP = threading.Event()

#: What a probe saw go wrong, as text.
ERRORS: list[str] = []

#: How many checks each probe made, by kind.
CHECKS: dict[str, int] = {}

#: Documents the blas_thread.py sessions leave behind (for chain searches).
LEAKED: list[Any] = []

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


#: Taken by the lock-taking finalizers when they run outside the process
#: that made them; see :func:`hold_lock`.
LOCK = threading.Lock()
_HOME_PID = os.getpid()
_weakrefs: list[weakref.ref[Any]] = []


def _note(path: str, what: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{os.getpid()} {what}\n".encode())
    finally:
        os.close(fd)


def _note_weakref(path: str, _ref: object) -> None:
    _note(path, "weakref")


class Finalizable:
    """ Notes its own finalization; ``locking`` ones first take ``LOCK`` when
    finalized in another process (a fork: the lock stays held there). """

    def __init__(self, path: str, locking: bool) -> None:
        self.path = path
        self.locking = locking
        self.partner: Finalizable | None = None

    def __del__(self) -> None:
        if self.locking and os.getpid() != _HOME_PID:
            LOCK.acquire()
        _note(self.path, "del")


def make_finalizable_garbage(path: str, cycles: int, locking: int) -> int:
    """ Leave ``cycles + locking`` unreachable two-object cycles in the oldest
    generation (a young collection does not touch them; only a full one,
    which only a ``gc.collect()`` makes likely, finalizes them).  Each object
    notes ``del``; one weakref callback per cycle notes ``weakref``.
    Returns how many lines their finalization writes. """
    import gc

    made: list[Finalizable] = []
    for n in range(cycles + locking):
        a = Finalizable(path, locking=n >= cycles)
        b = Finalizable(path, locking=False)
        a.partner, b.partner = b, a
        made.append(a)
        _weakrefs.append(weakref.ref(a, functools.partial(_note_weakref, path)))
    gc.collect(0)
    gc.collect(1)  # the survivors move to the oldest generation
    made.clear()
    return 3 * (cycles + locking)


def hold_lock(release: threading.Event) -> threading.Thread:
    """ Hold ``LOCK`` in a thread until ``release`` is set. """
    held = threading.Event()

    def run() -> None:
        with LOCK:
            held.set()
            release.wait(120)

    thread = threading.Thread(target=run, name="lock-holder", daemon=True)
    thread.start()
    held.wait(10)
    with _lock:
        _threads.append(thread)
    return thread


class Refuses(RuntimeError):
    """ What the odd holders raise. """


class RaisingDunders:
    """ Every dunder a diagnostic tool might call raises. """

    def __init__(self, doc: Any) -> None:
        self.doc = doc

    def __getattribute__(self, name: str) -> Any:
        raise Refuses(f"__getattribute__({name!r})")

    def __sizeof__(self) -> int:
        raise Refuses("__sizeof__")

    def __repr__(self) -> str:
        raise Refuses("__repr__")

    def __len__(self) -> int:
        raise Refuses("__len__")

    def __eq__(self, other: object) -> bool:
        raise Refuses("__eq__")

    def __hash__(self) -> int:
        raise Refuses("__hash__")


class RaisingClassProperty:
    """ ``isinstance`` reads ``__class__``: this one raises. """

    def __init__(self, doc: Any) -> None:
        self.doc = doc

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise Refuses("__class__")

    @property
    def __dict__(self) -> dict[str, Any]:  # type: ignore[override]
        raise Refuses("__dict__")


class RaisingMeta(type):
    def __getattribute__(cls, name: str) -> Any:
        raise Refuses(f"metaclass __getattribute__({name!r})")

    def __repr__(cls) -> str:
        raise Refuses("metaclass __repr__")


class RaisingMetaclassInstance(metaclass=RaisingMeta):
    def __init__(self, doc: Any) -> None:
        self.doc = doc

    def __sizeof__(self) -> int:
        return -1  # a lie sys.getsizeof would turn into an exception


class LazyProxy:
    """ Like lazy-object-proxy: pretends to be its target. """

    def __init__(self, doc: Any) -> None:
        object.__setattr__(self, "doc", doc)

    def __getattribute__(self, name: str) -> Any:
        if name in ("doc", "__dict__"):
            return object.__getattribute__(self, name)
        raise Refuses(f"proxy __getattribute__({name!r}): the target is not ready")

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise Refuses("proxy __class__")


ODD_KINDS: tuple[type, ...] = (RaisingDunders, RaisingClassProperty, RaisingMetaclassInstance, LazyProxy)

#: The odd holders made by odd_holders.py, one per session.
ODD: list[Any] = []


def make_odd_holder(doc: Any) -> Any:
    with _lock:
        kind = ODD_KINDS[len(ODD) % len(ODD_KINDS)]
        holder = kind(doc)
        ODD.append(holder)
    return holder


def _spin_blas() -> None:
    import numpy as np

    a = np.random.default_rng(0).random((300, 300))
    while not STOP.is_set():
        a = (a @ a) / 300.0
        _count("blas")


def start_blas_spinner() -> None:
    """ Start the BLAS thread once per process. """
    with _lock:
        if any(t.name == "blas-spinner" and t.is_alive() for t in _threads):
            return
        thread = threading.Thread(target=_spin_blas, name="blas-spinner", daemon=True)
        _threads.append(thread)
    thread.start()


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
        LEAKED.clear()
        ODD.clear()
        _weakrefs.clear()
    if not alive:
        STOP.clear()
    return alive
