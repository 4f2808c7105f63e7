""" gc.get_referents and the whole-heap list, safe on every supported CPython. """
from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from bokeh_memwatch.heap.referents import get_referents

#: A finished Future iterated once puts a FutureIter on _asyncio's free list;
#: reading the module's referents then (gc.get_referents on 3.12, gh-122695)
#: hands out that freed object, and the next collection hangs or crashes.
HAZARD = textwrap.dedent("""
    import asyncio, gc, sys
    from bokeh_memwatch.heap.referents import get_referents
    from bokeh_memwatch.heap.types import _type_summary
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_result(1)
    for _ in range(3):
        list(iter(future))
    module = sys.modules["_asyncio"]
    refs = get_referents(module)
    assert not any(type(r).__name__ == "FutureIter" for r in refs), refs
    del refs
    rows = _type_summary()  # walks the whole heap, that module included
    assert any(name == "module(_asyncio)" for name, _, _ in rows), rows[:20]
    # The reachability scan and the census walk every tracked object too,
    # in batches (gc.get_referents(*batch)): that module is in one of them.
    from bokeh_memwatch.heap.reachability import scan_heap
    gc.disable()
    with scan_heap(frozen=False) as heap:
        assert heap.fate(id(module)).state == "reachable"
        assert heap.fate(id(future)).state == "reachable"
    gc.enable()
    gc.collect()
    loop.close()
    print("ok")
""")


def test_asyncio_module_referents_do_not_break_the_collector() -> None:
    # In a child: on an affected Python a failure here is a hang or a crash.
    result = subprocess.run([sys.executable, "-c", HAZARD], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_get_referents_is_gc_get_referents_elsewhere() -> None:
    holder = {"key": ["value"]}
    assert get_referents(holder) == gc.get_referents(holder)
    assert get_referents(sys.modules["gc"]) == gc.get_referents(sys.modules["gc"])

