""" Tests for bokeh_memwatch.heap.worker: real forks, real threads, a real loop. """
from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from bokeh_memwatch.heap.worker import (
    ForkRefused,
    HeapWorkBusy,
    HeapWorker,
    HeapWorkError,
    HeapWorkTimeout,
    IsolatedResult,
    Rendered,
    fork_policy,
    run_isolated,
)
from bokeh_memwatch.saferepr import json_array, json_lines, merge_json_objects, render_json

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

TECHNIQUES = [pytest.param(True, id="fork", marks=needs_fork), pytest.param(False, id="thread")]


def _spin(duration_s: float) -> int:
    """ Hold the CPU (and, in a thread, the GIL) for ``duration_s``. """
    end = time.monotonic() + duration_s
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def _busy(worker: HeapWorker) -> bool:
    """ Read ``busy`` afresh (mypy would narrow a repeated attribute read). """
    return worker.busy


def _spin_then(duration_s: float, value: str) -> str:
    _spin(duration_s)
    return value


def _boom() -> None:
    raise ValueError("boom: the heap is on fire")


def _child_pids() -> set[int]:
    pids: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except FileNotFoundError:  # the thread has gone
            continue
    return pids


def _assert_gone(pid: int) -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: not our child any more
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# --- results and errors -----------------------------------------------------


@pytest.mark.parametrize("use_fork", TECHNIQUES)
def test_value_round_trips(use_fork: bool) -> None:
    value = {"a": [1, 2.5, "x", None, True], "t": (1, 2), "nested": {"k": []}}
    result = asyncio.run(run_isolated(lambda: value, timeout_s=10.0, use_fork=use_fork))
    assert isinstance(result, IsolatedResult)
    assert result.value == {"a": [1, 2.5, "x", None, True], "t": [1, 2], "nested": {"k": []}}
    assert result.technique == ("fork" if use_fork else "thread")
    assert 0 <= result.elapsed_s < 5


@pytest.mark.parametrize("use_fork", TECHNIQUES)
def test_rendered_body_passes_through_undecoded(use_fork: bool) -> None:
    # The body holds newlines and bytes that are not one JSON value: the
    # parent must hand it over exactly as encoded, and decode only the meta.
    body = json_lines([{"n": i, "s": "a\nb"} for i in range(3)]) + b"\n\xff"
    result = asyncio.run(run_isolated(lambda: Rendered({"k": (1, 2)}, body), timeout_s=10.0, use_fork=use_fork))
    assert result.value == {"k": [1, 2]}
    assert result.body == body
    plain = asyncio.run(run_isolated(lambda: {"k": 1}, timeout_s=10.0, use_fork=use_fork))
    assert plain.body is None and plain.value == {"k": 1}
    costs = result.costs()
    assert costs["technique"] == ("fork" if use_fork else "thread")
    assert (costs["fork_ms"] is None) == (not use_fork)
    if use_fork:
        assert 0 <= costs["fork_ms"] < 5000


def test_json_splicing_helpers() -> None:
    lines = json_lines([{"a": 1}, {"b": "x\ny"}, {"c": [1, 2]}])
    assert json.loads(json_array(lines, 2)) == [{"a": 1}, {"b": "x\ny"}]
    assert json.loads(json_array(lines, 10)) == [{"a": 1}, {"b": "x\ny"}, {"c": [1, 2]}]
    assert json_array(b"", 5) == b"[]" and json_array(lines, 0) == b"[]"
    merged = merge_json_objects(render_json({"pid": 1}), render_json({"rows": [1], "s": "}"}))
    assert json.loads(merged) == {"pid": 1, "rows": [1], "s": "}"}
    assert json.loads(merge_json_objects(b"{}", b'{"a": 1}')) == {"a": 1}
    assert merge_json_objects(b'{"a": 1}', b" {} ") == b'{"a": 1}'
    with pytest.raises(ValueError):
        merge_json_objects(b'{"a": 1}', b"[1]")
    with pytest.raises(ValueError):
        render_json({"x": float("nan")})


@needs_fork
def test_fork_reports_child_memory_and_disables_gc() -> None:
    result = asyncio.run(run_isolated(gc.isenabled, timeout_s=10.0, use_fork=True))
    assert result.value is False
    assert gc.isenabled()
    if os.path.exists("/proc/self/status"):
        assert isinstance(result.child_peak_rss_bytes, int) and result.child_peak_rss_bytes > 0
    if os.path.exists("/proc/self/smaps_rollup"):
        assert isinstance(result.child_private_bytes, int) and result.child_private_bytes > 0


@needs_fork
def test_fork_sees_the_heap_as_it_was_and_changes_nothing_here() -> None:
    state = {"n": 1}

    def mutate() -> int:
        state["n"] += 41
        return state["n"]

    result = asyncio.run(run_isolated(mutate, timeout_s=10.0, use_fork=True))
    assert result.value == 42
    assert state == {"n": 1}


@pytest.mark.parametrize("use_fork", TECHNIQUES)
def test_exception_becomes_heap_work_error(use_fork: bool) -> None:
    with pytest.raises(HeapWorkError, match=r"^ValueError: boom: the heap is on fire$"):
        asyncio.run(run_isolated(_boom, timeout_s=10.0, use_fork=use_fork))


@pytest.mark.parametrize("use_fork", TECHNIQUES)
def test_unserialisable_result_is_an_error(use_fork: bool) -> None:
    with pytest.raises(HeapWorkError, match="not JSON serializable"):
        asyncio.run(run_isolated(object, timeout_s=10.0, use_fork=use_fork))


@needs_fork
def test_child_that_dies_is_an_error() -> None:
    with pytest.raises(HeapWorkError, match="exited with status 3 without an answer"):
        asyncio.run(run_isolated(lambda: os._exit(3), timeout_s=10.0, use_fork=True))


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_timeout(timeout_s: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        asyncio.run(run_isolated(dict, timeout_s=timeout_s))


# --- timeouts and cancellation ----------------------------------------------


@needs_fork
def test_timeout_kills_and_reaps_the_child() -> None:
    before = _child_pids()
    started = time.monotonic()
    with pytest.raises(HeapWorkTimeout) as info:
        asyncio.run(run_isolated(lambda: time.sleep(30), timeout_s=0.3, use_fork=True))
    assert time.monotonic() - started < 3
    pid = info.value.pid
    assert isinstance(pid, int) and pid > 0
    _assert_gone(pid)
    assert _child_pids() == before


@needs_fork
def test_cancelling_kills_and_reaps_the_child() -> None:
    before = _child_pids()

    async def main() -> set[int]:
        task = asyncio.create_task(run_isolated(lambda: time.sleep(30), timeout_s=60.0, use_fork=True))
        await asyncio.sleep(0.2)
        during = _child_pids() - before
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return during

    during = asyncio.run(main())
    assert len(during) == 1
    _assert_gone(during.pop())
    assert _child_pids() == before


def test_thread_timeout_keeps_the_worker_busy_until_the_thread_ends() -> None:
    async def main() -> None:
        worker = HeapWorker(max_concurrent=1, use_fork=False)
        with pytest.raises(HeapWorkTimeout) as info:
            await worker.run(lambda: _spin(0.5), timeout_s=0.1)
        assert info.value.pid is None
        assert _busy(worker)  # the thread still runs
        with pytest.raises(HeapWorkBusy):
            await worker.run(dict, timeout_s=1.0)
        for _ in range(200):  # bounded: at most 2 s
            if not _busy(worker):
                break
            await asyncio.sleep(0.01)
        assert not _busy(worker)
        assert (await worker.run(lambda: 7, timeout_s=1.0)).value == 7

    asyncio.run(main())


# --- the worker's limit -------------------------------------------------------


@pytest.mark.parametrize("use_fork", TECHNIQUES)
def test_worker_runs_one_job_at_a_time(use_fork: bool) -> None:
    async def main() -> None:
        worker = HeapWorker(max_concurrent=1, use_fork=use_fork)
        assert not _busy(worker)
        first = asyncio.create_task(worker.run(lambda: _spin_then(0.3, "first"), timeout_s=10.0))
        await asyncio.sleep(0.05)
        assert _busy(worker) and worker.running == 1
        with pytest.raises(HeapWorkBusy):
            await worker.run(dict, timeout_s=10.0)
        assert (await first).value == "first"
        assert not _busy(worker)
        with pytest.raises(HeapWorkError):
            await worker.run(_boom, timeout_s=10.0)
        assert not _busy(worker) and worker.running == 0

    asyncio.run(main())


def test_worker_validates_its_limit() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        HeapWorker(max_concurrent=0)


# --- the point of it all: the loop keeps ticking ------------------------------


async def _max_lateness_s(job: Callable[[], Awaitable[Any]]) -> float:
    """ Run ``job`` while a 5 ms ticker records how late each tick fires. """
    loop = asyncio.get_running_loop()
    interval_s = 0.005
    lateness_s: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        due = loop.time() + interval_s
        while not stop.is_set():
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            lateness_s.append(now - due)
            due = now + interval_s

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)  # let it settle
    try:
        await job()
        await asyncio.sleep(0.02)  # a tick after the job
    finally:
        stop.set()
        await ticking
    assert len(lateness_s) > 5
    return max(lateness_s)


@needs_fork
def test_event_loop_keeps_ticking_while_a_child_works() -> None:
    job_s = 1.0

    async def forked() -> None:
        result = await run_isolated(lambda: _spin(job_s), timeout_s=10.0, use_fork=True)
        assert result.technique == "fork"
        assert result.elapsed_s >= job_s

    async def inline() -> None:
        _spin(job_s)  # what running the search on the loop would do

    forked_lateness_s = asyncio.run(_max_lateness_s(forked))
    inline_lateness_s = asyncio.run(_max_lateness_s(inline))
    assert forked_lateness_s < 0.25
    assert inline_lateness_s > 0.8 * job_s


# --- the fork policy and the child's hygiene ---------------------------------
#
# conftest limits this process's BLAS pool to one thread (as the policy
# advises); ``threadpool_limits(2)`` gives it a real multi-thread pool again
# for a test.  Nothing computes meanwhile, and nothing forks over it except
# where "force" says so.


def _blas_pool(threads: int) -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads, user_api="blas")


def test_policy_forks_over_a_one_thread_pool() -> None:
    plan = fork_policy()
    assert plan.technique == "fork" and plan.refused is None and not plan.refuse
    assert plan.unsafe_pools == () and plan.inspect_s < 0.5
    assert plan.describe()["mode"] == "auto"


def test_policy_over_a_multi_thread_openblas_pool() -> None:
    with _blas_pool(2):
        auto = fork_policy("auto")
        refuse = fork_policy("refuse")
        force = fork_policy("force")
        never = fork_policy("never")
        asked = fork_policy("auto", use_fork=True)
        thread = fork_policy("auto", use_fork=False)
    assert auto.technique == "thread" and not auto.refuse
    assert auto.refused is not None and "OPENBLAS_NUM_THREADS=1" in auto.refused and "force" in auto.refused
    assert any("openblas" in pool and "2 threads" in pool for pool in auto.unsafe_pools), auto.unsafe_pools
    assert refuse.refuse and refuse.unsafe_pools == auto.unsafe_pools
    assert force.technique == "fork" and not force.refuse and force.unsafe_pools == auto.unsafe_pools
    assert never.technique == "thread" and never.refused == "heap_fork is 'never'" and never.inspect_s == 0
    assert asked.refuse  # a fork asked for explicitly is refused, not silently threaded
    assert thread.technique == "thread" and thread.refused is None
    with pytest.raises(ValueError, match="heap_fork must be one of"):
        fork_policy("sometimes")  # type: ignore[arg-type]


def test_every_job_follows_the_policy_and_says_so() -> None:
    async def main() -> tuple[IsolatedResult, IsolatedResult]:
        with _blas_pool(2):
            threaded = await run_isolated(os.getpid, timeout_s=10.0)
            with pytest.raises(ForkRefused, match="OPENBLAS_NUM_THREADS=1"):
                await run_isolated(os.getpid, timeout_s=10.0, use_fork=True)
            with pytest.raises(ForkRefused) as refused:
                await HeapWorker(fork_mode="refuse").run(os.getpid, timeout_s=10.0)
            assert refused.value.plan.refuse
            worker = HeapWorker(fork_mode="auto")
            assert not worker.forks and worker.plan().technique == "thread"
            via_worker = await worker.run(os.getpid, timeout_s=10.0)
            assert not worker.busy
        return threaded, via_worker

    threaded, via_worker = asyncio.run(main())
    for result in (threaded, via_worker):
        assert result.technique == "thread" and result.value == os.getpid()
        costs = result.costs()
        assert costs["technique"] == "thread"
        assert "openblas" in " ".join(costs["fork_policy"]["unsafe_pools"])
        assert costs["fork_policy"]["refused"].startswith("not forking")
    with pytest.raises(ValueError, match="fork_mode"):
        HeapWorker(fork_mode="maybe")  # type: ignore[arg-type]


@needs_fork
def test_child_never_collects_and_keeps_only_the_answer_pipe() -> None:
    def inspect_child() -> dict[str, Any]:
        before = len(gc.garbage)
        collected = gc.collect()
        return {
            "collected": collected,
            "garbage": len(gc.garbage) - before,
            "gc_enabled": gc.isenabled(),
            "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        }

    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]  # inherited, like client sockets
    try:
        parent_fds = len(os.listdir("/proc/self/fd"))
        result = asyncio.run(run_isolated(inspect_child, timeout_s=10.0, use_fork=True))
    finally:
        for fd in extra:
            os.close(fd)
    value = result.value
    assert value["collected"] == 0 and value["garbage"] == 0 and value["gc_enabled"] is False
    # stdio, the answer pipe, and the descriptor listdir itself opens; the
    # parent had more (these three at least).
    above_stdio = [fd for fd in value["fds"] if fd > 2]
    assert len(above_stdio) <= 2 < parent_fds - 3, (value["fds"], parent_fds)
    assert result.costs()["fork_policy"]["refused"] is None
