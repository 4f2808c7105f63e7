""" Real objects for the reference-chain tests: a module global that holds
things, and a class to leak.  Imported as a proper module so that it is a
root the search can end at.
"""
from __future__ import annotations

__all__ = ("HOLD", "Leak", "Slotted")

#: The tests append to it and clear it in a ``finally``.
HOLD: list[object] = []


class Leak:
    """ Something to keep alive by accident; weak-referenceable. """


class Slotted:
    """ Holds its item in a slot, not a ``__dict__``. """

    __slots__ = ("__weakref__", "item")

    def __init__(self, item: object) -> None:
        self.item = item
