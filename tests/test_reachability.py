""" Tests for bokeh_memwatch.heap.reachability on constructed heaps, scanned in a
real forked child (the heap worker), as the tracker scans them. """
from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from bokeh_memwatch.heap import reachability
from bokeh_memwatch.heap.reachability import NotFrozen, scan_heap, verify_groups
from bokeh_memwatch.heap.worker import run_isolated

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

#: Module-level holder (a "leak" into an imported module).
HELD: list[Any] = []


class Node:
    """ A tracked object with a slot for a cycle. """

    def __init__(self, name: str) -> None:
        self.name = name
        self.other: Any = None


@pytest.fixture(autouse=True)
def _clear_held() -> Iterator[None]:
    yield
    HELD.clear()


def _fates(groups: dict[str, list[weakref.ReferenceType[Any]]]) -> dict[str, list[list[Any]]]:
    """ Run the tracker's job in a forked child; fates per group. """
    pid = os.getpid()

    async def main() -> Any:
        return await run_isolated(lambda: verify_groups(groups, parent_pid=pid), timeout_s=120.0, use_fork=True)

    result = asyncio.run(main())
    assert result.technique == "fork"
    fates: dict[str, list[list[Any]]] = result.value["fates"]
    assert result.value["objects"] > 1000
    return fates


def _cycle(name: str) -> weakref.ReferenceType[Node]:
    a, b = Node(name + "a"), Node(name + "b")
    a.other, b.other = b, a
    return weakref.ref(a)


def test_cycle_garbage_is_garbage(no_gc: None) -> None:
    ref = _cycle("g")
    assert ref() is not None
    fates = _fates({"g": [ref]})
    assert fates["g"] == [["garbage", None]]
    # The parent is untouched: the cycle is still there until a collection.
    assert ref() is not None
    gc.collect()
    assert ref() is None


def test_held_by_module_global(no_gc: None) -> None:
    node = Node("global")
    HELD.append(node)
    ref = weakref.ref(node)
    del node
    garbage = _cycle("c")
    fates = _fates({"held": [ref], "garbage": [garbage]})
    assert fates == {"held": [["reachable", None]], "garbage": [["garbage", None]]}


def test_garbage_that_points_at_a_held_object(no_gc: None) -> None:
    """ A reference from garbage does not make an object reachable, and the
    held object stays reachable although garbage points at it. """
    kept = Node("kept")
    HELD.append(kept)
    junk = Node("junk")
    junk.other = junk
    junk.name = kept  # type: ignore[assignment]
    refs = [weakref.ref(junk), weakref.ref(kept)]
    del junk, kept
    assert _fates({"x": refs})["x"] == [["garbage", None], ["reachable", None]]


def test_weak_references_do_not_hold(no_gc: None) -> None:
    ref = _cycle("w")
    target = ref()
    HELD.append(weakref.ref(target))
    HELD.append(weakref.WeakValueDictionary({"k": target}))
    del target
    assert _fates({"w": [ref]})["w"] == [["garbage", None]]


def test_held_by_another_threads_local(no_gc: None) -> None:
    ready, release = threading.Event(), threading.Event()
    refs: list[weakref.ReferenceType[Node]] = []

    def worker() -> None:
        local = Node("thread-local")
        local.other = local  # a cycle: only the thread's frame keeps it
        refs.append(weakref.ref(local))
        ready.set()
        release.wait(60)
        del local

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        assert _fates({"t": refs})["t"] == [["reachable", None]]
    finally:
        release.set()
        thread.join(30)
    assert _fates({"t": refs})["t"] == [["garbage", None]]


def test_held_by_untracked_c_holder(no_gc: None) -> None:
    """ A reference from C (an extension's static, say) is a root. """
    ref = _cycle("c")
    target = ref()
    obj = ctypes.py_object(target)
    ctypes.pythonapi.Py_IncRef(obj)
    del target, obj
    try:
        assert _fates({"c": [ref]})["c"] == [["reachable", None]]
    finally:
        obj = ctypes.py_object(ref())
        ctypes.pythonapi.Py_DecRef(obj)
        del obj
    assert _fates({"c": [ref]})["c"] == [["garbage", None]]


def test_held_only_by_a_call_later_timer(no_gc: None) -> None:
    ref = _cycle("timer")
    before = time.time()

    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        target = ref()

        def later(node: Node | None = target) -> None:  # the handle's callback holds the node
            pass

        del target
        handle = loop.call_later(3600, later)
        del later
        pid = os.getpid()
        held = await run_isolated(lambda: verify_groups({"t": [ref]}, parent_pid=pid), timeout_s=120.0)
        handle.cancel()  # a cancelled handle drops its callback
        del handle
        freed = await run_isolated(lambda: verify_groups({"t": [ref]}, parent_pid=pid), timeout_s=120.0)
        return held.value["fates"]["t"], freed.value["fates"]["t"]

    held, freed = asyncio.run(main())
    [[state, until]] = held
    assert state == "held_by_timer"
    assert before + 3600 - 5 < until < time.time() + 3600 + 5
    assert freed == [["garbage", None]]


def test_due_time_is_the_latest_holder(no_gc: None) -> None:
    ref = _cycle("two")

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        target = ref()

        def hold(node: Node | None = target) -> None:
            pass

        handles = [loop.call_later(delay, hold) for delay in (100, 900, 300)]
        del hold
        del target
        pid = os.getpid()
        try:
            result = await run_isolated(lambda: verify_groups({"t": [ref]}, parent_pid=pid), timeout_s=120.0)
        finally:
            for handle in handles:
                handle.cancel()
        return result.value["fates"]["t"]

    now = time.time()
    [[state, until]] = asyncio.run(main())
    assert state == "held_by_timer"
    assert now + 895 < until < now + 905


def test_freed_and_untracked() -> None:
    class Slotless:
        __slots__ = ("x",)

    dead = Node("dead")
    ref = weakref.ref(dead)
    del dead
    gc.collect()
    fates = _fates({"d": [ref]})
    assert fates["d"] == [["freed", None]]
    # An object the collector does not track (an int) cannot be decided.
    with scan_heap(frozen=False) as heap:
        assert heap.fate(id(12345678901234567890)).state == "untracked"
    del Slotless


def test_survivors_and_release(no_gc: None) -> None:
    ref = _cycle("s")

    def job() -> dict[str, Any]:
        target_id = id(ref())
        with scan_heap() as heap:
            kept = sum(1 for obj in heap.survivors() if id(obj) == target_id)
            total = len(heap)
            garbage = heap.garbage_count()
        return {"kept": kept, "total": total, "garbage": garbage, "after": len(heap)}

    result = asyncio.run(run_isolated(job, timeout_s=120.0, use_fork=True)).value
    assert result["kept"] == 0
    assert result["garbage"] >= 2
    assert result["after"] == 0  # the scan's references are released


def test_refuses_a_live_heap() -> None:
    with pytest.raises(NotFrozen), scan_heap():
        pass
    ref = _cycle("p")
    with pytest.raises(NotFrozen):
        verify_groups({"p": [ref]}, parent_pid=os.getpid())


def test_refcount_bias_is_exact() -> None:
    """ The calibration: an object only the scanned list holds has no
    reference from outside. """
    obj = Node("bias")
    objs = [obj]
    own = reachability._refcount_bias()
    # obj: the list and the local ``obj``.
    assert reachability._refcounts(objs)[0] - own == 1
    del obj
    assert reachability._refcounts(objs)[0] - own == 0


def test_timer_types() -> None:
    types = reachability.timer_types()
    assert asyncio.TimerHandle in types and asyncio.Handle in types
    assert all(isinstance(t, type) for t in types)
    assert "uvloop" not in sys.modules or len(types) >= 2
