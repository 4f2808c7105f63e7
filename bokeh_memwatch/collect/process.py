""" Collectors read one aspect of the process: memory, the garbage collector,
tracemalloc.  Each is cheap (constant time, independent of heap size) and
returns a flat mapping of numbers.

Collectors import neither tornado nor ``bokeh.server``: they are plain
objects that tests run on fixed inputs (a fake ``/proc`` directory, say).
"""
from __future__ import annotations

import gc
import logging
import os
import tracemalloc
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)

__all__ = (
    "Collector",
    "GcCollector",
    "ProcessCollector",
    "TracemallocCollector",
    "default_collectors",
)


class Collector(Protocol):
    """ Anything with a ``name`` and a ``collect()`` returning numbers. """

    name: str

    def collect(self) -> Mapping[str, float]: ...


class ProcessCollector:
    """ Resident set size of a process, from psutil or ``/proc``.

    Args:
        pid: the process to read (default: this one).
        proc_root: where procfs is mounted; injectable for tests.
    """

    name = "process"

    def __init__(self, pid: int | None = None, proc_root: str = "/proc") -> None:
        self._pid = os.getpid() if pid is None else pid
        self._proc_root = proc_root
        self._psutil_process: object | None = None
        if proc_root == "/proc":
            try:
                import psutil
            except ImportError:  # pragma: no cover - psutil is a dependency
                log.warning("psutil is not installed; reading RSS from /proc")
            else:
                self._psutil_process = psutil.Process(self._pid)

    @property
    def pid(self) -> int:
        return self._pid

    def rss_bytes(self) -> int:
        if self._psutil_process is not None:
            return int(self._psutil_process.memory_info().rss)  # type: ignore[attr-defined]
        with open(os.path.join(self._proc_root, str(self._pid), "statm")) as f:
            fields = f.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")

    def collect(self) -> Mapping[str, float]:
        return {"rss_bytes": self.rss_bytes()}


class GcCollector:
    """ Allocation counts per generation and how many full collections ran. """

    name = "gc"

    def collect(self) -> Mapping[str, float]:
        gen0, gen1, gen2 = gc.get_count()
        return {
            "gc_gen0": gen0,
            "gc_gen1": gen1,
            "gc_gen2": gen2,
            "gc_collections_gen2": full_collections(),
        }


def full_collections() -> int:
    """ How many collections of the oldest generation have run so far. """
    return int(gc.get_stats()[-1]["collections"])


class TracemallocCollector:
    """ Memory traced by tracemalloc, when tracing is on (else nothing). """

    name = "tracemalloc"

    def collect(self) -> Mapping[str, float]:
        if not tracemalloc.is_tracing():
            return {}
        current, peak = tracemalloc.get_traced_memory()
        return {"traced_bytes": current, "traced_peak_bytes": peak}


def default_collectors() -> list[Collector]:
    return [ProcessCollector(), GcCollector(), TracemallocCollector()]
