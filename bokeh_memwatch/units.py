""" How memwatch writes bytes, durations and times, for people.

One set of rules for every renderer: the CLI report (snapshots.format_report),
the advice texts, the Panel admin tab and the dashboard, whose
``dashboard.js`` mirrors these functions (``fmtBytes``, ``fmtDuration``,
``fmtTime``; tests/test_dashboard.py runs both on the same inputs).

* bytes: IEC units (1 KiB = 1024 B): ``"0 B"``, ``"512 B"``, ``"1.5 KiB"``,
  ``"160.0 KiB"``, ``"1.2 MiB"``; one decimal above a byte, a sign for
  negative values (growth), never ``"0.000 MB"``.
* durations: ``"850 ms"`` below a second, ``"7.9 s"`` below a minute,
  ``"3 min 5 s"``, ``"2 h 4 min"``, ``"3 d 1 h"``; ``0`` or None of a setting
  that turns something off reads ``"off"`` (:func:`format_interval_ms`).
* times of day: 24 h ``"HH:MM:SS"``, in local time.
"""
from __future__ import annotations

import logging
import math
import time

log = logging.getLogger(__name__)

__all__ = (
    "format_bytes",
    "format_clock",
    "format_duration",
    "format_interval_ms",
)

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")

#: What a missing value reads as (an en dash, as dashboard.js writes it).
MISSING = "\u2013"


def _round1(value: float) -> str:
    """ One decimal, ties away from zero (as ``dashboard.js`` rounds: Python's
    ``f"{x:.1f}"`` and JavaScript's ``toFixed(1)`` break ties differently). """
    return f"{math.floor(value * 10 + 0.5) / 10:.1f}"


def format_bytes(n: float | None) -> str:
    """ ``1536 -> "1.5 KiB"``: IEC units, one decimal (whole bytes below
    1 KiB), ``"-"`` prefix for negative values; None or NaN: ``MISSING``. """
    if n is None or not math.isfinite(n):
        return MISSING
    sign = "-" if n < 0 else ""
    value = abs(float(n))
    if value < 1024:
        return f"{sign}{math.floor(value + 0.5)} B"
    for unit in _UNITS[1:]:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{sign}{_round1(value)} {unit}"


def format_duration(seconds: float | None) -> str:
    """ ``0.1115 -> "112 ms"``, ``7.911 -> "7.9 s"``, ``185 -> "3 min 5 s"``,
    ``7440 -> "2 h 4 min"``, ``262800 -> "3 d 1 h"``; None or NaN: ``MISSING``. """
    if seconds is None or not math.isfinite(seconds):
        return MISSING
    sign = "-" if seconds < 0 else ""
    s = abs(float(seconds))
    if s < 1:
        return f"{sign}{math.floor(s * 1000 + 0.5)} ms"
    if s < 60:
        return f"{sign}{_round1(s)} s" if s < 10 else f"{sign}{math.floor(s + 0.5)} s"
    whole = math.floor(s + 0.5)
    if whole < 3600:
        return f"{sign}{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{sign}{whole // 3600} h {(whole % 3600) // 60} min"
    return f"{sign}{whole // 86400} d {(whole % 86400) // 3600} h"


def format_interval_ms(ms: float | None) -> str:
    """ A setting in milliseconds where 0 (or None) means "never": ``"off"``. """
    if ms is None or ms == 0:
        return "off"
    return format_duration(ms / 1000)


def format_clock(unix_s: float | None) -> str:
    """ A time of day, 24 h, local time: ``"22:27:05"``. """
    if unix_s is None or not math.isfinite(unix_s):
        return MISSING
    return time.strftime("%H:%M:%S", time.localtime(unix_s))
