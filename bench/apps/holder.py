""" Where ``realistic.py?leak=1`` keeps its Document: a module-level list, the
most common leak there is.  The chain-search benchmark asks memwatch why those
Documents are alive once their sessions are destroyed. """
from __future__ import annotations

from typing import Any

__all__ = ("LEAKED",)

#: Documents of sessions opened with ``?leak=1``; never emptied.
LEAKED: list[Any] = []
