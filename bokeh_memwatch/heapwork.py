""" Run heavy heap work (a reference-chain search, a full heap walk) without
freezing the server's event loop.

The preferred technique is ``os.fork()``: the child gets a copy-on-write
snapshot of the heap, runs the job with the garbage collector disabled,
sends a JSON answer down a pipe and leaves with ``os._exit``; the parent
keeps serving and only waits on the pipe.  The child never returns into the
parent's code, never logs and never flushes inherited stdio.

Where ``os.fork`` is missing (or ``use_fork=False``) the job runs in a worker
thread instead: slower, and it still contends for the GIL with the event
loop, so the server stays responsive but sluggish while it runs.

This module imports neither tornado nor bokeh.
"""
from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from .saferepr import describe_exception

log = logging.getLogger(__name__)

__all__ = (
    "HeapWorkBusy",
    "HeapWorkError",
    "HeapWorkTimeout",
    "HeapWorker",
    "IsolatedResult",
    "Rendered",
    "run_isolated",
)

#: Anything ``json.dumps`` accepts; it comes back as ``json.loads`` gives it
#: (tuples become lists, dict keys become strings).
JSONValue = Any

Technique = Literal["fork", "thread"]

#: Longest error message sent back from a failed job.
_MAX_ERROR_CHARS = 2000

#: Pipe read size.
_READ_CHUNK_BYTES = 1 << 16

#: Back-off while waiting for a child that closed its pipe to be reapable.
_REAP_POLL_MIN_S = 0.0005
_REAP_POLL_MAX_S = 0.02

#: Signals whose (Python) handlers a child must not run: they belong to the
#: parent's event loop, and some write to sockets the child shares with it.
_CHILD_DEFAULT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name)
)


class HeapWorkError(RuntimeError):
    """ The job raised, or its worker died; the message says how. """


class HeapWorkTimeout(HeapWorkError):
    """ The job ran out of time.  A forked child has been killed and reaped
    (``pid``); a worker thread cannot be killed and finishes in the
    background (``pid`` is ``None``).
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class HeapWorkBusy(HeapWorkError):
    """ A :class:`HeapWorker` is already running as many jobs as it may. """


@dataclass(frozen=True)
class Rendered:
    """ A job's answer in two parts: ``meta``, small, which the parent
    decodes, and ``body``, a JSON document the job has already encoded and
    the parent passes on as bytes without decoding it.

    Under tracemalloc every allocation records a traceback; with 25 frames,
    decoding and re-encoding a 40 KB answer on the event loop takes over
    100 ms.  Passing the body through costs the loop a few allocations.
    """

    meta: JSONValue
    body: bytes


@dataclass(frozen=True)
class IsolatedResult:
    """ What a job returned and what it cost.

    Attributes:
        value: the job's return value after a JSON round trip.
        technique: ``"fork"`` or ``"thread"``.
        elapsed_s: wall time from before the fork (or thread start) until
            the answer was in and the child reaped.
        child_peak_rss_bytes: the child's ``VmHWM``.  It starts at the
            parent's RSS at the moment of the fork (copy-on-write pages are
            counted), so it is an upper bound, not the extra memory used.
            ``None`` for threads or without ``/proc``.
        child_private_bytes: the child's private (copied or new) memory just
            before it exited, from ``/proc/self/smaps_rollup``: what the fork
            really cost.  ``None`` when unavailable.
        fork_s: how long ``os.fork()`` held the calling thread (and the GIL)
            while the kernel copied the page tables: the part of the job the
            event loop cannot overlap.  ``None`` for threads.
        body: the encoded body of a :class:`Rendered` answer (``value`` is
            then its ``meta``), else ``None``.
    """

    value: JSONValue
    technique: Technique
    elapsed_s: float
    child_peak_rss_bytes: int | None
    child_private_bytes: int | None = None
    fork_s: float | None = None
    body: bytes | None = None

    def costs(self) -> dict[str, Any]:
        """ What the job cost, for an API answer. """
        return {
            "technique": self.technique,
            "elapsed_s": round(self.elapsed_s, 3),
            "fork_ms": None if self.fork_s is None else round(self.fork_s * 1000, 3),
            "worker_private_bytes": self.child_private_bytes,
            "worker_peak_rss_bytes": self.child_peak_rss_bytes,
        }


async def run_isolated(
    fn: Callable[[], JSONValue],
    *,
    timeout_s: float,
    use_fork: bool | None = None,
) -> IsolatedResult:
    """ Run ``fn()`` away from the event loop and return its JSON-able result.

    Args:
        fn: takes no arguments and returns JSON-serialisable data.  In a
            forked child it sees the heap as it was at the fork; it must not
            log, do I/O on inherited sockets, or take locks other threads may
            have held at the fork.
        timeout_s: wall-clock limit.  A forked child is then killed
            (SIGKILL) and reaped; a thread is abandoned (it cannot be killed).
        use_fork: ``None`` forks where ``os.fork`` exists; ``False`` forces
            the thread fallback.

    Raises:
        HeapWorkTimeout: out of time.
        HeapWorkError: ``fn`` raised (the message names the exception type
            and message), its result was not JSON-serialisable, or the child
            died.
    """
    return await _run(fn, timeout_s=timeout_s, use_fork=use_fork, on_thread_done=None)


class HeapWorker:
    """ Runs at most ``max_concurrent`` heavy jobs at a time.

    Hold one per server; use it from the server's event loop only.  A job
    over the limit is refused with :class:`HeapWorkBusy` rather than queued,
    so that a client can be told to retry.  A timed-out thread job keeps its
    slot until the thread really finishes.
    """

    def __init__(self, max_concurrent: int = 1, *, use_fork: bool | None = None) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent!r}")
        self._max_concurrent = max_concurrent
        self._use_fork = use_fork
        self._running = 0

    @property
    def forks(self) -> bool:
        """ True when jobs run in a forked child (else in a thread). """
        return self._use_fork if self._use_fork is not None else hasattr(os, "fork")

    @property
    def busy(self) -> bool:
        """ True when a new job would be refused. """
        return self._running >= self._max_concurrent

    @property
    def running(self) -> int:
        """ Jobs (or abandoned threads) still running. """
        return self._running

    async def run(self, fn: Callable[[], JSONValue], *, timeout_s: float) -> IsolatedResult:
        """ :func:`run_isolated` within this worker's limit.

        Raises:
            HeapWorkBusy: the limit is reached.
        """
        _check_timeout(timeout_s)
        if self.busy:
            raise HeapWorkBusy(f"{self._running} heap job(s) already running")
        self._running += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._running -= 1

        thread_owns_slot = False

        def hand_over() -> Callable[[], None]:
            nonlocal thread_owns_slot
            thread_owns_slot = True
            return release

        try:
            return await _run(
                fn, timeout_s=timeout_s, use_fork=self._use_fork, on_thread_done=hand_over,
            )
        finally:
            if not thread_owns_slot:
                release()


# --- implementation --------------------------------------------------------


async def _run(
    fn: Callable[[], JSONValue],
    *,
    timeout_s: float,
    use_fork: bool | None,
    on_thread_done: Callable[[], Callable[[], None]] | None,
) -> IsolatedResult:
    _check_timeout(timeout_s)
    can_fork = hasattr(os, "fork")
    if use_fork is None:
        use_fork = can_fork
    if use_fork and not can_fork:
        raise ValueError("use_fork=True but os.fork is not available here")
    if use_fork:
        return await _run_forked(fn, timeout_s)
    return await _run_threaded(fn, timeout_s, on_thread_done)


def _check_timeout(timeout_s: float) -> None:
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")


async def _run_forked(fn: Callable[[], JSONValue], timeout_s: float) -> IsolatedResult:
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    started_s = time.monotonic()
    try:
        with warnings.catch_warnings():
            # 3.12+: "This process is multi-threaded, use of fork() may lead
            # to deadlocks in the child."  The child only runs ``fn``.
            warnings.simplefilter("ignore", DeprecationWarning)
            fork_started_s = time.perf_counter()
            pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # pragma: no cover - the child; coverage cannot see it
        _child_main(fn, read_fd, write_fd)
    fork_s = time.perf_counter() - fork_started_s
    os.close(write_fd)
    reaped = False
    try:
        os.set_blocking(read_fd, False)
        try:
            payload, status = await asyncio.wait_for(
                _collect_child(loop, read_fd, pid), timeout_s,
            )
        except asyncio.TimeoutError:
            _kill_and_reap(pid)
            reaped = True
            raise HeapWorkTimeout(
                f"heap job in child {pid} timed out after {timeout_s:g} s; killed", pid=pid,
            ) from None
        reaped = True
    finally:
        if not reaped:  # cancelled or failed: never leave a child behind
            _kill_and_reap(pid)
        os.close(read_fd)
    elapsed_s = time.monotonic() - started_s
    # The answer is one JSON line (no raw newline: json.dumps escapes them),
    # then, for a Rendered answer, its body.
    head, _, body = payload.partition(b"\n")
    message = _decode_child_message(head, status, pid)
    return IsolatedResult(
        value=message.get("value"),
        technique="fork",
        elapsed_s=elapsed_s,
        child_peak_rss_bytes=_int_or_none(message.get("peak_rss_bytes")),
        child_private_bytes=_int_or_none(message.get("private_bytes")),
        fork_s=fork_s,
        body=body if message.get("rendered") else None,
    )


async def _collect_child(
    loop: asyncio.AbstractEventLoop, read_fd: int, pid: int,
) -> tuple[bytes, int]:
    """ Read the pipe to EOF without blocking the loop, then reap the child. """
    done: asyncio.Future[bytes] = loop.create_future()
    chunks: list[bytes] = []

    def on_readable() -> None:
        try:
            data = os.read(read_fd, _READ_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            loop.remove_reader(read_fd)
            if not done.done():
                done.set_exception(e)
            return
        if data:
            chunks.append(data)
            return
        loop.remove_reader(read_fd)
        if not done.done():
            done.set_result(b"".join(chunks))

    loop.add_reader(read_fd, on_readable)
    try:
        payload = await done
    finally:
        loop.remove_reader(read_fd)
    # EOF: the child is exiting (or has closed the pipe and is stuck, which
    # the caller's timeout covers).  Poll instead of a blocking waitpid.
    wait_s = _REAP_POLL_MIN_S
    while True:
        try:
            reaped_pid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else (a waitpid(-1) handler)
            return payload, 0
        if reaped_pid == pid:
            return payload, status
        await asyncio.sleep(wait_s)
        wait_s = min(wait_s * 2, _REAP_POLL_MAX_S)


def _kill_and_reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    # A SIGKILLed child is reapable almost at once.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _decode_child_message(payload: bytes, status: int, pid: int) -> dict[str, Any]:
    if not payload:
        if os.WIFSIGNALED(status):
            how = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with status {os.waitstatus_to_exitcode(status)}"
        raise HeapWorkError(f"heap job child {pid} {how} without an answer")
    try:
        message = json.loads(payload)
    except ValueError as e:
        raise HeapWorkError(f"heap job child {pid} sent an unreadable answer: {e}") from None
    if not isinstance(message, dict):
        raise HeapWorkError(f"heap job child {pid} sent an unreadable answer")
    if "error" in message:
        raise HeapWorkError(str(message["error"]))
    return message


def _child_main(fn: Callable[[], JSONValue], read_fd: int, write_fd: int) -> NoReturn:  # pragma: no cover
    """ The forked child: run ``fn``, send the answer, ``os._exit``. """
    exit_code = 0
    try:
        gc.disable()  # finalizers of garbage must not run here
        os.close(read_fd)
        _quiet_child_signals()
        message: dict[str, Any]
        body = b""
        try:
            value = fn()
            if isinstance(value, Rendered):
                message = {"value": value.meta, "rendered": True}
                body = value.body
            else:
                message = {"value": value}
        except BaseException as e:
            message = {"error": describe_exception(e, limit=_MAX_ERROR_CHARS)}
        message["peak_rss_bytes"] = _proc_kib_field("/proc/self/status", "VmHWM:")
        message["private_bytes"] = _private_bytes()
        try:
            data = json.dumps(message).encode() + b"\n" + body
        except (TypeError, ValueError) as e:
            data = json.dumps({"error": "the result is not JSON-serialisable: "
                               + describe_exception(e, limit=_MAX_ERROR_CHARS)}).encode()
        view = memoryview(data)
        while view:
            written = os.write(write_fd, view)
            view = view[written:]
    except BaseException:
        exit_code = 1
    finally:
        os._exit(exit_code)


def _quiet_child_signals() -> None:  # pragma: no cover - runs in the child
    for signum in _CHILD_DEFAULT_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)


async def _run_threaded(
    fn: Callable[[], JSONValue],
    timeout_s: float,
    on_thread_done: Callable[[], Callable[[], None]] | None,
) -> IsolatedResult:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[bool, Any]] = loop.create_future()
    finished = on_thread_done() if on_thread_done is not None else None

    def settle(outcome: tuple[bool, Any]) -> None:
        if not done.done():
            done.set_result(outcome)
        if finished is not None:
            finished()

    def work() -> None:
        outcome: tuple[bool, Any]
        try:
            value = fn()
            if isinstance(value, Rendered):
                outcome = (True, Rendered(json.loads(json.dumps(value.meta)), bytes(value.body)))
            else:
                outcome = (True, json.loads(json.dumps(value)))
        except BaseException as e:
            outcome = (False, describe_exception(e, limit=_MAX_ERROR_CHARS))
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, outcome)

    started_s = time.monotonic()
    thread = threading.Thread(target=work, name="memwatch-heapwork", daemon=True)
    try:
        thread.start()
    except BaseException:
        if finished is not None:
            finished()
        raise
    try:
        ok, payload = await asyncio.wait_for(asyncio.shield(done), timeout_s)
    except asyncio.TimeoutError:
        raise HeapWorkTimeout(
            f"heap job thread timed out after {timeout_s:g} s; it finishes in the background",
        ) from None
    if not ok:
        raise HeapWorkError(str(payload))
    rendered = isinstance(payload, Rendered)
    return IsolatedResult(
        value=payload.meta if rendered else payload,
        technique="thread",
        elapsed_s=time.monotonic() - started_s,
        child_peak_rss_bytes=None,
        body=payload.body if rendered else None,
    )


def _proc_kib_field(path: str, field_name: str) -> int | None:
    """ A ``kB`` field of a ``/proc`` file, in bytes. """
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(field_name.encode()):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _private_bytes() -> int | None:
    clean = _proc_kib_field("/proc/self/smaps_rollup", "Private_Clean:")
    dirty = _proc_kib_field("/proc/self/smaps_rollup", "Private_Dirty:")
    if clean is None or dirty is None:
        return None
    return clean + dirty


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
