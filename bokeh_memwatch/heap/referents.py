""" ``gc.get_referents``, safe on every CPython memwatch supports.

On CPython 3.12 (and 3.13 before its final release) the ``_asyncio``
module's traverse function visits its free list of ``FutureIter`` objects:
memory already freed.  The garbage collector copes, but
``gc.get_referents(_asyncio)`` hands those dead objects out as live ones and
takes references to them: a freed object is freed twice, and the next
collection loops forever or crashes (CPython gh-122695; any iteration over a
finished ``Future``, which every asyncio server does, fills that list).
A whole-heap walk that asks every tracked object for its referents (as
pympler's ``muppy.get_objects`` does, and the type summary) reaches that
module: on 3.12.1 the type summary hung or killed the process it ran in.
Everything in memwatch that asks an arbitrary object for its referents goes
through :func:`get_referents`.
"""
from __future__ import annotations

import gc
import logging
import sys
import types
from typing import Any

log = logging.getLogger(__name__)

__all__ = ("ASYNCIO_TRAVERSE_UNSAFE", "get_referents", "get_referents_of")

#: True where ``gc.get_referents`` on the ``_asyncio`` module returns freed
#: objects (gh-122695: 3.12.x and 3.13 pre-releases; 3.10, 3.11 and 3.13.0
#: return its ``__dict__`` alone or only live objects).  The whole 3.12
#: series is treated as affected: the cost is a few module-state referents
#: nobody needs, the alternative a hung server.
ASYNCIO_TRAVERSE_UNSAFE: bool = (3, 12) <= sys.version_info < (3, 13, 0, "final")


def _is_asyncio_module(obj: object) -> bool:
    return type(obj) is types.ModuleType and obj.__dict__.get("__name__") == "_asyncio"


def get_referents(obj: object) -> list[Any]:
    """ ``gc.get_referents(obj)``; for the ``_asyncio`` module where its
    traverse is unsafe (see the module docstring), its ``__dict__`` alone,
    which is what 3.10 and 3.11 return for it. """
    if ASYNCIO_TRAVERSE_UNSAFE and _is_asyncio_module(obj):
        return [obj.__dict__]
    return gc.get_referents(obj)



def get_referents_of(objs: list[Any]) -> list[Any]:
    """ ``gc.get_referents(*objs)`` (one call for many objects, as a
    whole-heap scan wants), with :func:`get_referents`'s answer for the
    ``_asyncio`` module where its traverse is unsafe.  Finds the module by
    identity (``id``), never by comparing objects (``==`` runs their code). """
    if ASYNCIO_TRAVERSE_UNSAFE:
        module = sys.modules.get("_asyncio")
        if module is not None and id(module) in set(map(id, objs)):
            out: list[Any] = []
            for obj in objs:
                out.extend(get_referents(obj))
            return out
    return gc.get_referents(*objs)
