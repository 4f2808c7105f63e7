""" The memory limit of the container (cgroup) this process runs in.

A collector like the others: constant time (a few small file reads, cached
for ``refresh_s``), plain numbers out, injectable paths.

* cgroup v2: ``memory.max`` of the process's cgroup (from
  ``/proc/self/cgroup``, line ``0::/path``) and of every ancestor up to the
  mount point; the smallest limit wins.  Inside a container the path is
  usually ``/`` and the root's ``memory.max`` is the container's limit.
* cgroup v1: ``memory/<path>/memory.limit_in_bytes``, then
  ``memory/memory.limit_in_bytes``.

``max``, a missing file, or an absurd value (at least 2**60 bytes, or more
than the machine's physical memory) means no limit.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

__all__ = (
    "CgroupMemoryCollector",
    "memory_limit_bytes",
)

#: At or above this a limit is "unlimited" (cgroup v1 writes 2**63 - 4096).
ABSURD_BYTES = 2**60


def _physical_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _parse_limit(raw: str | None, physical: int | None) -> int | None:
    if raw is None or raw in {"", "max"}:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    if value <= 0 or value >= ABSURD_BYTES or (physical is not None and value >= physical):
        return None
    return value


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """ (v2 path, v1 memory path) of the process, from ``/proc/<pid>/cgroup``. """
    text = _read(proc_cgroup)
    v2 = v1 = None
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def memory_limit_bytes(
    root: str = "/sys/fs/cgroup", *, proc_cgroup: str = "/proc/self/cgroup", physical_bytes: int | None = -1,
) -> int | None:
    """ The memory limit in bytes, or None when there is none.

    Args:
        root: where the cgroup file system is mounted.
        proc_cgroup: the process's cgroup membership file.
        physical_bytes: the machine's memory (-1: ask the OS; None: do not
            compare); a limit at least this large is no limit.
    """
    physical = _physical_bytes() if physical_bytes == -1 else physical_bytes
    v2_path, v1_path = _cgroup_paths(proc_cgroup)
    limits: list[int] = []
    if os.path.exists(os.path.join(root, "cgroup.controllers")) or os.path.exists(os.path.join(root, "memory.max")):
        # v2: the process's cgroup and its ancestors, as far as they are visible.
        relative = (v2_path or "/").strip("/")
        parts = relative.split("/") if relative else []
        for depth in range(len(parts), -1, -1):
            limit = _parse_limit(_read(os.path.join(root, *parts[:depth], "memory.max")), physical)
            if limit is not None:
                limits.append(limit)
    else:
        memory = os.path.join(root, "memory")
        candidates = []
        if v1_path and v1_path.strip("/"):
            candidates.append(os.path.join(memory, *v1_path.strip("/").split("/"), "memory.limit_in_bytes"))
        candidates.append(os.path.join(memory, "memory.limit_in_bytes"))
        for candidate in candidates:
            limit = _parse_limit(_read(candidate), physical)
            if limit is not None:
                limits.append(limit)
                break
    return min(limits) if limits else None


class CgroupMemoryCollector:
    """ ``memory_limit_bytes`` of this process's cgroup (nothing when there
    is no limit), read at most once per ``refresh_s``.

    Args:
        root: the cgroup mount point (injectable for tests).
        proc_cgroup: the process's cgroup membership file.
        refresh_s: how long a reading is reused.
        physical_bytes: see :func:`memory_limit_bytes`.
        clock: monotonic seconds (injectable).
    """

    name = "cgroup"

    def __init__(
        self,
        root: str = "/sys/fs/cgroup",
        *,
        proc_cgroup: str = "/proc/self/cgroup",
        refresh_s: float = 60.0,
        physical_bytes: int | None = -1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root
        self._proc_cgroup = proc_cgroup
        self._refresh_s = refresh_s
        self._physical = physical_bytes
        self._clock = clock
        self._read_at = float("-inf")
        self._limit: int | None = None

    def limit_bytes(self) -> int | None:
        now = self._clock()
        if now - self._read_at >= self._refresh_s:
            self._read_at = now
            self._limit = memory_limit_bytes(self.root, proc_cgroup=self._proc_cgroup,
                                             physical_bytes=self._physical)
        return self._limit

    def collect(self) -> Mapping[str, float]:
        limit = self.limit_bytes()
        return {} if limit is None else {"memory_limit_bytes": limit}
