"""Process-wide preferences and a shared data cache for the census test apps.

- ``PREFS`` (panel_leak_prefs.py): a ``param.Parameterized`` made once per
  process.  Passing ``PREFS.param.page_size`` as a widget's value makes param
  link the two both ways: ``PREFS`` gets a watcher that refers to the widget,
  which refers to its DataFrame.  Nothing unlinks it when the session ends:
  ``tests.apps.prefs.PREFS`` -> param watchers -> the session's Tabulator ->
  its ~2 MB DataFrame.  No Document and no Model stay alive (Panel detaches
  its Models at cleanup).
- ``CACHE`` (panel_cache_once.py): a DataFrame made by the first session and
  shared by every later one: bounded, not a leak.

:func:`reset` drops both (tests call it in teardown).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import param

#: Rows of the ~2 MB frames (5 float64 columns).
N_ROWS = 50_000


class Prefs(param.Parameterized):
    """User preferences shared by every session of the process."""

    page_size = param.Integer(20)


PREFS = Prefs()

CACHE: dict[str, Any] = {}


def frame(seed: int = 0) -> pd.DataFrame:
    """A fresh ~2 MB DataFrame."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(rng.random((N_ROWS, 5)), columns=list("abcde"))


def cached_frame() -> pd.DataFrame:
    """The process-wide frame, made by the first caller."""
    if "frame" not in CACHE:
        CACHE["frame"] = frame()
    return CACHE["frame"]


def reset() -> None:
    """Forget the shared frame and unlink every widget from ``PREFS``."""
    global PREFS
    CACHE.clear()
    PREFS = Prefs()
