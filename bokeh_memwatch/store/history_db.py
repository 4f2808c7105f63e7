""" History that survives restarts: samples in an embedded SQLite database.

One file (``history.sqlite3``) per directory, shared by every memwatch
process that uses the directory: the workers of a ``--num-procs`` server,
later runs of the same server, other servers of the same user.  Each row is
one sample of one process of one server::

    samples(server TEXT, pid INTEGER, t REAL, data TEXT)  -- data: the sample as JSON

``server`` is a key naming the server (its port, prefix and application
paths by default), so the workers of one server find each other's samples
and a restarted server finds its earlier ones, while other servers' rows stay
out of its answers.

Writes go through a bounded queue to one writer thread with its own
connection, so a tick on the IOLoop costs a ``put_nowait`` (a few
microseconds) whatever the disk or another worker's lock is doing; a full
queue drops the sample and counts it.  Reads use a second connection with a
short busy timeout (WAL: readers do not wait for the writer).  Both are
opened by :meth:`HistoryDB.open`, in the process that uses them (after any
fork).  The file is kept in WAL mode, bounded by age (``max_age_s``) and by
size (``max_bytes``; oldest rows go first, freed pages are returned to the
file system with incremental vacuum).

Reads run on the IOLoop, so each one is bounded whatever the size of the
file: every query is a range search of an index (``(server, t)`` or
``(server, pid, t)``) over a time window or up to a ``LIMIT``; the SQL is
built by :func:`select_samples` and :func:`select_latest_per_pid`, whose
plans a test checks with ``EXPLAIN QUERY PLAN``.

The file can go away under a running server.  Before each write the writer
thread checks that the path still names the file it opened; when it was
deleted or replaced, it warns and reopens (a new file, or the one another
worker made).  A corrupt file (``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, seen by
a write or a read) is moved aside to ``history.sqlite3.corrupt`` and a new
one started.  Other write errors (disk full, read-only) mark the database
failing after :data:`FAILING_AFTER` in a row.  While the database is
unusable, :meth:`HistoryDB.state` says ``enabled: false`` with the ``error``;
a reopen is tried again every ``retry_s``.

This module imports neither tornado nor ``bokeh.server``.

Over 400 lines: the schema, its writer thread with its bounded queue, the size
bound and the merged reads are one database's invariants.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import sqlite3
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

__all__ = (
    "DB_FILENAME",
    "HistoryDB",
    "default_history_dir",
    "resolve_history_dir",
    "select_latest_per_pid",
    "select_samples",
)

DB_FILENAME = "history.sqlite3"

#: Write errors in a row after which the database counts as failing.
FAILING_AFTER = 3

#: ``history_dir`` values that turn the database off.
OFF_VALUES = ("none", "off", "false", "0", "no")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    server TEXT NOT NULL,
    pid INTEGER NOT NULL,
    t REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_server_t ON samples (server, t);
CREATE INDEX IF NOT EXISTS samples_server_pid_t ON samples (server, pid, t);
CREATE INDEX IF NOT EXISTS samples_t ON samples (t);
"""

#: Suffixes of the files SQLite keeps next to a WAL database.
_SIDE_FILES = ("-wal", "-shm")

_STOP = object()


def default_history_dir(environ: Mapping[str, str] | None = None, home: str | None = None) -> str:
    """ A per-user state directory: ``$XDG_STATE_HOME/bokeh-memwatch``, else
    ``~/.local/state/bokeh-memwatch``, else (no home) one under the
    temporary directory, named after the user id. """
    environ = os.environ if environ is None else environ
    state = environ.get("XDG_STATE_HOME", "")
    if state and os.path.isabs(state):
        return os.path.join(state, "bokeh-memwatch")
    home = os.path.expanduser("~") if home is None else home
    if home and home != "~" and os.path.isabs(home):
        return os.path.join(home, ".local", "state", "bokeh-memwatch")
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return os.path.join(tempfile.gettempdir(), f"bokeh-memwatch-{uid}")


def resolve_history_dir(value: str, environ: Mapping[str, str] | None = None) -> str | None:
    """ The directory an option value names: ``""`` the default one, ``none``
    (or ``off``) no database at all, anything else itself. """
    value = value.strip()
    if value.lower() in OFF_VALUES:
        return None
    if not value:
        return default_history_dir(environ)
    return os.path.abspath(os.path.expanduser(value))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


class HistoryDB:
    """ Samples of every process of a server, on disk.

    Args:
        directory: where ``history.sqlite3`` lives (made with mode 0700).
        server: the key of this server's rows.
        max_age_s: rows older than this are deleted.
        max_bytes: the database file is kept under this size.
        queue_size: samples waiting for the writer thread; more are dropped.
        busy_timeout_ms: how long the writer waits for another process's lock.
        clock: unix time in seconds (injectable).
        prune_every_s: least time between two retention passes.
        retry_s: least time between two reopen attempts of an unusable file.
    """

    def __init__(
        self,
        directory: str,
        *,
        server: str,
        max_age_s: float,
        max_bytes: int,
        queue_size: int = 256,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.time,
        prune_every_s: float = 30.0,
        retry_s: float = 30.0,
    ) -> None:
        if max_age_s <= 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if max_bytes < 64 * 1024:
            raise ValueError(f"max_bytes must be at least 65536, got {max_bytes}")
        self.directory = directory
        self.path = os.path.join(directory, DB_FILENAME)
        self.server = server
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.busy_timeout_ms = busy_timeout_ms
        self.prune_every_s = prune_every_s
        self.retry_s = retry_s
        self._clock = clock
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._last_prune = float("-inf")
        self._write_us: deque[float] = deque(maxlen=1000)
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.pruned = 0
        #: Why the database is unusable now (None: it is not).
        self.error: str | None = None
        #: Times the file was found deleted, replaced or corrupt and reopened.
        self.reopened = 0
        self._identity: tuple[int, int] | None = None
        self._errors_in_row = 0
        self._corrupt_read: str | None = None
        self._last_attempt = float("-inf")
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------

    def open(self, *, thread: bool = True) -> None:
        """ Open both connections (in this process) and start the writer
        thread; ``thread=False`` makes :meth:`submit` write synchronously
        (for tests and measurements).  Raises ``OSError`` or
        ``sqlite3.Error`` when the file cannot be used. """
        if self._pid == os.getpid() and self._writer is not None:
            return
        self._pid = os.getpid()
        self._closed = False
        try:
            self._writer, self._reader, self._identity = self._open_connections()
        except sqlite3.DatabaseError as e:
            if not (_is_corrupt(e) and os.path.exists(self.path)):
                raise
            log.warning("memwatch history: %s is not a usable database (%s); moving it to %s.corrupt",
                        self.path, e, self.path)
            self._move_aside()
            self._writer, self._reader, self._identity = self._open_connections()
        self._prune()
        if thread:
            self._thread = threading.Thread(target=self._run, name="memwatch-history", daemon=True)
            self._thread.start()

    def _open_connections(self) -> tuple[sqlite3.Connection, sqlite3.Connection, tuple[int, int] | None]:
        """ Writer and reader connections to the file at ``path`` (made if
        missing, with the schema), and the file's identity. """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        writer = self._connect(self.busy_timeout_ms)
        try:
            new = writer.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
            if new:
                writer.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("memwatch history: %s is not in WAL mode (%s)", self.path, mode)
            writer.execute("PRAGMA synchronous = NORMAL")
            writer.execute("PRAGMA journal_size_limit = 4194304")
            writer.executescript(_SCHEMA)
            writer.commit()
            reader = self._connect(200)
            reader.execute("PRAGMA query_only = ON")
        except BaseException:
            writer.close()
            raise
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        return writer, reader, self._file_identity()

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _connect(self, busy_timeout_ms: int) -> sqlite3.Connection:
        # check_same_thread=False: the reader is used from the IOLoop and from
        # tests' threads (serialized by _read_lock); the writer only by its thread.
        connection = sqlite3.connect(self.path, timeout=busy_timeout_ms / 1000, check_same_thread=False,
                                     isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        return connection

    def close(self, timeout_s: float = 5.0) -> None:
        """ Write what is queued, stop the thread, close (idempotent). """
        if self._pid != os.getpid():
            return
        self._closed = True
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout_s)
            except queue.Full:
                log.warning("memwatch history: writer is stuck; closing without it")
            thread.join(timeout_s)
        self._drop_connections()

    @property
    def is_open(self) -> bool:
        return self._writer is not None and self._pid == os.getpid()

    # -- a file that went away or went bad ----------------------------------------

    def _check_file(self) -> None:
        """ On the writer's thread, before a write: reopen when the path no
        longer names the file we opened, or a read found it corrupt; retry an
        unusable one every ``retry_s``. """
        if self._closed:
            return
        if self._writer is None:
            if self._clock() - self._last_attempt >= self.retry_s:
                self._reopen(None)
            return
        if self._corrupt_read is not None:
            reason, self._corrupt_read = self._corrupt_read, None
            self._recover_corrupt(reason)
            return
        identity = self._file_identity()
        if identity != self._identity:
            what = "deleted" if identity is None else "replaced"
            log.warning("memwatch history: %s was %s while in use; reopening it", self.path, what)
            self._reopen(f"{self.path} was {what}")

    def _recover_corrupt(self, reason: str) -> None:
        """ Move a corrupt file (and its WAL) aside, start a new one. """
        log.warning("memwatch history: %s is corrupt (%s); moving it to %s.corrupt and starting a new one",
                    self.path, reason, self.path)
        ours = self._file_identity() == self._identity
        self._drop_connections()
        if ours:  # else another worker moved it already
            self._move_aside()
        self._reopen(f"{self.path} was corrupt: {reason}")

    def _move_aside(self) -> None:
        """ Keep a corrupt file (and its WAL) as ``history.sqlite3.corrupt``,
        replacing an earlier one. """
        for suffix in ("", *_SIDE_FILES):
            with contextlib.suppress(OSError):
                os.replace(self.path + suffix, f"{self.path}.corrupt{suffix}")

    def _drop_connections(self) -> None:
        writer, reader = self._writer, self._reader
        with self._read_lock:
            self._writer = self._reader = None
        for connection in (writer, reader):
            if connection is not None:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()

    def _reopen(self, reason: str | None) -> None:
        self._last_attempt = self._clock()
        if reason is not None:  # what state() says meanwhile: no connection, but why
            self.error = f"reopening: {reason}"
        self._drop_connections()
        try:
            self._install_connections()
        except (OSError, sqlite3.Error) as e:
            if _is_corrupt(e) and os.path.exists(self.path):
                self._corrupt_file_at_open(str(e))
                return
            self._set_error(f"cannot reopen {self.path}: {type(e).__name__}: {e}", warn=True)
            return
        if reason is not None:
            log.info("memwatch history: reopened %s (%s)", self.path, reason)

    def _corrupt_file_at_open(self, reason: str) -> None:
        log.warning("memwatch history: %s is not a usable database (%s); moving it to %s.corrupt",
                    self.path, reason, self.path)
        self._move_aside()
        try:
            self._install_connections()
        except (OSError, sqlite3.Error) as e:
            self._set_error(f"cannot reopen {self.path}: {type(e).__name__}: {e}", warn=True)

    def _install_connections(self) -> None:
        """ Open the file anew and use it (a reopen that worked).

        Raises:
            OSError, sqlite3.Error: from opening it; nothing changed then.
        """
        writer, reader, identity = self._open_connections()
        with self._read_lock:
            self._writer, self._reader, self._identity = writer, reader, identity
        self.reopened += 1
        self._errors_in_row = 0
        self.error = None

    def _set_error(self, error: str, *, warn: bool) -> None:
        if warn and error != self.error:
            log.warning("memwatch history: %s; history is kept in memory only until it works again "
                        "(retried every %g s)", error, self.retry_s)
        self.error = error

    # -- writing --------------------------------------------------------------------

    def submit(self, sample: Mapping[str, Any]) -> bool:
        """ Queue one sample (``t``, process fields, ``apps``) for writing;
        never blocks.  False when it was dropped. """
        if self._pid != os.getpid() or self._closed:
            return False
        if self._thread is None:
            self.write(sample)
            return True
        try:
            self._queue.put_nowait(sample)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def write(self, sample: Mapping[str, Any]) -> None:
        """ Write one sample now (on the calling thread: the writer's). """
        if self._pid is None:
            return
        self._check_file()
        writer = self._writer
        if writer is None:  # unusable (state() says why); retried in _check_file
            return
        started = time.perf_counter()
        try:
            data = json.dumps(_finite(dict(sample)), separators=(",", ":"), allow_nan=False, default=str)
            writer.execute(
                "INSERT INTO samples (server, pid, t, data) VALUES (?, ?, ?, ?)",
                (self.server, os.getpid(), float(sample["t"]), data),
            )
            self.written += 1
            if self.error is not None:
                log.warning("memwatch history: writing to %s works again", self.path)
            self._errors_in_row = 0
            self.error = None
            if self._clock() - self._last_prune >= self.prune_every_s:
                self._prune()
        except sqlite3.Error as e:
            self._write_failed(e)
        except (ValueError, TypeError, KeyError):
            self.write_errors += 1
            log.debug("memwatch history: a sample could not be encoded", exc_info=True)
        finally:
            self._write_us.append((time.perf_counter() - started) * 1e6)

    def _write_failed(self, e: sqlite3.Error) -> None:
        self.write_errors += 1
        self._errors_in_row += 1
        if _is_corrupt(e):
            self._recover_corrupt(str(e))
            return
        log_fn = log.warning if self._errors_in_row == 1 else log.debug
        log_fn("memwatch history: could not write a sample to %s: %s", self.path, e)
        if self._errors_in_row >= FAILING_AFTER:
            self._set_error(f"{self._errors_in_row} writes in a row failed: {type(e).__name__}: {e}", warn=True)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self.write(item)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 5.0) -> bool:
        """ Wait until the queue is empty (tests). """
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and self._thread is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _prune(self) -> None:
        """ Delete rows older than ``max_age_s``, then the oldest rows until
        the file is under ``max_bytes``; give freed pages back. """
        writer = self._writer
        if writer is None:
            return
        self._last_prune = self._clock()
        deleted = writer.execute("DELETE FROM samples WHERE t < ?", (self._clock() - self.max_age_s,)).rowcount
        for _ in range(20):
            if self.size_bytes() <= self.max_bytes:
                break
            rows = writer.execute("SELECT count(*) FROM samples").fetchone()[0]
            if rows == 0:
                break
            deleted += writer.execute(
                "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples ORDER BY t LIMIT ?)",
                (max(1, rows // 10),),
            ).rowcount
            writer.execute("PRAGMA incremental_vacuum")
        if deleted > 0:
            writer.execute("PRAGMA incremental_vacuum")
            self.pruned += deleted

    def size_bytes(self) -> int:
        """ Pages in use times the page size (the main file, without the WAL). """
        writer = self._writer
        if writer is None:
            return 0
        return _used_bytes(writer)

    # -- reading --------------------------------------------------------------------

    def _read(self, sql: str, args: Iterable[Any]) -> list[tuple[Any, ...]]:
        reader = self._reader
        if reader is None or self._pid != os.getpid():
            return []
        with self._read_lock:
            reader = self._reader  # the writer's thread may have reopened it
            if reader is None:
                return []
            try:
                return list(reader.execute(sql, tuple(args)).fetchall())
            except sqlite3.Error as e:
                log.debug("memwatch history: read failed", exc_info=True)
                if _is_corrupt(e):
                    self._corrupt_read = str(e)  # the writer's thread recovers
                    self._set_error(f"{self.path} is corrupt: {e}", warn=False)
                return []

    def query(
        self, *, since: float | None = None, limit: int | None = None, pid: int | None = None,
        exclude_pid_from: tuple[int, float] | None = None,
    ) -> list[dict[str, Any]]:
        """ This server's samples with ``t > since``, oldest first, the newest
        ``limit``, each with its ``pid``.  ``exclude_pid_from=(pid, t0)``
        leaves out that process's samples from ``t0`` on (the caller has
        them in memory). """
        sql, args = select_samples(self.server, since=since, limit=limit, pid=pid,
                                   exclude_pid_from=exclude_pid_from)
        rows = self._read(sql, args)
        out: list[dict[str, Any]] = []
        for row_pid, data in reversed(rows):
            sample = _decode(data)
            if sample is not None:
                sample["pid"] = int(row_pid)
                out.append(sample)
        return out

    def _read_size(self) -> int:
        reader = self._reader
        if reader is None or self._pid != os.getpid():
            return 0
        with self._read_lock:
            reader = self._reader
            if reader is None:
                return 0
            try:
                return _used_bytes(reader)
            except sqlite3.Error:
                return 0

    def latest_per_pid(self, *, since: float) -> dict[int, dict[str, Any]]:
        """ Per process of this server with a sample after ``since``: its
        newest sample. """
        rows = self._read(*select_latest_per_pid(self.server, since=since))
        out: dict[int, dict[str, Any]] = {}
        for row_pid, data, _t in rows:
            sample = _decode(data)
            if sample is not None:
                sample["pid"] = int(row_pid)
                out[int(row_pid)] = sample
        return out

    # -- state --------------------------------------------------------------------------

    def write_cost_us(self) -> dict[str, float | None]:
        """ Median and max time of the last writes, in microseconds. """
        costs = list(self._write_us)
        if not costs:
            return {"median": None, "max": None}
        return {"median": round(statistics.median(costs), 1), "max": round(max(costs), 1)}

    def state(self) -> dict[str, Any]:
        cost = self.write_cost_us()
        return {
            "enabled": self.is_open and self.error is None,
            "error": self.error,
            "reopened": self.reopened,
            "path": self.path,
            "server": self.server,
            "max_age_s": self.max_age_s,
            "max_bytes": self.max_bytes,
            "size_bytes": self._read_size(),
            "written": self.written,
            "dropped": self.dropped,
            "write_errors": self.write_errors,
            "queued": self._queue.qsize(),
            "write_us_median": cost["median"],
            "write_us_max": cost["max"],
        }


def select_samples(
    server: str, *, since: float | None = None, limit: int | None = None, pid: int | None = None,
    exclude_pid_from: tuple[int, float] | None = None,
) -> tuple[str, list[Any]]:
    """ SQL and arguments of :meth:`HistoryDB.query`: a backward range search
    of ``(server, t)`` (or ``(server, pid, t)`` for one pid) that stops after
    ``limit`` rows. """
    where = ["server = ?"]
    args: list[Any] = [server]
    if pid is not None:
        where.append("pid = ?")
        args.append(pid)
    if since is not None:
        where.append("t > ?")
        args.append(since)
    if exclude_pid_from is not None:
        where.append("NOT (pid = ? AND t >= ?)")
        args.extend(exclude_pid_from)
    sql = f"SELECT pid, data FROM samples WHERE {' AND '.join(where)} ORDER BY t DESC, pid"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(max(0, limit))
    return sql, args


def select_latest_per_pid(server: str, *, since: float) -> tuple[str, list[Any]]:
    """ SQL and arguments of :meth:`HistoryDB.latest_per_pid`: one range
    search of ``(server, t)`` over the window; SQLite takes ``pid`` and
    ``data`` from the row holding ``max(t)`` of each group. """
    # INDEXED BY: else the planner walks (server, pid, t) to skip the GROUP BY
    # sort, which reads every row of the server.
    return ("SELECT pid, data, max(t) FROM samples INDEXED BY samples_server_t"
            " WHERE server = ? AND t > ? GROUP BY pid", [server, since])


def _is_corrupt(e: BaseException) -> bool:
    """ SQLITE_CORRUPT or SQLITE_NOTADB (by code where Python gives it, 3.11+). """
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (11, 26)
    text = str(e).lower()
    return "malformed" in text or "not a database" in text


def _used_bytes(connection: sqlite3.Connection) -> int:
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    free = connection.execute("PRAGMA freelist_count").fetchone()[0]
    size = connection.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _decode(data: str) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
