""" Read the locals of a frame (another thread's, running) without changing it.

``frame.f_locals`` is not a read on CPython 3.10-3.12: for a function frame
it calls ``PyFrame_FastToLocalsWithError``, which writes every local into the
dict the frame keeps for ``locals()``.  A function that did
``params = locals()`` holds that very dict, so reading ``f_locals`` from
another thread adds keys to it (``params`` itself, later locals), overwrites
edits the function made and, under a tracer, can even be copied back into
the function's variables.  On 3.13 (PEP 667) ``f_locals`` is a
``FrameLocalsProxy`` that reads the variables in place.

:func:`local_ids` gives ``(name, id(value))`` for the bound variables of a
frame without ever touching that dict:

* 3.13+: the ``FrameLocalsProxy`` (a read);
* 3.12: ``PyFrame_GetVar`` (public C API since 3.12; reads one variable in
  place), through ``ctypes.pythonapi``;
* 3.10 and 3.11: no public API reads a variable in place, so the frame's
  ``localsplus`` array is copied (one C call, ``PyBytes_FromStringAndSize``,
  made while holding the GIL, so the thread cannot move on mid-copy) and the
  slots are read as addresses (ids), never turned back into objects.  The
  copy is checked against fields that must match (``f_code``, and on 3.11
  the frame's back pointer ``frame_obj``); a mismatch gives ``None``.
  The layouts are those of ``Include/cpython/frameobject.h`` (3.10) and
  ``Include/internal/pycore_frame.h`` (3.11), fixed within a minor version;
  ``tests/test_frames.py`` fails loudly if they change.

On 3.10 and 3.11 a cell variable's slot holds the cell: its id is the
cell's, not the value's (a chain then goes ``local 'x'`` -> ``cell_contents``).
Free variables (cells owned by the enclosing function) are left out.

Only frames of "optimized" code (functions) have fast locals.  For other
frames (module and class bodies, ``exec``) the namespace is a real dict:
:func:`local_ids` reads it only when the code has no fast slots at all, so
that ``f_locals`` is a plain attribute read on every version.
"""
from __future__ import annotations

import ctypes
import inspect
import logging
import sys
import types
from typing import Any

log = logging.getLogger(__name__)

__all__ = ("local_ids",)

_PTR = ctypes.sizeof(ctypes.c_void_p)

_bytes_at = ctypes.pythonapi.PyBytes_FromStringAndSize
_bytes_at.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
_bytes_at.restype = ctypes.py_object

_get_var = getattr(ctypes.pythonapi, "PyFrame_GetVar", None)  # 3.12+
if _get_var is not None:
    _get_var.argtypes = (ctypes.py_object, ctypes.py_object)
    _get_var.restype = ctypes.py_object

#: 3.10 ``PyFrameObject``: offsets of ``f_code`` and ``f_valuestack`` (which
#: points just past the last local), after ``PyObject_VAR_HEAD`` and
#: ``f_back``; ``f_localsplus`` is inline at the end of the object.
_PY310_F_CODE = 4 * _PTR
_PY310_F_VALUESTACK = 8 * _PTR

#: 3.11 ``PyFrameObject``: ``f_frame`` (after ``PyObject_HEAD`` and
#: ``f_back``) and ``_f_frame_data`` (after ``f_trace``, ``int f_lineno`` and
#: three chars), where a finished frame keeps its data.  In
#: ``_PyInterpreterFrame``: ``f_code``, ``frame_obj``, ``owner`` (after
#: ``previous``, ``prev_instr``, ``int stacktop``, ``bool is_entry``) and
#: ``localsplus`` (padded to a pointer).
_PY311_F_FRAME = 3 * _PTR
_PY311_F_FRAME_DATA = 6 * _PTR
_PY311_F_CODE = 4 * _PTR
_PY311_FRAME_OBJ = 5 * _PTR
_PY311_OWNER = 8 * _PTR + 5
_PY311_OWNED_BY_FRAME_OBJECT = 2
_PY311_LOCALSPLUS = 9 * _PTR


def local_ids(frame: types.FrameType) -> list[tuple[str, int]] | None:
    """ ``[(name, id(value)), ...]`` of a frame's bound variables, read in place.

    Args:
        frame: any frame, typically from ``sys._current_frames()`` (a frame
            running in another thread) or a generator's ``gi_frame``.

    Returns:
        One pair per bound local and cell variable (free variables left
        out; unbound ones too), in the code's order; or ``None`` when the
        frame cannot be read without changing it (an unknown layout, a copy
        that failed its checks, class bodies on 3.10-3.12).

    Never raises; never calls ``locals()`` or reads ``f_locals`` of a function
    frame before 3.13; keeps no reference to any value.
    """
    try:
        return _local_ids(frame)
    except Exception:  # an odd frame must cost its locals, not the search
        log.debug("cannot read the locals of %r", frame, exc_info=True)
        return None


def _local_ids(frame: types.FrameType) -> list[tuple[str, int]] | None:
    code = frame.f_code
    optimized = bool(code.co_flags & inspect.CO_OPTIMIZED)
    has_slots = bool(code.co_varnames or code.co_cellvars or code.co_freevars)
    if not optimized:
        if has_slots and sys.version_info < (3, 13):
            return None  # f_locals would write the fast slots into the namespace
        namespace = frame.f_locals
        return [(str(name), id(value)) for name, value in list(namespace.items())]
    if sys.version_info >= (3, 13):
        return _local_ids_proxy(frame, code)
    if sys.version_info >= (3, 12):
        return _local_ids_getvar(frame, code, _get_var)
    if sys.version_info >= (3, 11):
        return _local_ids_py311(frame, code)
    return _local_ids_py310(frame, code)


def _local_ids_proxy(frame: types.FrameType, code: types.CodeType) -> list[tuple[str, int]]:
    freevars = set(code.co_freevars)
    proxy = frame.f_locals  # a FrameLocalsProxy: reads the variables in place
    try:
        return [
            (str(name), id(value))
            for name, value in list(proxy.items())
            if name not in freevars
        ]
    finally:
        del proxy


def _local_ids_getvar(
    frame: types.FrameType, code: types.CodeType, get_var: Any,
) -> list[tuple[str, int]]:
    result: list[tuple[str, int]] = []
    seen: set[str] = set()
    for name in (*code.co_varnames, *code.co_cellvars):
        if name in seen:
            continue  # an argument that is also a cell variable
        seen.add(name)
        try:
            value = get_var(frame, name)
        except NameError:  # unbound
            continue
        result.append((name, id(value)))
        del value
    return result


def _slot_names_py311(code: types.CodeType) -> list[str]:
    """ The ``localsplus`` names of a 3.11 code object, in slot order.

    Locals first (arguments that are also cells share their slot), then the
    other cell variables, then the free variables.
    """
    varnames = code.co_varnames
    local_set = set(varnames)
    cells = [name for name in code.co_cellvars if name not in local_set]
    return [*varnames, *cells, *code.co_freevars]


def _local_ids_py311(frame: types.FrameType, code: types.CodeType) -> list[tuple[str, int]] | None:
    names = _slot_names_py311(code)
    size = _PY311_LOCALSPLUS + _PTR * len(names)
    pointer_field = ctypes.c_void_p.from_address(id(frame) + _PY311_F_FRAME)
    # One expression from reading the pointer to the end of the copy: no
    # bytecode in between lets another thread run (and pop the frame).
    data: bytes = _bytes_at(pointer_field.value, size)
    if _word(data, _PY311_F_CODE) != id(code):
        return None
    if _word(data, _PY311_FRAME_OBJ) != id(frame) and not (
        # A finished frame: its data moved into the frame object for good.
        data[_PY311_OWNER] == _PY311_OWNED_BY_FRAME_OBJECT
        and pointer_field.value == id(frame) + _PY311_F_FRAME_DATA
    ):
        return None
    n_free = len(code.co_freevars)
    result: list[tuple[str, int]] = []
    for index, name in enumerate(names[:len(names) - n_free]):
        address = _word(data, _PY311_LOCALSPLUS + _PTR * index)
        if address:
            result.append((name, address))
    return result


def _local_ids_py310(frame: types.FrameType, code: types.CodeType) -> list[tuple[str, int]] | None:
    names = [*code.co_varnames, *code.co_cellvars, *code.co_freevars]
    base = id(frame)
    header: bytes = _bytes_at(base, _PY310_F_VALUESTACK + _PTR)
    if _word(header, _PY310_F_CODE) != id(code):
        return None
    valuestack = _word(header, _PY310_F_VALUESTACK)
    start = valuestack - _PTR * len(names)
    if not base < start <= valuestack:
        return None
    # The frame object owns its locals (3.10): this memory lives as long as it.
    data: bytes = _bytes_at(start, _PTR * len(names))
    n_free = len(code.co_freevars)
    result: list[tuple[str, int]] = []
    for index, name in enumerate(names[:len(names) - n_free]):
        address = _word(data, _PTR * index)
        if address:
            result.append((name, address))
    return result


def _word(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset:offset + _PTR], sys.byteorder)
