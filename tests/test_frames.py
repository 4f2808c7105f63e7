""" bokeh_memwatch.heap.frames: another thread's locals, read without changing them.

These run on every Python the CI matrix has (3.10-3.13): each version takes
a different path (3.10/3.11 raw layout, 3.12 ``PyFrame_GetVar``, 3.13 the
PEP 667 proxy), and a layout change shows up here as a failed read.
"""
from __future__ import annotations

import sys
import threading
import types
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from bokeh_memwatch.heap import frames as _frames

WAIT_S = 10.0


class _Value:
    pass


def _running_frame(thread: threading.Thread, name: str) -> types.FrameType:
    assert thread.ident is not None
    frame: types.FrameType | None = sys._current_frames()[thread.ident]
    while frame is not None and frame.f_code.co_name != name:
        frame = frame.f_back
    assert frame is not None, f"{name} is not running in {thread.name}"
    return frame


@pytest.fixture
def worker() -> Iterator[dict[str, Any]]:
    """ A thread stopped inside ``body``, which edited its ``locals()`` dict. """
    ready, go = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def body(argument: object, celled: object) -> None:
        params = locals()
        params["argument"] = "edited by the app"
        params["extra"] = 1
        plain = _Value()
        unbound: object
        box.update(plain=plain, params=params, snapshot=dict(params), argument=argument, celled=celled)

        def inner() -> object:
            return celled
        box["inner"] = inner
        ready.set()
        go.wait(WAIT_S)
        box["after"] = dict(params)
        if go.is_set():
            unbound = None
            del unbound

    thread = threading.Thread(target=body, args=(_Value(), _Value()), name="frames-worker", daemon=True)
    thread.start()
    try:
        assert ready.wait(WAIT_S)
        box["frame"] = _running_frame(thread, "body")
        yield box
    finally:
        box.pop("frame", None)
        go.set()
        thread.join(WAIT_S)
        assert not thread.is_alive()


def test_running_frame_in_another_thread(worker: dict[str, Any]) -> None:
    ids = dict(_frames.local_ids(worker["frame"]) or [])
    assert ids["plain"] == id(worker["plain"])
    assert ids["params"] == id(worker["params"])
    assert ids["argument"] == id(worker["argument"])
    assert ids["inner"] == id(worker["inner"])
    # A cell variable: its value (3.12+) or, read raw (3.10/3.11), its cell.
    cell = worker["inner"].__closure__[0]
    assert ids["celled"] in (id(worker["celled"]), id(cell))
    assert "unbound" not in ids


def test_reading_never_changes_a_locals_dict_the_function_holds(worker: dict[str, Any]) -> None:
    for _ in range(100):
        assert _frames.local_ids(worker["frame"])
    assert worker["params"] == worker["snapshot"]
    # Reading f_locals (3.10-3.12) would have added the later locals.
    assert "params" not in worker["params"] and "plain" not in worker["params"]
    assert worker["params"]["argument"] == "edited by the app"


def test_finished_frame_and_generator_frame() -> None:
    value = _Value()

    def make_frame(arg: object) -> types.FrameType:
        local_name = arg
        try:
            raise RuntimeError
        except RuntimeError as e:
            tb = e.__traceback__
            assert tb is not None and local_name is arg
            return tb.tb_frame

    frame = make_frame(value)
    ids = _frames.local_ids(frame)
    assert ids is not None and ("local_name", id(value)) in ids and ("arg", id(value)) in ids

    def generator(arg: object) -> Generator[object, None, None]:
        held = arg
        yield held

    gen = generator(value)
    next(gen)
    assert isinstance(gen, types.GeneratorType) and gen.gi_frame is not None
    ids = _frames.local_ids(gen.gi_frame)
    assert ids is not None and ("held", id(value)) in ids


def test_free_variables_are_left_out() -> None:
    outer_value = _Value()
    box: list[types.FrameType] = []

    def closure() -> None:
        assert outer_value is not None
        box.append(sys._getframe())

    closure()
    names = [name for name, _ in _frames.local_ids(box.pop()) or []]
    assert "outer_value" not in names


def test_an_odd_argument_costs_none_not_an_exception() -> None:
    assert _frames.local_ids(object()) is None  # type: ignore[arg-type]


def _recurse(depth: int, payload: object) -> int:
    held = [payload] * 3
    if depth:
        return _recurse(depth - 1, held)
    return len(held)


def test_frames_that_come_and_go_while_being_read() -> None:
    # Threads call and return (200 deep: frames spill over data-stack chunks
    # on 3.11, which are freed on return) while this thread reads every
    # frame they have; a read either matches the frame or is refused.
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for depth in (1, 5, 50, 200):
                _recurse(depth, _Value())

    threads = [threading.Thread(target=churn, name=f"churn-{n}", daemon=True) for n in range(3)]
    for thread in threads:
        thread.start()
    reads = 0
    try:
        me = threading.get_ident()
        while reads < 20_000:
            frames = sys._current_frames()
            for ident, top in frames.items():
                frame: types.FrameType | None = top
                while ident != me and frame is not None:
                    ids = _frames.local_ids(frame)
                    if ids is not None and frame.f_code is _recurse.__code__:
                        assert {name for name, _ in ids} <= {"depth", "payload", "held"}
                    reads += 1
                    frame = frame.f_back
            del frames, top
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT_S)
