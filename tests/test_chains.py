""" Tests for bokeh_memwatch.heap.chains: real objects held by real roots. """
from __future__ import annotations

import ast
import asyncio
import functools
import gc
import json
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bokeh_memwatch.heap import chains
from bokeh_memwatch.heap.worker import run_isolated

from . import _chain_fixtures as fx

THREAD_WAIT_S = 10.0


@pytest.fixture
def hold() -> Iterator[list[object]]:
    fx.HOLD.clear()
    try:
        yield fx.HOLD
    finally:
        fx.HOLD.clear()


def _search(ref: weakref.ref[Any], **kwargs: Any) -> dict[str, Any]:
    """ Search for ``ref()`` from a frame whose locals the gc cannot see. """
    return chains.find_chain(ref(), **kwargs)


def _leak_into(container: list[object]) -> weakref.ref[fx.Leak]:
    leak = fx.Leak()
    container.append(leak)
    return weakref.ref(leak)


# --- roots ----------------------------------------------------------------


def test_module_global_list(hold: list[object]) -> None:
    ref = _leak_into(hold)
    result = _search(ref, roots=chains.capture_roots())
    assert result["complete"] is True
    assert result["reason"] is None
    assert result["root"] == {"kind": "module", "name": fx.__name__}
    assert result["chain"][0] == {"type": "builtins.module", "via": None, "name": fx.__name__}
    assert result["chain"][-1]["type"] == "tests._chain_fixtures.Leak"
    assert [hop["via"] for hop in result["chain"]] == [None, ".HOLD", "[0]"]
    text = chains.format_chain(result)
    assert text == f"module {fx.__name__} -> .HOLD (list) -> [0] -> Leak"
    assert result["visited"] >= 3
    assert result["elapsed_s"] >= 0
    json.dumps(result)  # plain data


def _closure_thread(started: threading.Event, stop: threading.Event) -> tuple[threading.Thread, weakref.ref[fx.Leak]]:
    precious_cargo = fx.Leak()

    def target() -> None:
        started.set()
        if stop.wait(THREAD_WAIT_S):
            del_me = precious_cargo  # noqa: F841 - the closure must use it
    thread = threading.Thread(target=target, name="cargo-holder", daemon=True)
    return thread, weakref.ref(precious_cargo)


def test_thread_closure() -> None:
    started, stop = threading.Event(), threading.Event()
    thread, ref = _closure_thread(started, stop)
    thread.start()
    try:
        assert started.wait(THREAD_WAIT_S)
        result = _search(ref, roots=chains.capture_roots())
    finally:
        stop.set()
        thread.join(THREAD_WAIT_S)
    assert result["complete"] is True
    assert result["root"] == {"kind": "thread", "name": "cargo-holder"}
    vias = [hop["via"] for hop in result["chain"]]
    assert vias == [None, "._target", "closure 'precious_cargo'"]
    assert chains.format_chain(result) == (
        "thread 'cargo-holder' -> ._target (function) -> closure 'precious_cargo' -> Leak"
    )


def _start_periodic() -> tuple[Any, weakref.ref[fx.Leak]]:
    from tornado.ioloop import PeriodicCallback

    payload = fx.Leak()

    def tick() -> None:
        payload.__class__  # noqa: B018 - the closure must use it

    periodic = PeriodicCallback(tick, 60_000)
    periodic.start()
    return periodic, weakref.ref(payload)


def test_tornado_periodic_callback() -> None:
    async def main() -> dict[str, Any]:
        periodic, ref = _start_periodic()
        try:
            return _search(ref, roots=chains.capture_roots())
        finally:
            periodic.stop()

    result = asyncio.run(main())
    assert result["complete"] is True
    assert result["root"] == {"kind": "callback", "name": "tornado PeriodicCallback every 60000 ms"}
    assert [hop["via"] for hop in result["chain"]] == [None, ".callback", "closure 'payload'"]
    assert result["chain"][0]["type"] == "tornado.ioloop.PeriodicCallback"


def test_asyncio_timer_handle() -> None:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        leak = fx.Leak()
        handle = loop.call_later(60, functools.partial(print, leak))
        ref = weakref.ref(leak)
        del leak
        try:
            return _search(ref, roots=chains.capture_roots())
        finally:
            handle.cancel()

    result = asyncio.run(main())
    assert result["root"] == {"kind": "callback", "name": "asyncio TimerHandle"}
    assert [hop["via"] for hop in result["chain"]] == [None, "._callback", ".args[0]"]


def _hold_in_frame(ready: threading.Event, stop: threading.Event, box: list[object]) -> None:
    kept_local = fx.Leak()
    box.append(weakref.ref(kept_local))
    ready.set()
    stop.wait(THREAD_WAIT_S)


def test_frame_local_in_other_thread() -> None:
    ready, stop = threading.Event(), threading.Event()
    box: list[object] = []
    thread = threading.Thread(target=_hold_in_frame, args=(ready, stop, box), name="frame-holder", daemon=True)
    thread.start()
    try:
        assert ready.wait(THREAD_WAIT_S)
        ref = box[0]
        assert isinstance(ref, weakref.ref)
        roots = chains.capture_roots()
        result = _search(ref, roots=roots)
        without_roots = _search(ref)
    finally:
        stop.set()
        thread.join(THREAD_WAIT_S)
    assert result["complete"] is True
    root = result["root"]
    assert root["kind"] == "frame"
    assert "_hold_in_frame" in root["name"]
    assert "local 'kept_local'" in root["name"]
    assert "thread 'frame-holder'" in root["name"]
    assert result["chain"][0]["type"] == "builtins.frame"
    assert result["chain"][1] == {"type": "tests._chain_fixtures.Leak", "via": "local 'kept_local'"}
    assert "-> local 'kept_local' -> Leak" in chains.format_chain(result)
    # Without the pre-pass a running frame's locals are invisible.
    assert without_roots["complete"] is False
    assert without_roots["reason"] == "no_root"


def _rebinding_frame(ready: threading.Event, go: threading.Event, rebound: threading.Event,
                     stop: threading.Event, box: list[object]) -> None:
    item: object = fx.Leak()
    box.append(weakref.ref(item))
    ready.set()
    go.wait(THREAD_WAIT_S)
    item = None
    rebound.set()
    stop.wait(THREAD_WAIT_S)
    del item


def test_capture_roots_keeps_no_snapshot_of_frame_locals() -> None:
    # frame.f_locals stores a snapshot on a running 3.11 frame; capture_roots
    # must not leave it there, or a rebound local would stay alive.
    events = [threading.Event() for _ in range(4)]
    ready, go, rebound, stop = events
    box: list[object] = []
    thread = threading.Thread(target=_rebinding_frame, args=(*events, box), daemon=True)
    thread.start()
    try:
        assert ready.wait(THREAD_WAIT_S)
        ref = box.pop()
        assert isinstance(ref, weakref.ref)
        roots = chains.capture_roots()
        assert len(roots.frame_locals) > 0
        go.set()
        assert rebound.wait(THREAD_WAIT_S)
        assert ref() is None
    finally:
        go.set()
        stop.set()
        thread.join(THREAD_WAIT_S)


def test_capture_roots_is_plain_data() -> None:
    roots = chains.capture_roots()
    main = threading.main_thread()
    assert roots.threads[id(main)] == f"thread '{main.name}'"
    assert main in roots.keepalive
    assert all(isinstance(k, int) and isinstance(v, str) for k, v in roots.frame_locals.items())
    # The calling thread's own frames are left out by default.
    marker = fx.Leak()
    assert id(marker) not in roots.frame_locals
    assert id(marker) in chains.capture_roots(include_current_thread=True).frame_locals


# --- incomplete searches ----------------------------------------------------


def test_unreachable_object_has_no_root() -> None:
    lonely = fx.Leak()
    cycle = fx.Leak()
    cycle.me = [cycle]  # type: ignore[attr-defined]
    for target in (lonely, cycle):
        result = chains.find_chain(target, roots=chains.capture_roots())
        assert result["complete"] is False
        assert result["root"] is None
        assert result["reason"] == "no_root"
        assert result["chain"][-1]["type"] == "tests._chain_fixtures.Leak"
        assert chains.format_chain(result).endswith("(incomplete: no_root)")
    del cycle.me  # type: ignore[attr-defined]


def test_deadline_zero_times_out(hold: list[object]) -> None:
    ref = _leak_into(hold)
    result = _search(ref, deadline_s=0.0)
    assert result["complete"] is False
    assert result["reason"] == "timeout"
    assert result["root"] is None
    assert chains.format_chain(result) == "Leak (incomplete: timeout)"


def test_max_depth(hold: list[object]) -> None:
    ref = _leak_into(hold)
    result = _search(ref, max_depth=1)
    assert result["complete"] is False
    assert result["reason"] == "max_depth"
    # A partial chain from the deepest object reached: the list.
    assert [hop["type"] for hop in result["chain"]] == ["builtins.list", "tests._chain_fixtures.Leak"]
    assert result["chain"][1]["via"] == "[0]"


def test_ignore_ids_hides_a_holder(hold: list[object]) -> None:
    ref = _leak_into(hold)
    result = _search(ref, ignore_ids=[id(hold)])
    assert result["complete"] is False
    assert result["reason"] == "no_root"


def test_deadline_is_honoured_on_a_big_heap(hold: list[object]) -> None:
    # A chain 200 lists deep with 100k objects around it: each step scans the
    # heap, so a short deadline must stop the search, not the whole chain.
    ballast = [[i] for i in range(100_000)]
    box: list[object] = []
    ref = _leak_into(box)
    node: list[object] = box
    for _ in range(200):
        node = [node]
    hold.append(node)
    del node, box
    started = time.monotonic()
    result = _search(ref, deadline_s=0.2, max_depth=1000)
    elapsed_s = time.monotonic() - started
    assert result["complete"] is False
    assert result["reason"] == "timeout"
    assert elapsed_s < 1.5
    del ballast


# --- no strong references ---------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"deadline_s": 0.0}, {"max_depth": 1}])
def test_no_strong_reference_kept(hold: list[object], kwargs: dict[str, Any]) -> None:
    ref = _leak_into(hold)
    roots = chains.capture_roots()
    result = _search(ref, roots=roots, **kwargs)
    assert result["chain"]
    del roots
    hold.clear()
    assert ref() is None


def test_no_strong_reference_to_thread_chain() -> None:
    started, stop = threading.Event(), threading.Event()
    thread, ref = _closure_thread(started, stop)
    thread.start()
    try:
        assert started.wait(THREAD_WAIT_S)
        roots = chains.capture_roots()
        result = _search(ref, roots=roots)
        assert result["complete"] is True
        del roots
    finally:
        stop.set()
        thread.join(THREAD_WAIT_S)
    del thread
    assert ref() is None


def _capture_and_search(include_current_thread: bool) -> weakref.ref[fx.Leak]:
    local_obj = fx.Leak()
    roots = chains.capture_roots(include_current_thread=include_current_thread)
    chains.find_chain(local_obj, roots=roots)
    return weakref.ref(local_obj)


@pytest.mark.parametrize("include_current_thread", [False, True])
def test_calling_frames_are_not_kept_alive(include_current_thread: bool) -> None:
    # Materialised frame objects in a cycle would keep the caller's locals
    # alive until the next collection: check without one.
    gc.disable()
    try:
        ref = _capture_and_search(include_current_thread)
        assert ref() is None
    finally:
        gc.enable()


# --- in a forked child ------------------------------------------------------


def test_same_chain_in_forked_child(hold: list[object]) -> None:
    module_ref = _leak_into(hold)
    started, stop = threading.Event(), threading.Event()
    thread, thread_ref = _closure_thread(started, stop)
    ready, stop_frame = threading.Event(), threading.Event()
    box: list[object] = []
    frame_thread = threading.Thread(
        target=_hold_in_frame, args=(ready, stop_frame, box), name="frame-holder", daemon=True,
    )
    thread.start()
    frame_thread.start()
    try:
        assert started.wait(THREAD_WAIT_S) and ready.wait(THREAD_WAIT_S)
        frame_ref = box[0]
        assert isinstance(frame_ref, weakref.ref)
        refs: list[weakref.ref[Any]] = [module_ref, thread_ref, frame_ref]
        roots = chains.capture_roots()
        local = [_search(ref, roots=roots) for ref in refs]

        def search_all() -> list[dict[str, Any]]:
            return [_search(ref, roots=roots) for ref in refs]

        outcome = asyncio.run(run_isolated(search_all, timeout_s=20.0, use_fork=True))
    finally:
        stop.set()
        stop_frame.set()
        thread.join(THREAD_WAIT_S)
        frame_thread.join(THREAD_WAIT_S)
    assert outcome.technique == "fork"
    kinds = [r["root"]["kind"] for r in outcome.value]
    assert kinds == ["module", "thread", "frame"]
    for in_child, in_parent in zip(outcome.value, local, strict=True):
        assert in_child["complete"] is True
        assert in_child["chain"] == in_parent["chain"]
        assert in_child["root"] == in_parent["root"]


# --- describing edges -------------------------------------------------------


class _Plain:
    def method(self) -> None:
        pass


def test_describe_edge_containers() -> None:
    value = fx.Leak()
    other = fx.Leak()
    d: dict[object, object] = {"k": value, 3: other, ("a", 1): 2}
    assert chains.describe_edge(d, value) == "['k']"
    assert chains.describe_edge(d, other) == "[3]"
    long_key = "x" * 100
    assert chains.describe_edge({long_key: value}, value) == "['" + "x" * 56 + "...]"
    assert chains.describe_edge({other: value}, value) == "[<tests._chain_fixtures.Leak key>]"
    assert chains.describe_edge({other: 1}, other) == "<key>"
    assert chains.describe_edge({(1, None, "b"): value}, value) == "[(1, None, 'b')]"
    assert chains.describe_edge([1, value], value) == "[1]"
    assert chains.describe_edge((value,), value) == "[0]"
    assert chains.describe_edge({value}, value) == "{member}"
    assert chains.describe_edge(frozenset([value]), value) == "{member}"
    assert chains.describe_edge([1, 2], value) == "referent"


def test_describe_edge_objects() -> None:
    value = fx.Leak()
    plain = _Plain()
    plain.attr = value  # type: ignore[attr-defined]
    assert chains.describe_edge(plain, value) == ".attr"
    assert chains.describe_edge(plain, vars(plain)) == "__dict__"
    assert chains.describe_edge(plain, _Plain) == "__class__"
    assert chains.describe_edge(fx.Slotted(value), value) == ".item"
    assert chains.describe_edge(fx, fx.HOLD) == ".HOLD"
    assert chains.describe_edge(fx.Slotted, fx.Slotted.__init__) == ".__init__"
    bound = plain.method
    assert chains.describe_edge(bound, plain) == "__self__"
    assert chains.describe_edge(bound, _Plain.method) == "__func__"
    part = functools.partial(print, 1, value, sep=value)
    assert chains.describe_edge(part, print) == ".func"
    assert chains.describe_edge(part, value) == ".args[1]"
    assert chains.describe_edge(functools.partial(print, sep=value), value) == ".keywords['sep']"


def _closure_over(value: object) -> Callable[[], object]:
    def inner() -> object:
        return value
    return inner


def test_describe_edge_closures_and_frames() -> None:
    value = fx.Leak()
    inner = _closure_over(value)
    closure = inner.__closure__
    assert closure is not None
    assert chains.describe_edge(inner, value) == "closure 'value'"
    assert chains.describe_edge(inner, closure) == "__closure__"
    assert chains.describe_edge(inner, closure[0]) == "closure cell 'value'"
    assert chains.describe_edge(closure[0], value) == "cell_contents"

    def make_frame() -> Any:
        local_name = value
        try:
            raise RuntimeError
        except RuntimeError as e:
            tb = e.__traceback__
            assert tb is not None and local_name is value
            return tb.tb_frame
    frame = make_frame()
    assert chains.describe_edge(frame, value) == "local 'local_name'"


def test_collapsing_internal_containers(hold: list[object]) -> None:
    value = fx.Leak()
    holder = _Plain()
    holder.part = functools.partial(print, _closure_over(value))  # type: ignore[attr-defined]
    hold.append(holder)
    ref = weakref.ref(value)
    del value, holder
    result = _search(ref)
    assert [hop["via"] for hop in result["chain"]] == [
        None, ".HOLD", "[0]", ".part", ".args[0]", "closure 'value'",
    ]
    assert [hop["type"] for hop in result["chain"]][2:] == [
        "tests.test_chains._Plain", "functools.partial", "builtins.function",
        "tests._chain_fixtures.Leak",
    ]


# --- rendering and layering ---------------------------------------------------


def test_format_chain_from_plain_data() -> None:
    result = {
        "chain": [
            {"type": "builtins.module", "via": None, "name": "demo_app.leaks"},
            {"type": "builtins.list", "via": ".CACHE"},
            {"type": "bokeh.document.document.Document", "via": "[3]"},
        ],
        "root": {"kind": "module", "name": "demo_app.leaks"},
        "complete": True, "reason": None, "visited": 9, "elapsed_s": 0.1,
    }
    assert chains.format_chain(result) == "module demo_app.leaks -> .CACHE (list) -> [3] -> Document"
    assert chains.format_chain({"chain": [], "root": None, "complete": False, "reason": "collected"}) == (
        "(empty chain) (incomplete: collected)"
    )


def test_imports_neither_tornado_nor_bokeh_server() -> None:
    source = Path(chains.__file__).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {name for name in imported if name.startswith(("tornado", "bokeh"))}
