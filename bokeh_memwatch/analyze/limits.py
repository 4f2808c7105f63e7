""" The memory limit: when RSS is close enough to the container's limit to
act (:class:`LimitGuard`), RSS as a fraction of it, and where recycling
starts (``--memwatch-recycle-at``: a fraction or a size).  What is written
then is :mod:`bokeh_memwatch.report.limit_report`.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = (
    "LimitGuard",
    "RecycleThreshold",
    "parse_recycle_at",
    "parse_size",
)

class LimitGuard:
    """ Decides when RSS is close enough to the limit to act.

    Args:
        fraction: act at ``rss >= fraction * limit``; 0 never acts.
        min_interval_s: least time between two actions.
        clock: monotonic seconds (injectable).
    """

    def __init__(self, *, fraction: float, min_interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.fraction = fraction
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._last: float | None = None
        self.triggered_total = 0
        self.suppressed_total = 0

    def check(self, rss_bytes: float | None, limit_bytes: float | None) -> bool:
        """ True when an action is due now (and counts it as taken). """
        if not self.fraction or not rss_bytes or not limit_bytes:
            return False
        if rss_bytes < self.fraction * limit_bytes:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self.min_interval_s:
            self.suppressed_total += 1
            return False
        self._last = now
        self.triggered_total += 1
        return True

    def retry_in_s(self) -> float | None:
        if self._last is None:
            return None
        return max(0.0, self._last + self.min_interval_s - self._clock())


def fraction_of(rss_bytes: float | None, limit_bytes: float | None) -> float | None:
    if not rss_bytes or not limit_bytes:
        return None
    return round(rss_bytes / limit_bytes, 6)


_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """ ``"1.5GiB"``, ``"800Mi"``, ``"2G"``, ``"500MB"`` (SI and IEC units,
    Kubernetes' spellings too) to bytes.  Raises ``ValueError``. """
    match = _SIZE.match(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 1.5GiB, 800Mi, 2G, 500MB)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:
        raise ValueError(f"size must be at least one byte, got {text!r}")
    return int(value)


@dataclass(frozen=True)
class RecycleThreshold:
    """ Where recycling starts: a fraction of the memory limit, or bytes. """

    text: str
    fraction: float | None = None
    rss_bytes: int | None = None

    def bytes_for(self, limit_bytes: float | None) -> float | None:
        """ The threshold in bytes, given the memory limit (None: unknown). """
        if self.rss_bytes is not None:
            return float(self.rss_bytes)
        if self.fraction is None or not limit_bytes:
            return None
        return self.fraction * limit_bytes

    def describe(self) -> str:
        if self.rss_bytes is not None:
            return f"an RSS of {self.text}"
        return f"{self.fraction:.0%} of the memory limit"


def parse_recycle_at(text: str | None) -> RecycleThreshold | None:
    """ ``--memwatch-recycle-at``: ``""``/``"off"``/``"0"``: off; a number
    in (0, 1] or a percentage (``"85%"``): a fraction of the memory limit;
    a size with a unit (``"1.5GiB"``): RSS bytes.  Raises ``ValueError``. """
    raw = (text or "").strip()
    if raw.lower() in ("", "off", "0", "none"):
        return None
    try:
        if raw.endswith("%"):
            fraction = float(raw[:-1]) / 100
        elif re.fullmatch(r"\d*\.?\d+", raw):
            fraction = float(raw)
        else:
            return RecycleThreshold(raw, rss_bytes=parse_size(raw))
    except ValueError as e:
        raise ValueError(f"--memwatch-recycle-at: {e}") from None
    if not 0 < fraction <= 1:
        raise ValueError(
            f"--memwatch-recycle-at: {raw!r} is neither a fraction of the memory limit in (0, 1] "
            "nor a size with a unit (1.5GiB, 800Mi)"
        )
    return RecycleThreshold(raw, fraction=fraction)
