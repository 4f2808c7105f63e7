""" Workers of one server, as the shared history database knows them.

Three small tables next to the samples in the history database
(:mod:`.history_db`) every worker of a server already opens:

* ``workers``: each live worker's pid, its private loopback port (where the
  other workers forward requests for objects it owns, see
  :mod:`.forwarding`) and its recycling state (``serving``, ``pending``,
  ``draining``, ``exiting``);
* ``drain_lease``: at most one row per server, the worker allowed to drain
  now, so that capacity never drops to zero;
* ``recycles``: what happened to every recycled worker (why, how it ended,
  how long the drain took), kept across restarts for the API and metrics.

Every call is one short transaction on a connection of its own (WAL mode,
a short busy timeout); callers on the IOLoop run them in a thread.  Rows of
processes that no longer exist are ignored and cleaned up.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)

__all__ = (
    "WorkerRegistry",
    "pid_alive",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    server TEXT NOT NULL,
    pid INTEGER NOT NULL,
    port INTEGER,
    started_at REAL NOT NULL,
    state TEXT NOT NULL,
    state_since REAL NOT NULL,
    reason TEXT,
    PRIMARY KEY (server, pid)
);
CREATE TABLE IF NOT EXISTS drain_lease (
    server TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS recycles (
    server TEXT NOT NULL,
    pid INTEGER NOT NULL,
    t REAL NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recycles_server_t ON recycles (server, t);
"""

#: Recycle events kept per server.
MAX_RECYCLES = 1000


def pid_alive(pid: int) -> bool:
    """ Whether a process with this pid exists (on this host). """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user's process
        return True
    return True


class WorkerRegistry:
    """ The ``workers``, ``drain_lease`` and ``recycles`` tables of one server.

    Args:
        path: the history database file (``HistoryDB.path``).
        server: the server's key (``cluster.server_key``).
        busy_timeout_ms: how long a call waits for another worker's lock.
        clock: unix time in seconds (injectable).
        alive: whether a pid exists (injectable).
    """

    def __init__(self, path: str, *, server: str, busy_timeout_ms: int = 2000,
                 clock: Callable[[], float] = time.time, alive: Callable[[int], bool] = pid_alive) -> None:
        self.path = path
        self.server = server
        self.busy_timeout_ms = busy_timeout_ms
        self._clock = clock
        self._alive = alive
        self._connection: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        # Reads have their own connection and lock: on the IOLoop (metrics,
        # api/recycle) they never wait behind a write that waits for a lock.
        self._read_lock = threading.Lock()

    def open(self) -> None:
        """ Connect and create the tables.  Raises ``OSError`` or
        ``sqlite3.Error`` when the file cannot be used. """
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, check_same_thread=False,
                                     isolation_level=None)
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            connection.executescript(_SCHEMA)
            reader = sqlite3.connect(self.path, timeout=0.2, check_same_thread=False, isolation_level=None)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        self._reader = reader

    def close(self) -> None:
        with self._lock, self._read_lock:
            for connection in (self._connection, self._reader):
                if connection is not None:
                    connection.close()
            self._connection = self._reader = None

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """ A read (WAL: never waits for a writer). """
        with self._read_lock:
            if self._reader is None:
                raise sqlite3.ProgrammingError("the worker registry is closed")
            yield self._reader

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            connection = self._connection
            if connection is None:
                raise sqlite3.ProgrammingError("the worker registry is closed")
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    # -- workers ---------------------------------------------------------------------

    def register(self, pid: int, *, port: int | None, state: str = "serving") -> None:
        """ Add (or replace) this worker's row, and drop rows of processes
        that no longer exist. """
        now = self._clock()
        with self._transaction() as db:
            for (other,) in db.execute("SELECT pid FROM workers WHERE server = ?", (self.server,)).fetchall():
                if other != pid and not self._alive(other):
                    db.execute("DELETE FROM workers WHERE server = ? AND pid = ?", (self.server, other))
            db.execute(
                "INSERT OR REPLACE INTO workers (server, pid, port, started_at, state, state_since, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (self.server, pid, port, now, state, now),
            )

    def set_state(self, pid: int, state: str, reason: str | None = None) -> None:
        with self._transaction() as db:
            db.execute("UPDATE workers SET state = ?, state_since = ?, reason = ? WHERE server = ? AND pid = ?",
                       (state, self._clock(), reason, self.server, pid))

    def unregister(self, pid: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM workers WHERE server = ? AND pid = ?", (self.server, pid))

    def workers(self) -> list[dict[str, Any]]:
        """ Live workers of this server, by pid: ``[{pid, port, started_at,
        state, state_since, reason}]``. """
        with self._read() as db:
            rows = db.execute(
                "SELECT pid, port, started_at, state, state_since, reason FROM workers WHERE server = ? "
                "ORDER BY pid", (self.server,),
            ).fetchall()
        names = ("pid", "port", "started_at", "state", "state_since", "reason")
        return [dict(zip(names, row, strict=True)) for row in rows if self._alive(row[0])]

    # -- the drain lease ---------------------------------------------------------------

    def try_acquire_drain(self, pid: int, *, min_serving: int = 0) -> int | None:
        """ Take the server's drain lease for ``pid``.  Returns ``None`` when
        taken (or already held), else the pid of the worker holding it, or 0
        while fewer than ``min_serving`` other workers are serving.  The lease
        is held until its holder's process is gone (a recycled worker does
        not release it: its replacement must be serving before the next
        drain), then taken over. """
        with self._transaction() as db:
            row = db.execute("SELECT pid FROM drain_lease WHERE server = ?", (self.server,)).fetchone()
            if row is not None and row[0] != pid and self._alive(row[0]):
                return int(row[0])
            if min_serving > 0:
                serving = [other for (other,) in db.execute(
                    "SELECT pid FROM workers WHERE server = ? AND pid != ? AND state = 'serving'", (self.server, pid),
                ).fetchall() if self._alive(other)]
                if len(serving) < min_serving:
                    return 0
            db.execute("INSERT OR REPLACE INTO drain_lease (server, pid, since) VALUES (?, ?, ?)",
                       (self.server, pid, self._clock()))
        return None

    def release_drain(self, pid: int) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM drain_lease WHERE server = ? AND pid = ?", (self.server, pid))

    def drain_holder(self) -> int | None:
        with self._read() as db:
            row = db.execute("SELECT pid FROM drain_lease WHERE server = ?", (self.server,)).fetchone()
        return None if row is None or not self._alive(row[0]) else int(row[0])

    # -- recycle events ------------------------------------------------------------------

    def record_recycle(self, event: dict[str, Any]) -> None:
        """ Keep one event (``pid``, ``reason``, ``outcome`` and any JSON
        fields); the newest :data:`MAX_RECYCLES` are kept. """
        with self._transaction() as db:
            db.execute("INSERT INTO recycles (server, pid, t, reason, outcome, data) VALUES (?, ?, ?, ?, ?, ?)",
                       (self.server, int(event["pid"]), float(event.get("t") or self._clock()),
                        str(event["reason"]), str(event["outcome"]), json.dumps(event, allow_nan=False)))
            db.execute(
                "DELETE FROM recycles WHERE server = ? AND rowid NOT IN "
                "(SELECT rowid FROM recycles WHERE server = ? ORDER BY t DESC LIMIT ?)",
                (self.server, self.server, MAX_RECYCLES),
            )

    def recycles(self, limit: int = 20) -> list[dict[str, Any]]:
        """ The newest ``limit`` recycle events, newest first. """
        with self._read() as db:
            rows = db.execute("SELECT data FROM recycles WHERE server = ? ORDER BY t DESC LIMIT ?",
                              (self.server, limit)).fetchall()
        out: list[dict[str, Any]] = []
        for (data,) in rows:
            with contextlib.suppress(ValueError):
                out.append(json.loads(data))
        return out

    def recycle_counts(self) -> dict[tuple[str, str], int]:
        """ ``{(reason, outcome): count}`` of this server's kept events. """
        with self._read() as db:
            rows = db.execute("SELECT reason, outcome, count(*) FROM recycles WHERE server = ? "
                              "GROUP BY reason, outcome", (self.server,)).fetchall()
        return {(str(r), str(o)): int(n) for r, o, n in rows}
