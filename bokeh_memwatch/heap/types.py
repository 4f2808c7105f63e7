""" Type summaries (pympler), run in the heap worker: live objects by type
with their sizes, growth since a baseline summary.  Functions that compute
return plain data; heap objects are dropped before they return.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import functools
import gc
import json
import logging
import types
from collections.abc import Mapping, Sequence
from typing import Any

from ..saferepr import (
    class_name,
    json_lines,
    safe_sizeof,
)
from .allocations import _dump_job, _stop_tracing_in_child
from .referents import get_referents
from .worker import Rendered

log = logging.getLogger(__name__)

__all__ = (
    "MAX_TYPE_ROWS",
    "diff_summaries",
)

#: Most type rows (largest first) and type growth rows a summary keeps.
MAX_TYPE_ROWS = 300



def _type_summary() -> list[list[Any]]:
    """ A per-type summary of every object: ``[type, count, size_bytes]`` rows,
    largest first, in pympler's row format (``module.QualName``, builtins
    bare, ``function (name)``, ``module(name)``; frames left out).

    Unlike pympler's ``muppy.get_objects()`` and ``summary.summarize()``
    this runs no code of the app's: no ``gc.collect()`` (which would run
    finalizers and weakref callbacks of pending garbage; unreachable cycles
    not yet collected are counted, as they are in memory), no
    ``isinstance`` (which consults ``__class__``), no metaclass ``__repr__``
    for the name, and ``__sizeof__`` only where it is C code
    (:func:`~bokeh_memwatch.saferepr.safe_sizeof`).
    """
    objects = _heap_objects()
    counts: dict[str, list[int]] = {}
    names: dict[type, str] = {}
    try:
        for obj in objects:
            kind = type(obj)
            if kind is types.FunctionType or kind is types.ModuleType:
                name = _callable_row_name(obj, kind)
            else:
                name = names.get(kind) or names.setdefault(kind, class_name(kind))
            row = counts.get(name)
            if row is None:
                row = counts[name] = [0, 0]
            row[0] += 1
            row[1] += safe_sizeof(obj)
    finally:
        del objects
    rows = [[name, count, size] for name, (count, size) in counts.items()]
    rows.sort(key=lambda r: (r[2], r[1]), reverse=True)
    return rows


def _heap_objects() -> list[object]:
    """ Every object the garbage collector tracks (frames left out) and the
    untracked objects they refer to, once each; what pympler's
    ``muppy.get_objects()`` returns, without its ``gc.collect()``. """
    objects = [o for o in gc.get_objects() if type(o) is not types.FrameType]
    seen = {id(o) for o in objects}
    untracked: list[object] = []
    for obj in objects:
        for ref in get_referents(obj):  # gc.get_referents, safe on 3.12 (gh-122695)
            if not gc.is_tracked(ref) and id(ref) not in seen:
                seen.add(id(ref))
                untracked.append(ref)
    objects.extend(untracked)
    del untracked
    return objects


def _callable_row_name(obj: object, kind: type) -> str:
    """ pympler's row of a function (``function (name)``) or a module
    (``module(name)``), read through the types' own descriptors. """
    try:
        if kind is types.FunctionType:
            name = _FUNCTION_NAME.__get__(obj)
            return f"function ({name})" if type(name) is str else "function"
        namespace = _MODULE_DICT.__get__(obj)
        name = namespace.get("__name__") if type(namespace) is dict else None
        return f"module({name})" if type(name) is str else "module(nameless)"
    except Exception:
        return class_name(kind)


_FUNCTION_NAME: Any = vars(types.FunctionType)["__name__"]
_MODULE_DICT: Any = vars(types.ModuleType)["__dict__"]


def _types_answer(rows: list[list[Any]], baseline_types_path: str | None) -> dict[str, Any]:
    """ The largest types, totals, and the largest growth since the
    baseline's summary (read from its file, so the server never holds or
    diffs whole summaries). """
    out: dict[str, Any] = {
        "types": _type_rows(rows, MAX_TYPE_ROWS),
        "types_total": len(rows),
        "size_bytes_total": sum(r[2] for r in rows),
        "growth": None,
    }
    if baseline_types_path is not None:
        with open(baseline_types_path, encoding="utf-8") as f:
            out["growth"] = diff_summaries(json.load(f), rows)[:MAX_TYPE_ROWS]
    return out


def _types_rendered(rows: list[list[Any]], baseline_types_path: str | None) -> tuple[dict[str, Any], bytes]:
    """ What the server keeps of a summary: small totals, and the rows
    encoded one per line (types, then growth from ``growth_offset``), so a
    request cuts ``limit`` rows without decoding any. """
    answer = _types_answer(rows, baseline_types_path)
    types_lines = json_lines(answer["types"])
    meta = {"types_total": answer["types_total"], "size_bytes_total": answer["size_bytes_total"],
            "growth_offset": None}
    if answer["growth"] is None:
        return meta, types_lines
    meta["growth_offset"] = len(types_lines) + 1
    return meta, types_lines + b"\n" + json_lines(answer["growth"])


def _split_types(meta: Mapping[str, Any], body: bytes) -> dict[str, Any]:
    """ What the server caches of a rendered summary: its totals, and its
    type rows and growth rows (``None`` without a comparison) as encoded lines. """
    offset = meta["growth_offset"]
    return {
        "types_total": meta["types_total"],
        "size_bytes_total": meta["size_bytes_total"],
        "types_lines": body if offset is None else body[:offset - 1],
        "growth_lines": None if offset is None else body[offset:],
    }


def _types_job(baseline_types_path: str | None, parent_pid: int) -> Rendered:
    """ Heap worker: the type summary, and its growth since the baseline. """
    _stop_tracing_in_child(parent_pid)
    meta, body = _types_rendered(_type_summary(), baseline_types_path)
    return Rendered(meta, body)


def _baseline_job(path: str | None, types_path: str | None, parent_pid: int) -> Rendered:
    """ Heap worker: the baseline: a snapshot file (when tracing) and a type
    summary file (when pympler is there); the summary comes back rendered. """
    out: dict[str, Any] = {}
    body = b""
    if path is not None:
        out["tracemalloc"] = _dump_job(path, parent_pid)
    _stop_tracing_in_child(parent_pid)
    if types_path is not None:
        rows = _type_summary()
        with open(types_path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
        out["types"], body = _types_rendered(rows, None)
    return Rendered(out, body)


def diff_summaries(old: Sequence[Sequence[Any]], new: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """ Per-type growth between two type summaries, largest growth first. """
    before = {str(r[0]): (int(r[1]), int(r[2])) for r in old}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, count, size in new:
        seen.add(name)
        old_count, old_size = before.get(name, (0, 0))
        if count != old_count or size != old_size:
            rows.append({"type": name, "count": count, "size_bytes": size,
                         "count_diff": count - old_count, "size_diff_bytes": size - old_size})
    for name, (old_count, old_size) in before.items():
        if name not in seen:
            rows.append({"type": name, "count": 0, "size_bytes": 0,
                         "count_diff": -old_count, "size_diff_bytes": -old_size})
    rows.sort(key=lambda r: (r["size_diff_bytes"], r["count_diff"]), reverse=True)
    return rows


def _type_rows(rows: Sequence[Sequence[Any]], limit: int) -> list[dict[str, Any]]:
    return [{"type": r[0], "count": r[1], "size_bytes": r[2]} for r in rows[:limit]]


def _pympler_version() -> str | None:
    try:
        from pympler import __version__
    except ImportError:
        return None
    return str(__version__)


@functools.lru_cache(maxsize=1)
def _have_pympler() -> bool:
    """ Import pympler (once: the import takes tens of ms, so
    :meth:`SnapshotManager.start` does it before serving, and forked
    children inherit it). """
    try:
        import pympler.muppy
        import pympler.summary  # noqa: F401
    except ImportError:
        log.warning("pympler is not installed: type summaries are disabled")
        return False
    return True


# --- the manager ---------------------------------------------------------------
