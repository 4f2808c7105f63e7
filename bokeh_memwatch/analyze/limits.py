""" Acting before the kernel does: when RSS reaches ``limit_fraction`` of the
container's memory limit, log a warning and write a JSON report (and a
tracemalloc snapshot, when tracing) to disk, at most once per
``limit_min_interval_s``.

The automatic report is deliberately light.  Near the limit, every page a
forked child touches is copied and counted against the same cgroup, so
nothing here walks the heap: no "why alive" chain search and no pympler type
summary (those stay one request away, ``api/report``).  It holds the
summary (with every worker), live sessions, orphans and retained Models, and,
when tracemalloc is tracing, a snapshot file (``tracemalloc.Snapshot.load``)
and its top allocators; the snapshot is taken by the
:class:`~bokeh_memwatch.heap.snapshots.SnapshotManager` in its forked child, which
only copies tracemalloc's own tables.

Files: ``memwatch-limit-<pid>-<UTC time>.json`` (and ``.tracemalloc``) in the
report directory, the newest ``keep`` kept.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..saferepr import error_section, json_default

if TYPE_CHECKING:
    from ..heap.snapshots import SnapshotManager

log = logging.getLogger(__name__)

__all__ = (
    "LimitGuard",
    "LimitReportSource",
    "RecycleThreshold",
    "parse_recycle_at",
    "parse_size",
    "write_limit_report",
)

REPORT_PREFIX = "memwatch-limit-"


class LimitReportSource(Protocol):
    """ What :func:`write_limit_report` reads (a :class:`~bokeh_memwatch.monitor.Monitor`). """

    @property
    def snapshots(self) -> SnapshotManager | None: ...

    def summary(self) -> dict[str, Any]: ...

    def orphans(self) -> dict[str, list[dict[str, Any]]]: ...

    def sessions(self, app: str | None = None) -> list[dict[str, Any]]: ...


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


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


async def write_limit_report(
    memwatch: LimitReportSource, directory: str, *, rss_bytes: float, limit_bytes: float, fraction: float,
    keep: int = 10, allocators_limit: int = 25, reason: str = "memory_limit", extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """ Write the light report (and a snapshot when tracing) to ``directory``;
    returns ``{"report": path, "snapshot": path | None, ...}``.  ``reason``
    and ``extra`` (more top-level fields) say why it was written. """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    now = time.time()
    stem = os.path.join(directory, f"{REPORT_PREFIX}{os.getpid()}-{_stamp(now)}")
    report: dict[str, Any] = {
        "format": "bokeh-memwatch-report",
        "format_version": 1,
        "reason": reason,
        "created_at": now,
        "pid": os.getpid(),
        "rss_bytes": rss_bytes,
        "memory_limit_bytes": limit_bytes,
        "rss_fraction_of_limit": fraction_of(rss_bytes, limit_bytes),
        "limit_fraction": fraction,
        "note": "light report written automatically near the memory limit: no chain search or type summary "
                "(those walk the heap in a forked child, whose pages count against the same limit)",
        **(extra or {}),
    }
    for name, read in (("summary", memwatch.summary), ("orphans", memwatch.orphans),
                       ("sessions", memwatch.sessions)):
        try:
            report[name] = read()
        except Exception as e:  # a section that fails must not lose the rest
            report[name] = error_section(e)
    snapshot_path: str | None = None
    manager = memwatch.snapshots
    if manager is None or not tracemalloc.is_tracing():
        report["snapshot"] = {"error": "tracemalloc was not tracing (start it with --memwatch-tracemalloc "
                                       "or POST api/tracemalloc to get snapshots here)"}
    else:
        try:
            taken = await manager.take()
            snapshot_path = stem + ".tracemalloc"
            await asyncio.to_thread(_link_or_copy, manager.path_of(taken["id"]), snapshot_path)
            report["snapshot"] = {**taken, "path": snapshot_path}
            answer = await manager.allocators(limit=allocators_limit, snapshot=taken["id"])
            report["allocators"] = answer.to_dict()
        except Exception as e:
            log.warning("memwatch: the limit snapshot failed: %s", e)
            report.setdefault("snapshot", error_section(e))
    report["versions"] = {**(report.get("summary", {}).get("versions") or {}), "platform": sys.platform}
    report_path = stem + ".json"
    text = json.dumps(report, allow_nan=False, default=json_default, indent=1)
    await asyncio.to_thread(_write_atomic, report_path, text)
    removed = _keep_newest(directory, keep)
    return {"report": report_path, "snapshot": snapshot_path, "created_at": now, "removed": removed}


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    with contextlib.suppress(OSError):
        os.chmod(target, 0o600)


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _keep_newest(directory: str, keep: int) -> list[str]:
    """ Remove all but the newest ``keep`` reports (and their snapshots). """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    stems = sorted(
        (name[:-5] for name in names if name.startswith(REPORT_PREFIX) and name.endswith(".json")),
        key=lambda stem: (stem.rsplit("-", 1)[-1], stem),
    )
    removed: list[str] = []
    for stem in stems[:max(0, len(stems) - keep)]:
        for suffix in (".json", ".tracemalloc"):
            path = os.path.join(directory, stem + suffix)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


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
