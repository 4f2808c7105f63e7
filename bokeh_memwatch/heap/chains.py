""" Why is this object alive?  Find a chain of references from a root (a
module, a thread, a scheduled callback, a frame) to a target object.

The search is a breadth-first walk backwards over ``gc.get_referrers``,
modelled on objgraph's ``find_backref_chain`` with three differences:

* it never calls ``gc.collect()``: the search may run in a forked child
  (see :mod:`bokeh_memwatch.heap.worker`), where finalizers of garbage could
  write to sockets shared with the parent;
* it knows more roots than "proper modules": threads, tornado
  ``PeriodicCallback`` and asyncio handles, and the locals of frames that
  are running in other threads.  In CPython 3.11 a *running* frame does not
  report its locals to the garbage collector, so :func:`capture_roots`
  records them (as ids) beforehand;
* it returns plain data (type names, attribute names, simple keys and
  indexes; never a value or a repr) and keeps no reference to anything it
  inspected once it returns.

This module imports neither tornado nor ``bokeh.server``.

Over 400 lines: the search, the roots it starts from and the names it gives
each hop share one model of the heap (referents, frames, what counts as a
root); split, each part would import the others' private helpers.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import logging
import sys
import threading
import time
import types
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..saferepr import class_dict, is_a, safe_repr, type_mro, type_name
from . import frames as _frames
from .referents import get_referents

log = logging.getLogger(__name__)

__all__ = (
    "Roots",
    "capture_roots",
    "describe_edge",
    "find_chain",
    "format_chain",
)

#: How many frontier objects one ``gc.get_referrers`` call looks for.  Each
#: call scans the whole heap, so batching divides the number of scans; the
#: cost per scanned reference grows with the batch (a linear compare in C).
_BATCH_SIZE = 64

#: Longest simple key repr put into an edge description.
_MAX_KEY_REPR_CHARS = 60

#: How often (in referrers examined) the deadline is checked inside a scan.
_DEADLINE_CHECK_EVERY = 1024


@dataclass(frozen=True, slots=True)
class Roots:
    """ Roots that ``gc.get_referrers`` cannot see, captured as plain ids.

    Attributes:
        threads: ``id(thread) -> "thread 'name'"`` for every live thread.
        frame_locals: ``id(value) -> "frame <func> (<file>:<line>) local
            'name' in thread 'tname'"`` for the locals of the frames running
            in other threads.
        frame_sites: ``id(value) -> (frame description, local name)``: the
            same information, split for building a chain.
        keepalive: the ``Thread`` objects.  After ``os.fork()`` the child's
            ``threading`` module forgets every thread but the forking one, so
            the caller keeps this object alive across the fork (and deletes
            it after); the search ignores this tuple as a referrer.
    """

    threads: dict[int, str] = field(default_factory=dict)
    frame_locals: dict[int, str] = field(default_factory=dict)
    frame_sites: dict[int, tuple[str, str]] = field(default_factory=dict)
    keepalive: tuple[threading.Thread, ...] = ()

    def own_ids(self) -> set[int]:
        """ Ids of this object and its containers, for the search to ignore. """
        return {
            id(self),
            id(self.threads),
            id(self.frame_locals),
            id(self.frame_sites),
            id(self.keepalive),
        }


#: Threads memwatch starts (``memwatch-check``, ``memwatch-check-client_0``,
#: ``memwatch-heapwork``...): their frames are not roots.  The check's driver
#: holds the server's objects while it asks about them; on 3.13 a search found
#: a leaked Document through the driver's own frame before the app's module.
_OWN_THREAD_PREFIX = "memwatch-"


def capture_roots(*, include_current_thread: bool = False) -> Roots:
    """ Record threads and the locals of running frames, as ids and strings.

    Call this just before a search, in the process that owns the threads
    (in the parent, just before forking a child to search in).

    Args:
        include_current_thread: also record the frames of the calling
            thread.  Off by default: the caller's own stack (the request
            handler, the event loop) holds the target it is asking about.
            Frames of memwatch's own threads (named ``memwatch-...``) are
            never recorded, for the same reason.

    The locals are read in place by :func:`bokeh_memwatch.heap.frames.local_ids`
    (never through ``frame.f_locals`` of a function frame before 3.13, which
    would rewrite the dict a function got from ``locals()``): nothing in the
    inspected threads changes, and no snapshot of their locals is kept.
    """
    current_ident = threading.get_ident()
    threads = tuple(threading.enumerate())
    thread_roots: dict[int, str] = {}
    names_by_ident: dict[int, str] = {}
    own_idents: set[int] = set()
    for thread in threads:
        name = _thread_name(thread)
        thread_roots[id(thread)] = f"thread '{name}'"
        if thread.ident is not None:
            names_by_ident[thread.ident] = name
            if name.startswith(_OWN_THREAD_PREFIX):
                own_idents.add(thread.ident)

    frame_locals: dict[int, str] = {}
    frame_sites: dict[int, tuple[str, str]] = {}
    frames = sys._current_frames()
    frame: types.FrameType | None = None
    try:
        for ident in list(frames):
            if ident == current_ident and not include_current_thread:
                continue
            if ident in own_idents:
                continue  # memwatch's own workers hold what they inspect, like the caller
            thread_name = names_by_ident.get(ident, f"ident {ident}")
            frame = frames[ident]
            while frame is not None:
                site = f"{_describe_frame(frame)} in thread '{thread_name}'"
                for local_name, value_id in _frame_local_ids(frame):
                    if value_id in frame_sites:
                        continue  # the innermost frame wins
                    frame_sites[value_id] = (site, local_name)
                    frame_locals[value_id] = (
                        f"frame {_describe_frame(frame)} local '{local_name}' "
                        f"in thread '{thread_name}'"
                    )
                frame = frame.f_back
    finally:
        # This frame must not end up referring to itself (through the
        # current thread's top frame): it would keep the caller's frame,
        # and all its locals, alive until the next collection.
        frames.clear()
        frame = None
    return Roots(
        threads=thread_roots,
        frame_locals=frame_locals,
        frame_sites=frame_sites,
        keepalive=threads,
    )


def find_chain(
    target: object,
    *,
    roots: Roots | None = None,
    max_depth: int = 25,
    deadline_s: float = 10.0,
    ignore_ids: Collection[int] = (),
    values: bool = False,
) -> dict[str, Any]:
    """ Find a shortest chain of references from a root to ``target``.

    Args:
        target: the object that should have died.
        roots: from :func:`capture_roots`; without it threads are still
            roots (through ``threading``), but locals of running frames in
            other threads are invisible.
        max_depth: longest chain searched, in references.
        deadline_s: wall-clock budget; each step scans the whole heap.
        ignore_ids: ids of objects that must not be part of a chain (the
            caller's own containers).
        values: add each hop's ``"value"``, a short repr made by
            :func:`bokeh_memwatch.saferepr.safe_repr` (operator opt-in only).

    Returns:
        ``{"chain": [hop, ...], "root": {"kind", "name"} | None,
        "complete": bool, "reason": str | None, "visited": int,
        "elapsed_s": float}``.  ``chain[0]`` is the root, ``chain[-1]`` the
        target; each hop is ``{"type": "module.QualName", "via": str | None}``
        (``via`` says how the previous hop refers to this one) and the root
        hop may carry a ``"name"``.  When no root was reached, ``complete`` is
        false, ``reason`` is ``"timeout"``, ``"max_depth"`` or ``"no_root"``,
        and the chain runs from the deepest object reached to the target.

    The garbage collector is not run, so unreachable cycles are searched too
    (and end in ``"no_root"``).  Objects moved by ``gc.freeze()`` to the
    permanent generation are not seen as referrers.
    """
    started_s = time.monotonic()
    deadline_at_s = started_s + deadline_s
    # Everything that refers to inspected objects lives in these containers
    # (or in locals of this frame) and is dropped in the ``finally`` below.
    seen: dict[int, object] = {id(target): target}
    parent: dict[int, int | None] = {id(target): None}
    frontier: list[object] = [target]
    next_frontier: list[object] = []
    batch: list[object] = []
    batch_args: tuple[object, ...] = ()
    batch_ids: set[int] = set()
    referrers: list[object] = []
    root_id: int | None = None
    deepest_id = id(target)
    reason: str | None = None

    # Long-lived ids only: a transient container's id could be reused by an
    # object another thread allocates, so those are compared by identity.
    ignore: set[int] = set(ignore_ids)
    ignore.update(id(x) for x in (ignore_ids, seen, parent))
    ignore.add(id(ignore))
    ignore.add(id(sys._getframe()))
    ignore.add(id(sys._getframe(1)))
    if roots is not None:
        ignore.update(roots.own_ids())
    classify = _RootClassifier(roots)

    try:
        if classify(target) is not None:
            root_id = id(target)
        level = 0
        while root_id is None and reason is None and frontier:
            if level >= max_depth:
                reason = "max_depth"
                break
            next_frontier = []
            for start in range(0, len(frontier), _BATCH_SIZE):
                if time.monotonic() >= deadline_at_s:
                    reason = "timeout"
                    break
                batch = frontier[start:start + _BATCH_SIZE]
                batch_ids = {id(x) for x in batch}
                # The argument tuple of the call refers to the batch: CPython
                # leaves out the tuple it hands to get_referrers, and from
                # 3.13 that is a copy of the one the call was made with, so
                # that one is ours and skipped by identity below.
                batch_args = tuple(batch)
                referrers = gc.get_referrers(*batch_args)
                for n, source in enumerate(referrers):
                    if n % _DEADLINE_CHECK_EVERY == 0 and n and time.monotonic() >= deadline_at_s:
                        reason = "timeout"
                        break
                    source_id = id(source)
                    if (
                        source_id in seen
                        or source_id in ignore
                        or source is frontier
                        or source is next_frontier
                        or source is batch
                        or source is batch_args
                        or source is referrers
                    ):
                        continue
                    if type(source) is types.FrameType:
                        # Up to 3.10 a frame refers to its globals and
                        # builtins; they are its function's module's (from
                        # 3.11 frames no longer traverse them): never a path.
                        via_id = _first_referent_in(
                            source, batch_ids - {id(source.f_globals), id(source.f_builtins)},
                        )
                        if via_id is None:
                            continue
                    else:
                        via_id = (
                            id(batch[0]) if len(batch) == 1
                            else _first_referent_in(source, batch_ids)
                        )
                    if via_id is None:  # pragma: no cover - changed under us
                        continue
                    seen[source_id] = source
                    parent[source_id] = via_id
                    deepest_id = source_id
                    if classify(source) is not None:
                        root_id = source_id
                        break
                    next_frontier.append(source)
                referrers = []
                batch_args = ()
                if root_id is not None or reason is not None:
                    break
            frontier = next_frontier
            next_frontier = []
            level += 1
        if root_id is None and reason is None:
            reason = "no_root"

        path: list[object] = []
        node_id: int | None = root_id if root_id is not None else deepest_id
        while node_id is not None:
            path.append(seen[node_id])
            node_id = parent[node_id]
        root_info = classify(path[0]) if root_id is not None else None
        chain = _build_hops(path, root_info, roots, values=values)
        path.clear()
        return {
            "chain": chain,
            "root": (
                {"kind": root_info[0], "name": root_info[1]}
                if root_info is not None else None
            ),
            "complete": root_id is not None,
            "reason": None if root_id is not None else reason,
            "visited": len(seen),
            "elapsed_s": time.monotonic() - started_s,
        }
    finally:
        seen.clear()
        parent.clear()
        frontier = next_frontier = batch = referrers = []
        batch_args = ()
        del target


def describe_edge(src: object, dst: object) -> str:
    """ How ``src`` refers to ``dst``, without showing any value.

    ``src`` may reach ``dst`` through its own internals (an instance or a
    module through its ``__dict__``, a function through a closure cell, a
    ``functools.partial`` through its ``args``); those internals are
    described as one step: ``.name``, ``closure 'x'``, ``.args[1]``.
    Anything unrecognised is a ``referent``.
    """
    try:
        return _describe_edge(src, dst)
    except Exception:  # a container mutated by another thread, an odd object
        return "referent"


def format_chain(result: dict[str, Any]) -> str:
    """ One line, e.g. ``module app.leaks -> .CACHE (list) -> [3] -> Document``. """
    chain: list[dict[str, Any]] = result.get("chain") or []
    parts: list[str] = []
    root = result.get("root")
    for index, hop in enumerate(chain):
        short = _short_type(str(hop.get("type", "?")))
        if index == 0:
            if root is not None:
                parts.append(_format_root(str(root["kind"]), str(hop.get("name", root["name"]))))
            elif "name" in hop:
                parts.append(f"{short} {hop['name']}")
            else:
                parts.append(short)
            continue
        via = hop.get("via") or "referent"
        if index == len(chain) - 1:
            parts.append(f"{via} -> {short}")
        else:
            parts.append(f"{via} ({short})")
    line = " -> ".join(parts) if parts else "(empty chain)"
    if not result.get("complete", False):
        line += f" (incomplete: {result.get('reason') or 'unknown'})"
    return line


def _format_root(kind: str, name: str) -> str:
    if kind == "thread":
        return f"thread '{name}'"
    if kind == "callback":
        return name
    return f"{kind} {name}"


# --- roots -----------------------------------------------------------------


class _RootClassifier:
    """ Decides whether an object is a root: ``(kind, name)`` or ``None``. """

    def __init__(self, roots: Roots | None) -> None:
        self._threads = roots.threads if roots is not None else {}
        self._frame_locals = roots.frame_locals if roots is not None else {}
        tornado_ioloop = sys.modules.get("tornado.ioloop")
        self._periodic_type: type | None = getattr(tornado_ioloop, "PeriodicCallback", None)

    def __call__(self, obj: object) -> tuple[str, str] | None:
        try:
            return self._classify(obj)
        except Exception:  # an odd object is not a root; it costs itself only
            return None

    def _classify(self, obj: object) -> tuple[str, str] | None:
        # Only type(obj) decides what to look at (isinstance would consult
        # obj.__class__, user code); attributes are read from the instance
        # dict, never through the object's __getattribute__.
        if is_a(obj, types.ModuleType):
            name = _module_name(obj)
            if name is not None and sys.modules.get(name) is obj:
                return ("module", name)
            return None
        if id(obj) in self._threads:
            return ("thread", _thread_name(obj))
        if is_a(obj, threading.Thread):
            # Thread's own is_alive (not a subclass's), and only when the
            # class leaves attribute access alone.
            if _plain_attributes(type(obj)) and threading.Thread.is_alive(obj):  # type: ignore[arg-type]
                return ("thread", _thread_name(obj))
            return None
        if self._periodic_type is not None and is_a(obj, self._periodic_type):
            state = _instance_dict(obj) or {}
            if state.get("_running") is not True:
                return None
            interval_ms = state.get("callback_time")
            if type(interval_ms) in (int, float):
                return ("callback", f"tornado PeriodicCallback every {interval_ms:g} ms")
            return ("callback", "tornado PeriodicCallback")
        if is_a(obj, asyncio.Handle):
            if asyncio.Handle.cancelled(obj):  # type: ignore[arg-type]
                return None
            return ("callback", f"asyncio {type_name(obj).rsplit('.', 1)[-1]}")
        description = self._frame_locals.get(id(obj))
        if description is not None:
            return ("frame", description.removeprefix("frame "))
        if type(obj) is types.FrameType:
            return ("frame", _describe_frame(obj))
        return None


def _thread_name(thread: object) -> str:
    name = (_instance_dict(thread) or {}).get("_name")
    return name if type(name) is str else "?"


def _plain_attributes(kind: type) -> bool:
    """ True when ``kind`` reads attributes the way ``object`` does (no
    ``__getattribute__`` or ``__getattr__`` of its own in its MRO). """
    for klass in type_mro(kind):
        namespace = class_dict(klass)
        if klass is not object and ("__getattribute__" in namespace or "__getattr__" in namespace):
            return False
    return True


def _module_name(module: object) -> str | None:
    """ A module's ``__name__`` from its namespace (no module ``__getattr__``). """
    namespace = _MODULE_DICT.__get__(module)
    name = namespace.get("__name__") if type(namespace) is dict else None
    return name if type(name) is str else None


_MODULE_DICT: Any = vars(types.ModuleType)["__dict__"]


def _describe_frame(frame: types.FrameType) -> str:
    code = frame.f_code
    qualname = getattr(code, "co_qualname", code.co_name)  # co_qualname: 3.11+
    return f"{qualname} ({code.co_filename}:{frame.f_lineno})"


def _frame_local_ids(frame: types.FrameType) -> list[tuple[str, int]]:
    """ ``(name, id(value))`` of a frame's locals, free variables excluded.

    A free variable lives in a cell that the closure's function holds, which
    the garbage collector does see; recording it here would hide that path.
    Read in place, without changing the frame or a ``locals()`` dict.
    """
    return _frames.local_ids(frame) or []


def _local_name_of(frame: object, dst: object) -> str | None:
    """ The name of the local of ``frame`` that refers to ``dst``, read in place. """
    if type(frame) is not types.FrameType:
        return None
    wanted = id(dst)
    for name, value_id in _frames.local_ids(frame) or ():
        if value_id == wanted:
            return name
    return None


# --- the search ------------------------------------------------------------


def _first_referent_in(source: object, wanted_ids: set[int]) -> int | None:
    for referent in get_referents(source):  # gc.get_referents, safe on 3.12 (gh-122695)
        if id(referent) in wanted_ids:
            return id(referent)
    return None


# --- building the answer ---------------------------------------------------


def _build_hops(
    path: list[object], root_info: tuple[str, str] | None, roots: Roots | None, *, values: bool = False,
) -> list[dict[str, Any]]:
    """ Hops from ``path[0]`` (root or deepest object) to ``path[-1]``. """
    hops: list[dict[str, Any]] = []
    if root_info is not None and root_info[0] == "frame" and roots is not None:
        site = roots.frame_sites.get(id(path[0]))
        if site is not None and type(path[0]) is not types.FrameType:
            # The frame itself is not an object we can reach: a synthetic hop.
            hops.append({"type": "builtins.frame", "via": None, "name": site[0]})
            hops.append({"type": _type_name(path[0]), "via": f"local '{site[1]}'"})
            if values:
                hops[-1]["value"] = safe_repr(path[0])
            _append_hops(hops, path, 0, values=values)
            return hops
    first: dict[str, Any] = {"type": _type_name(path[0]), "via": None}
    if root_info is not None:
        first["name"] = root_info[1]
    if values:
        first["value"] = safe_repr(path[0])
    hops.append(first)
    _append_hops(hops, path, 0, values=values)
    return hops


def _append_hops(hops: list[dict[str, Any]], path: list[object], start: int, *, values: bool = False) -> None:
    """ Append hops for ``path[start+1:]``, collapsing internal containers. """
    i = start
    while i < len(path) - 1:
        src = path[i]
        j = i + 1
        internals = _internal_ids(src)
        # Skip over src's own internals (its __dict__, closure tuple and
        # cells, partial args) unless one of them is the target itself.
        while j < len(path) - 1 and id(path[j]) in internals:
            j += 1
        hop = {"type": _type_name(path[j]), "via": describe_edge(src, path[j])}
        if values:
            hop["value"] = safe_repr(path[j])
        hops.append(hop)
        i = j


def _internal_ids(obj: object) -> set[int]:
    try:
        return _internal_ids_of(obj)
    except Exception:  # an odd object: no internals to collapse
        return set()


def _internal_ids_of(obj: object) -> set[int]:
    ids: set[int] = set()
    if type(obj) is types.FunctionType:
        closure = obj.__closure__
        if closure is not None:
            ids.add(id(closure))
            ids.update(id(cell) for cell in closure)
        return ids
    if is_a(obj, functools.partial):
        ids.add(id(_PARTIAL_ARGS.__get__(obj)))
        ids.add(id(_PARTIAL_KEYWORDS.__get__(obj)))
    if is_a(obj, type):
        ids.update(id(r) for r in gc.get_referents(class_dict(obj)))  # type: ignore[arg-type]
        return ids
    instance_dict = _instance_dict(obj)
    if instance_dict is not None:
        ids.add(id(instance_dict))
    return ids


_PARTIAL_FUNC: Any = vars(functools.partial)["func"]
_PARTIAL_ARGS: Any = vars(functools.partial)["args"]
_PARTIAL_KEYWORDS: Any = vars(functools.partial)["keywords"]
_C_DICT_DESCRIPTOR = type(vars(type("_Probe", (), {}))["__dict__"])  # getset_descriptor


def _instance_dict(obj: object) -> dict[str, Any] | None:
    """ ``obj.__dict__`` without running user code: modules' own slot, or
    the C ``__dict__`` descriptor Python gives a class (a ``__dict__``
    property or ``__getattribute__`` of the class is never called). """
    try:
        if is_a(obj, types.ModuleType):
            d: object = _MODULE_DICT.__get__(obj)
            return d if type(d) is dict else None
        if is_a(obj, type):
            return None
        for klass in type_mro(type(obj)):
            descriptor = class_dict(klass).get("__dict__")
            if descriptor is None:
                continue
            if type(descriptor) is not _C_DICT_DESCRIPTOR:
                return None  # the class made __dict__ its own: do not call it
            d = descriptor.__get__(obj, klass)
            return d if type(d) is dict else None
    except Exception:  # a descriptor that refuses this object
        return None
    return None


def _describe_edge(src: Any, dst: object) -> str:
    # Dispatch on type(src) only, and read containers through their base
    # type's methods: a subclass's items()/__iter__/__getattribute__ is
    # user code.
    kind = type(src)
    if kind is types.FrameType:
        name = _local_name_of(src, dst)
        return f"local '{name}'" if name is not None else "referent"
    if kind in (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType):
        frame = getattr(src, "gi_frame", None) or getattr(src, "cr_frame", None) \
            or getattr(src, "ag_frame", None)
        name = _local_name_of(frame, dst)
        return f"local '{name}'" if name is not None else "referent"
    if kind is types.CellType:
        return "cell_contents"
    if kind is types.FunctionType:
        return _describe_function_edge(src, dst)
    if kind is types.MethodType:
        if src.__self__ is dst:
            return "__self__"
        if src.__func__ is dst:
            return "__func__"
        return "referent"
    if is_a(src, functools.partial):
        func, args, keywords = (_PARTIAL_FUNC.__get__(src), _PARTIAL_ARGS.__get__(src),
                                _PARTIAL_KEYWORDS.__get__(src))
        if func is dst:
            return ".func"
        if args is dst:
            return ".args"
        if keywords is dst:
            return ".keywords"
        for index, value in enumerate(tuple.__iter__(args)):
            if value is dst:
                return f".args[{index}]"
        for key, value in list(dict.items(keywords)):
            if value is dst:
                return f".keywords[{_key_repr(key)}]"
    if is_a(src, dict):
        return _describe_mapping_edge(dict.items(src), dst)
    if is_a(src, list) or is_a(src, tuple):
        items = list.__iter__(src) if is_a(src, list) else tuple.__iter__(src)
        for index, value in enumerate(items):
            if value is dst:
                return f"[{index}]"
        return "referent"
    if is_a(src, (set, frozenset)):
        return "{member}"
    if is_a(src, type):
        for name, value in list(class_dict(src).items()):
            if value is dst:
                return f".{name}"
        for attr in ("__mro__", "__bases__"):
            if type.__getattribute__(src, attr) is dst:
                return attr
        return "referent"
    return _describe_attribute_edge(src, dst)


def _describe_function_edge(src: types.FunctionType, dst: object) -> str:
    closure = src.__closure__ or ()
    freevars = src.__code__.co_freevars
    if closure is dst:
        return "__closure__"
    for index, cell in enumerate(closure):
        name = freevars[index] if index < len(freevars) else str(index)
        if cell is dst:
            return f"closure cell '{name}'"
        try:
            contents = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if contents is dst:
            return f"closure '{name}'"
    for attr in ("__globals__", "__defaults__", "__kwdefaults__", "__code__", "__dict__"):
        if getattr(src, attr, None) is dst:
            return attr
    for index, value in enumerate(src.__defaults__ or ()):
        if value is dst:
            return f"__defaults__[{index}]"
    return _describe_attribute_edge(src, dst)


def _describe_mapping_edge(items: Iterable[tuple[object, object]], dst: object) -> str:
    for key, value in list(items):
        if value is dst:
            return f"[{_key_repr(key)}]"
        if key is dst:
            return "<key>"
    return "referent"


def _describe_attribute_edge(src: object, dst: object) -> str:
    instance_dict = _instance_dict(src)
    if instance_dict is not None:
        if instance_dict is dst:
            return "__dict__"
        for name, value in list(instance_dict.items()):
            if value is dst:
                return f".{name}"
    for klass in type_mro(type(src)):
        for name, descriptor in list(class_dict(klass).items()):
            if type(descriptor) is types.MemberDescriptorType:
                try:
                    value = descriptor.__get__(src, klass)
                except AttributeError:  # an unset slot
                    continue
                if value is dst:
                    return f".{name}"
    if type(src) is dst:
        return "__class__"
    return "referent"


def _key_repr(key: object) -> str:
    """ The repr of a simple key (str, number, bool, None, tuples of those). """
    if _is_simple_key(key):
        text = repr(key)
        if len(text) > _MAX_KEY_REPR_CHARS:
            text = text[:_MAX_KEY_REPR_CHARS - 3] + "..."
        return text
    return f"<{_type_name(key)} key>"


def _is_simple_key(key: object) -> bool:
    if key is None or type(key) in (str, int, float, bool):
        return True
    if type(key) is tuple:
        return all(_is_simple_key(item) for item in key)
    return False


def _type_name(obj: object) -> str:
    name = type_name(obj)
    return name if "." in name else f"builtins.{name}"


def _short_type(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1]

