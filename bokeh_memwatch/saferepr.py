""" The one way memwatch turns a foreign object into text, and the one way
it encodes JSON (including answers a heap worker encoded, which the event
loop splices without decoding).

An object's ``__repr__`` is user code: it can raise, return something huge,
or never return.  :func:`safe_repr` truncates, catches everything, and where
it can (the main thread of a process with ``SIGALRM``, which is what a
forked heap worker is) gives up after a deadline.  Values are shown only when
the operator opted in (``--memwatch-show-values``); by default memwatch shows
type names, attribute names, simple keys and sizes only.

The same goes for everything else about a foreign object: its
``__getattribute__``, a ``__class__`` property (which ``isinstance`` consults),
``__sizeof__``, ``__len__``, ``__eq__``/``__hash__`` and a metaclass's
``__repr__`` are user code.  Heap work reads objects only through the helpers
here, which use ``type(obj)`` and the C-level descriptors of ``type`` itself:
:func:`type_name`, :func:`class_name`, :func:`type_mro`, :func:`class_dict`,
:func:`is_a`, :func:`safe_sizeof`.  One odd object then costs its own row
(a fallback name or size), never the feature.
"""
from __future__ import annotations

import gc
import json
import logging
import reprlib
import signal
import sys
import threading
import types
from collections.abc import Iterable, Mapping
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

__all__ = (
    "class_dict",
    "class_name",
    "describe_exception",
    "error_section",
    "is_a",
    "json_array",
    "json_default",
    "json_lines",
    "merge_json_objects",
    "render_json",
    "safe_repr",
    "safe_sizeof",
    "type_mro",
    "type_name",
)

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


class _ReprTimeout(BaseException):
    """ Raised from the alarm handler; a BaseException so user code's
    ``except Exception`` in ``__repr__`` cannot swallow it. """


# ``type``'s own descriptors: reading a class through them runs no
# metaclass code (a metaclass may define __getattribute__ or properties).
_TYPE_MRO: Any = type.__dict__["__mro__"]
_TYPE_DICT: Any = type.__dict__["__dict__"]
_TYPE_MODULE: Any = type.__dict__["__module__"]
_TYPE_QUALNAME: Any = type.__dict__["__qualname__"]
_C_METHODS = (types.MethodDescriptorType, types.WrapperDescriptorType, types.BuiltinFunctionType)

#: What the garbage collector adds in front of a tracked object (what
#: ``sys.getsizeof`` adds to ``__sizeof__``).
_GC_HEADER_BYTES = sys.getsizeof([]) - [].__sizeof__()


def type_name(obj: object) -> str:
    """ ``module.QualName`` of the object's type, without touching the
    object or running its metaclass's code (``QualName`` for builtins). """
    return class_name(type(obj))


def class_name(kind: type) -> str:
    """ ``module.QualName`` of a class, read through ``type``'s descriptors;
    ``"?"`` for the part a class made unreadable. """
    try:
        module = _TYPE_MODULE.__get__(kind)
    except Exception:
        module = None
    try:
        qualname = _TYPE_QUALNAME.__get__(kind)
    except Exception:
        qualname = "?"
    if type(qualname) is not str:
        qualname = "?"
    if type(module) is not str or module == "builtins":
        return str(qualname)
    return f"{module}.{qualname}"


def type_mro(kind: type) -> tuple[type, ...]:
    """ ``kind.__mro__`` without the metaclass's attribute lookup. """
    mro = _TYPE_MRO.__get__(kind)
    return mro if type(mro) is tuple else (kind,)


def class_dict(kind: type) -> Mapping[str, Any]:
    """ ``vars(kind)`` (the class's own namespace, a mappingproxy) without
    the metaclass's attribute lookup. """
    namespace = _TYPE_DICT.__get__(kind)
    return namespace if type(namespace) is types.MappingProxyType else {}


def is_a(obj: object, cls: type | tuple[type, ...]) -> bool:
    """ ``isinstance(obj, cls)`` from ``type(obj)`` alone.

    ``isinstance`` also consults ``obj.__class__`` (a property, or the
    object's ``__getattribute__``: user code that may raise or hang) when
    the type does not match; this never does.  ``cls`` must be a plain
    class (or tuple of them) whose metaclass has no ``__subclasscheck__``.
    """
    return issubclass(type(obj), cls)


def safe_sizeof(obj: object) -> int:
    """ ``sys.getsizeof(obj)`` unless the type's ``__sizeof__`` is Python
    code (user code, which may raise, hang or lie): then the object's basic
    size (``object.__sizeof__`` plus the gc header).  Never raises. """
    kind = type(obj)
    method: object = None
    try:
        for klass in type_mro(kind):
            method = class_dict(klass).get("__sizeof__")
            if method is not None:
                break
    except Exception:
        method = None
    if type(method) in _C_METHODS:
        try:
            return sys.getsizeof(obj)
        except Exception:  # a C type that refuses: fall through
            pass
    try:
        size = object.__sizeof__(obj)
    except Exception:
        return 0
    return size + (_GC_HEADER_BYTES if gc.is_tracked(obj) else 0)


def json_default(value: object) -> str:
    """ ``json.dumps(default=...)`` for what JSON cannot hold (a path, a
    numpy scalar): its ``str``.  Reports and API answers use this one. """
    return str(value)


def describe_exception(e: BaseException, *, limit: int = 500) -> str:
    """ ``Type: message`` of an exception, at most ``limit`` characters;
    survives a broken ``__str__``. """
    try:
        text = f"{type(e).__qualname__}: {e}"
    except Exception:  # a broken __str__
        text = type(e).__qualname__
    return text[:limit]


def error_section(e: BaseException) -> dict[str, str]:
    """ What a report holds in place of a section that failed. """
    return {"error": describe_exception(e)}


def render_json(value: object, *, indent: int | None = None) -> bytes:
    """ ``value`` as the API encodes it: strict JSON (no NaN), UTF-8. """
    return json.dumps(value, allow_nan=False, default=json_default, indent=indent).encode()


def merge_json_objects(head: bytes, tail: bytes) -> bytes:
    """ One JSON object with the members of two encoded ones, ``head``'s
    first, without decoding either (``tail`` may be large).  The caller keeps
    their keys apart. """
    head, tail = head.strip(), tail.strip()
    if not (head.startswith(b"{") and head.endswith(b"}") and tail.startswith(b"{") and tail.endswith(b"}")):
        raise ValueError("both parts must be encoded JSON objects")
    if tail[1:-1].strip() == b"":
        return head
    if head[1:-1].strip() == b"":
        return tail
    return head[:-1] + b", " + tail[1:]


def json_lines(values: Iterable[object]) -> bytes:
    """ Encode each value on its own line, for :func:`json_array`. """
    return b"\n".join(render_json(v) for v in values)


def json_array(lines: bytes, limit: int) -> bytes:
    """ A JSON array of the first ``limit`` values of :func:`json_lines`
    output, cut without decoding them (encoded JSON holds no raw newline). """
    if not lines or limit <= 0:
        return b"[]"
    return b"[" + b",".join(lines.split(b"\n", limit)[:limit]) + b"]"


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def safe_repr(obj: object, *, limit: int = 80, timeout_s: float = 0.05) -> str:
    """ A short repr of ``obj`` that never raises and, where signals can be
    used, never takes longer than ``timeout_s``.  Where they cannot (not the
    main thread) it returns a placeholder instead of calling user code. """
    if not _can_alarm():
        return f"<{type_name(obj)}: value not shown outside the heap worker>"

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise _ReprTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        text = _REPR.repr(obj)
    except _ReprTimeout:
        return f"<{type_name(obj)}: repr took longer than {timeout_s:g} s>"
    except BaseException as e:  # user code may raise anything, even SystemExit
        return f"<{type_name(obj)}: repr raised {type(e).__name__}>"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return text if len(text) <= limit else text[: limit - 3] + "..."
