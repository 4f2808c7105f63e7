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

The fork policy (:func:`fork_policy`, consulted before every job, for every
caller of :class:`HeapWorker` and :func:`run_isolated`): a native thread pool
can make ``os.fork()`` itself hang, in the server, holding the GIL.
OpenBLAS's pre-fork handler (``blas_thread_shutdown_``, registered with
``pthread_atfork``) joins its worker threads; when another thread is in a
BLAS call at that moment a worker can miss its wake-up and sleep forever,
and with it ``fork()`` and the whole server.  Telling the pool to use one
thread (``threadpoolctl.threadpool_limits(1)``) does not help: the workers
exist and are joined all the same (see ``bench/fork_blas.py``).  So before
each job the loaded pools are listed with threadpoolctl; when one is unsafe
across fork the ``heap_fork`` mode decides: ``"auto"`` runs the job in a
thread, ``"refuse"`` raises :class:`ForkRefused` (a 409 that says why and how
to fix it: ``OPENBLAS_NUM_THREADS=1``), ``"force"`` forks anyway; ``"never"``
always uses a thread.

The child runs no app code of its own accord: the garbage collector is off
and ``gc.collect`` does nothing there (no finalizer or weakref callback of
pending garbage runs), the parent's threads stay referenced across the fork,
inherited descriptors other than the answer pipe and stdio are closed, and
the parent's signal handlers are reset.  What Python itself runs in a child
is beyond reach: callbacks registered with ``os.register_at_fork`` and the
clearing of other threads' thread states (their thread-local data).

This module imports neither tornado nor bokeh.

Over 400 lines: one lifecycle (the fork policy, the child's protocol, timeouts
and reaping, the thread fallback, what each run cost) that every heap job goes
through; its parts are only meaningful together.
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

from ..saferepr import describe_exception

log = logging.getLogger(__name__)

__all__ = (
    "FORK_MODES",
    "ForkPlan",
    "ForkRefused",
    "HeapWorkBusy",
    "HeapWorkError",
    "HeapWorkTimeout",
    "HeapWorker",
    "IsolatedResult",
    "Rendered",
    "fork_policy",
    "run_isolated",
)

#: Anything ``json.dumps`` accepts; it comes back as ``json.loads`` gives it
#: (tuples become lists, dict keys become strings).
JSONValue = Any

Technique = Literal["fork", "thread"]

ForkMode = Literal["auto", "refuse", "force", "never"]

#: The ``heap_fork`` modes; see the module docstring.
FORK_MODES: tuple[ForkMode, ...] = ("auto", "refuse", "force", "never")

#: How to make forking safe again, for messages.
_FORK_ADVICE = (
    "start the server with OPENBLAS_NUM_THREADS=1 (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1 for "
    "those pools), or set heap_fork to 'force' (--memwatch-heap-fork force, "
    "BOKEH_MEMWATCH_HEAP_FORK=force) to fork anyway at the risk of freezing the server"
)

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


class ForkRefused(HeapWorkError):
    """ The fork policy will not fork here and may not use a thread instead
    (``heap_fork="refuse"``, or ``use_fork=True`` asked for a fork).  The
    message says which pool and how to fix it; ``plan`` is the decision. """

    def __init__(self, message: str, *, plan: ForkPlan) -> None:
        super().__init__(message)
        self.plan = plan


@dataclass(frozen=True)
class ForkPlan:
    """ How the next heap job runs, decided by :func:`fork_policy`.

    Attributes:
        technique: ``"fork"`` or ``"thread"``.
        mode: the ``heap_fork`` mode that decided.
        refused: why a fork was not made (``None`` when forking or when the
            thread was asked for): the unsafe pools, or no ``os.fork``.
        refuse: true when the job must not run at all (:class:`ForkRefused`).
        unsafe_pools: ``"name (N threads)"`` of each pool unsafe across fork,
            also when ``"force"`` forked over them.
        inspect_s: time spent listing the pools (on the calling thread).
    """

    technique: Technique
    mode: ForkMode = "auto"
    refused: str | None = None
    refuse: bool = False
    unsafe_pools: tuple[str, ...] = ()
    inspect_s: float = 0.0

    def describe(self) -> dict[str, Any]:
        """ The policy's part of an API answer. """
        return {
            "mode": self.mode,
            "refused": self.refused,
            "unsafe_pools": list(self.unsafe_pools),
            "inspect_ms": round(self.inspect_s * 1000, 3),
        }


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
        plan: the fork policy's decision (why a thread ran, say).
    """

    value: JSONValue
    technique: Technique
    elapsed_s: float
    child_peak_rss_bytes: int | None
    child_private_bytes: int | None = None
    fork_s: float | None = None
    body: bytes | None = None
    plan: ForkPlan | None = None

    def costs(self) -> dict[str, Any]:
        """ What the job cost, for an API answer. """
        return {
            "technique": self.technique,
            "fork_policy": self.plan.describe() if self.plan is not None else None,
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
    fork_mode: ForkMode = "auto",
) -> IsolatedResult:
    """ Run ``fn()`` away from the event loop and return its JSON-able result.

    Args:
        fn: takes no arguments and returns JSON-serialisable data.  In a
            forked child it sees the heap as it was at the fork; it must not
            log, do I/O on inherited sockets, or take locks other threads may
            have held at the fork.
        timeout_s: wall-clock limit.  A forked child is then killed
            (SIGKILL) and reaped; a thread is abandoned (it cannot be killed).
        use_fork: ``None`` forks where ``os.fork`` exists and
            :func:`fork_policy` finds it safe; ``False`` forces the thread
            fallback; ``True`` asks for a fork (refused when unsafe, unless
            ``fork_mode="force"``).
        fork_mode: the ``heap_fork`` mode (see :data:`FORK_MODES`).

    Raises:
        ForkRefused: the policy will not fork and may not use a thread.
        HeapWorkTimeout: out of time.
        HeapWorkError: ``fn`` raised (the message names the exception type
            and message), its result was not JSON-serialisable, or the child
            died.
    """
    plan = fork_policy(fork_mode, use_fork=use_fork)
    return await _run(fn, timeout_s=timeout_s, plan=plan, on_thread_done=None)


class HeapWorker:
    """ Runs at most ``max_concurrent`` heavy jobs at a time.

    Hold one per server; use it from the server's event loop only.  A job
    over the limit is refused with :class:`HeapWorkBusy` rather than queued,
    so that a client can be told to retry.  A timed-out thread job keeps its
    slot until the thread really finishes.
    """

    def __init__(
        self, max_concurrent: int = 1, *, use_fork: bool | None = None, fork_mode: ForkMode = "auto",
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {max_concurrent!r}")
        if fork_mode not in FORK_MODES:
            raise ValueError(f"fork_mode must be one of {', '.join(FORK_MODES)}, not {fork_mode!r}")
        self._max_concurrent = max_concurrent
        self._use_fork = use_fork
        self._fork_mode: ForkMode = fork_mode
        self._running = 0

    @property
    def fork_mode(self) -> ForkMode:
        return self._fork_mode

    def plan(self) -> ForkPlan:
        """ How a job started now would run (:func:`fork_policy`); pass it to
        :meth:`run` when the caller prepares the job differently for a fork. """
        return fork_policy(self._fork_mode, use_fork=self._use_fork)

    @property
    def forks(self) -> bool:
        """ True when a job started now would run in a forked child. """
        return self.plan().technique == "fork"

    @property
    def busy(self) -> bool:
        """ True when a new job would be refused. """
        return self._running >= self._max_concurrent

    @property
    def running(self) -> int:
        """ Jobs (or abandoned threads) still running. """
        return self._running

    async def run(
        self, fn: Callable[[], JSONValue], *, timeout_s: float, plan: ForkPlan | None = None,
    ) -> IsolatedResult:
        """ :func:`run_isolated` within this worker's limit and fork policy.

        Args:
            plan: from :meth:`plan`, when the caller needed to know the
                technique beforehand; else decided here.

        Raises:
            HeapWorkBusy: the limit is reached.
            ForkRefused: the policy refuses (``fork_mode="refuse"``).
        """
        _check_timeout(timeout_s)
        if plan is None:
            plan = self.plan()
        if plan.refuse:
            raise _refusal(plan)
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
            return await _run(fn, timeout_s=timeout_s, plan=plan, on_thread_done=hand_over)
        finally:
            if not thread_owns_slot:
                release()


# --- implementation --------------------------------------------------------


def fork_policy(mode: ForkMode = "auto", *, use_fork: bool | None = None) -> ForkPlan:
    """ Decide how a heap job runs now: fork, thread, or refuse.

    Lists the native thread pools loaded in this process with threadpoolctl
    (``threadpool_info``: a walk of the loaded libraries, ~0.3 ms; run it on
    the event loop just before the job, since a pool may be loaded at any
    time) and finds those unsafe across ``fork`` (:func:`_unsafe_pools`).

    Args:
        mode: ``"auto"``: fork when safe, else a thread; ``"refuse"``: fork
            when safe, else refuse; ``"force"``: always fork; ``"never"``:
            always a thread.
        use_fork: ``False`` asks for a thread, ``True`` for a fork (refused
            when unsafe unless ``mode="force"``), ``None`` lets ``mode`` decide.

    Raises:
        ValueError: an unknown mode, or ``use_fork=True`` without ``os.fork``.
    """
    if mode not in FORK_MODES:
        raise ValueError(f"heap_fork must be one of {', '.join(FORK_MODES)}, not {mode!r}")
    can_fork = hasattr(os, "fork")
    if use_fork and not can_fork:
        raise ValueError("use_fork=True but os.fork is not available here")
    if use_fork is False:
        return ForkPlan("thread", mode)
    if not can_fork:
        return ForkPlan("thread", mode, refused="os.fork is not available here")
    if mode == "never":
        return ForkPlan("thread", mode, refused="heap_fork is 'never'")
    started_s = time.perf_counter()
    pools, why = _unsafe_pools()
    inspect_s = time.perf_counter() - started_s
    if why is None:
        return ForkPlan("fork", mode, inspect_s=inspect_s)
    if mode == "force":
        return ForkPlan("fork", mode, unsafe_pools=pools, inspect_s=inspect_s)
    refuse = mode == "refuse" or use_fork is True
    return ForkPlan("thread", mode, refused=why, refuse=refuse, unsafe_pools=pools, inspect_s=inspect_s)


def _unsafe_pools() -> tuple[tuple[str, ...], str | None]:
    """ ``(pools, why)``: the loaded native thread pools unsafe across fork.

    Unsafe: more than one thread in an OpenBLAS pthreads pool (its pre-fork
    handler joins the workers: a hang when another thread is in BLAS), an
    Intel or LLVM OpenMP runtime (``libiomp``, ``libomp``: their pre-fork
    handler takes runtime locks a parallel region in another thread holds),
    MKL other than sequential, and any pool threadpoolctl reports that is
    not known to be safe.  Safe: one-thread pools (no workers to join) and
    GNU OpenMP (``libgomp`` has no pre-fork handler; the child never runs
    OpenMP code).  ``why`` is ``None`` when forking is safe.
    """
    try:
        from threadpoolctl import threadpool_info

        infos = threadpool_info()
    except Exception as e:  # cannot tell: do not bet the server on it
        return (), f"could not list native thread pools ({describe_exception(e, limit=200)})"
    unsafe: list[str] = []
    for info in infos:
        threads = info.get("num_threads")
        api = str(info.get("internal_api") or "?")
        prefix = str(info.get("prefix") or api)
        layer = str(info.get("threading_layer") or "")
        if not isinstance(threads, int) or threads <= 1:
            continue
        if api == "openmp" and prefix.startswith("libgomp"):
            continue
        if api in ("openblas", "blis") and layer in ("openmp", "disabled"):
            continue  # the OpenMP runtime's own entry decides
        if api == "mkl" and layer == "sequential":
            continue
        unsafe.append(f"{prefix} ({api}{', ' + layer if layer else ''}, {threads} threads)")
    if not unsafe:
        return (), None
    why = (
        f"not forking: native thread pool(s) unsafe across fork: {'; '.join(unsafe)}. "
        "A pre-fork handler can wait forever for a worker while another thread computes, "
        f"freezing the server. To fork: {_FORK_ADVICE}"
    )
    return tuple(unsafe), why


def _refusal(plan: ForkPlan) -> ForkRefused:
    return ForkRefused(plan.refused or "the fork policy refused to fork", plan=plan)


async def _run(
    fn: Callable[[], JSONValue],
    *,
    timeout_s: float,
    plan: ForkPlan,
    on_thread_done: Callable[[], Callable[[], None]] | None,
) -> IsolatedResult:
    _check_timeout(timeout_s)
    if plan.refuse:
        raise _refusal(plan)
    if plan.technique == "fork":
        return await _run_forked(fn, timeout_s, plan)
    return await _run_threaded(fn, timeout_s, on_thread_done, plan)


def _check_timeout(timeout_s: float) -> None:
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a positive number of seconds, not {timeout_s!r}")


async def _run_forked(fn: Callable[[], JSONValue], timeout_s: float, plan: ForkPlan) -> IsolatedResult:
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    started_s = time.monotonic()
    # After the fork, the child's ``threading`` forgets every other thread;
    # this reference keeps their Thread objects (and what they hold) from
    # being freed, and finalized, in the child.
    threads = threading.enumerate()
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
    del threads
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
        plan=plan,
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
        gc.collect = _no_collection  # nor through a library's explicit gc.collect()
        _quiet_child_signals()
        _close_inherited_fds(keep=write_fd)
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


def _no_collection(generation: int = 2) -> int:  # pragma: no cover - the child's gc.collect
    """ ``gc.collect`` in a heap worker child: collects nothing, so no
    finalizer or weakref callback of the app's pending garbage runs there. """
    return 0


def _close_inherited_fds(keep: int) -> None:  # pragma: no cover - runs in the child
    """ Close every inherited descriptor but stdio and ``keep`` (the answer
    pipe): the child cannot write to a client's socket, a log file or a
    database by mistake.  (The parent's copies stay open.) """
    os.closerange(3, keep)
    os.closerange(keep + 1, _max_fd())


def _max_fd() -> int:  # pragma: no cover - runs in the child
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        soft = -1
    return soft if 0 < soft < 1 << 20 else 1 << 16


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
    plan: ForkPlan,
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
        plan=plan,
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
