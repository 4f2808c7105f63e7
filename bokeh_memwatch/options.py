""" Settings of one MemWatch, in one table.

:class:`MemwatchOptions` is that table: each field carries, in its metadata,
its help text, its metavar (the unit) and the old flag names it still answers
to.  From it come

* the environment variable ``BOKEH_MEMWATCH_<FIELD>`` (:func:`options_from_env`,
  for the Panel plugin and anything else that takes no command-line options);
* the ``--memwatch-<field>`` flag, with the unit in its name
  (``--memwatch-interval-ms``), added to ``bokeh-memwatch serve`` and ``check``
  by :func:`add_arguments` and read back by :func:`options_from_args`; a
  boolean that defaults to on is ``--memwatch-no-<field>``;
* the validation, done once, in ``__post_init__``: every way in (Python,
  environment, command line) ends in the constructor.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .analyze.limits import parse_recycle_at
from .heap.memray_backend import BACKENDS
from .heap.worker import FORK_MODES

log = logging.getLogger(__name__)

__all__ = (
    "ENV_PREFIX",
    "FLAG_PREFIX",
    "MemwatchOptions",
    "add_arguments",
    "flag_given",
    "flag_name",
    "options_from_args",
    "options_from_env",
)

ENV_PREFIX = "BOKEH_MEMWATCH_"
FLAG_PREFIX = "--memwatch-"


def _opt(default: Any, help: str, *, metavar: str | None = None, aliases: Sequence[str] = (),
         minimum: float | None = None, positive: bool = False, choices: Sequence[str] | None = None,
         repr: bool = True) -> Any:
    """ A field of the table: its default and what the flag, the env var and
    the validation need.  ``positive``: must be > 0; ``minimum``: must be >= it. """
    return field(default=default, repr=repr, metadata={
        "help": help, "metavar": metavar, "aliases": tuple(aliases), "minimum": minimum,
        "positive": positive, "choices": tuple(choices) if choices else None,
    })


@dataclass(frozen=True)
class MemwatchOptions:
    """ Settings of one MemWatch; every one is also an environment variable
    ``BOKEH_MEMWATCH_<FIELD>`` and a ``--memwatch-<field>`` flag.

    Units are in the names: ``_ms`` milliseconds, ``_s`` seconds, ``_bytes``
    bytes.  Each field's help (``dataclasses.fields(MemwatchOptions)[i].metadata``)
    is what ``bokeh-memwatch serve --help`` shows.  Raises ``ValueError`` for
    an out-of-range value.
    """

    interval_ms: int = _opt(5000, "Milliseconds between samples", metavar="MS",
                            aliases=("--memwatch-interval",), positive=True)
    history_s: int = _opt(24 * 3600, "Seconds of history kept in memory", metavar="SECONDS",
                          aliases=("--memwatch-history",), positive=True)
    orphan_grace_ms: int = _opt(
        5000, "How long a destroyed session's Document and Models may stay alive before they are "
              "verified (pending until then)", metavar="MS", aliases=("--memwatch-orphan-grace",), minimum=0)
    verify_min_interval_s: float = _opt(
        5.0, "Least time between two verifications of destroyed sessions (reachability scans in a "
             "forked child; they run only while some destroyed session is unproven)", metavar="SECONDS", minimum=0)
    verify_timeout_s: float = _opt(120.0, "Longest one verification may run", metavar="SECONDS", positive=True)
    allow_remote: bool = _opt(False, "Answer non-loopback clients when the server has no authentication")
    chain_timeout_s: float = _opt(30.0, "Longest a 'why alive' search may run", metavar="SECONDS",
                                  aliases=("--memwatch-chain-timeout",), positive=True)
    chain_max_depth: int = _opt(25, "Longest reference chain searched", metavar="HOPS", positive=True)
    chain_cache_s: float = _opt(60.0, "How long a chain answer is reused", metavar="SECONDS", minimum=0)
    gc_min_interval_s: float = _opt(10.0, "Least time between two collections asked over HTTP",
                                    metavar="SECONDS", minimum=0)
    max_destroyed: int = _opt(10_000, "Destroyed sessions still holding something remembered", metavar="N",
                              positive=True)
    tick_budget_ms: float = _opt(
        0.5, "Time a sample may spend on per-Model figures (bytes in ColumnDataSources, Models alive after "
             "a destroy), refreshed round-robin across sessions; counts are exact at every sample regardless",
        metavar="MS", minimum=0)
    token: str = _opt(
        "", "Require this token on every memwatch request (X-Memwatch-Token header, 'Authorization: Bearer', "
            "or a one-time ?token= that sets a cookie); better set through BOKEH_MEMWATCH_TOKEN, which other "
            "users cannot read in ps", metavar="TOKEN", repr=False)
    http: bool = _opt(True, "memwatch's HTTP side: the API and the dashboard (sampling and metrics go on without it)")
    show_values: bool = _opt(False, "Show short, truncated reprs of objects in 'why alive' chains "
                                    "(off: types and names only)")
    max_snapshots: int = _opt(5, "Snapshot files kept", metavar="N", positive=True)
    max_snapshot_bytes: int = _opt(512 * 1024 * 1024, "Total bytes of the snapshot files kept", metavar="BYTES",
                                   positive=True)
    types_min_interval_s: float = _opt(30.0, "Least time between two pympler type summaries", metavar="SECONDS",
                                       minimum=0)
    snapshot_timeout_s: float = _opt(300.0, "Longest one snapshot job may run", metavar="SECONDS", positive=True)
    heap_fork: str = _opt(
        "auto", "When a native thread pool (OpenBLAS, OpenMP, MKL) makes fork unsafe: 'auto' runs heap jobs in "
                "a thread, 'refuse' answers 409, 'force' forks anyway (may freeze the server), 'never' always "
                "uses a thread", metavar="MODE", choices=FORK_MODES)
    allocations: str = _opt(
        "tracemalloc", "Allocation tracking: 'memray' starts a memray tracker in each serving process (pip "
                       "install bokeh-memwatch[memray]; about 1.1-1.6x request latency and 8 MiB, "
                       "against 2.7-7x and 120 MiB for tracemalloc at 1 frame: bench/memray_cost.py); "
                       "'tracemalloc' leaves tracing to --memwatch-tracemalloc and the API",
        metavar="BACKEND", choices=BACKENDS)
    history_dir: str = _opt(
        "", "Directory of the SQLite history shared by the workers and kept across restarts "
            "(default: $XDG_STATE_HOME/bokeh-memwatch or ~/.local/state/bokeh-memwatch; 'none': off)",
        metavar="DIR")
    history_max_bytes: int = _opt(64 * 1024 * 1024, "Size bound of the SQLite history", metavar="BYTES",
                                  minimum=64 * 1024)
    cgroup_root: str = _opt("/sys/fs/cgroup", "The cgroup mount read for the memory limit", metavar="DIR")
    limit_fraction: float = _opt(
        0.9, "Write a report (and a tracemalloc snapshot when tracing) when RSS reaches this fraction of the "
             "container's memory limit (0: never)", metavar="FRACTION")
    limit_min_interval_s: float = _opt(600.0, "Least time between two memory-limit reports", metavar="SECONDS",
                                       minimum=0)
    census_interval_s: float = _opt(
        600.0, "A census of live objects by type every this many seconds when sessions closed since the "
               "last one (0: on demand only)", metavar="SECONDS", minimum=0)
    census_min_interval_s: float = _opt(60.0, "Least time between two censuses", metavar="SECONDS", minimum=0)
    recycle_at: str = _opt(
        "", "Recycle a worker gracefully when its RSS stays at or above this (a fraction of the container's "
            "memory limit, 0.85, or a size, 1.5GiB) for --memwatch-recycle-samples samples: write the limit "
            "report, drain (readyz 503, stop accepting, live sessions go on), exit with status 75 so that "
            "--num-procs or the supervisor starts a fresh worker (default: off)", metavar="FRACTION|SIZE")
    recycle_samples: int = _opt(3, "Samples in a row above --memwatch-recycle-at needed", metavar="N", minimum=1)
    drain_timeout_s: float = _opt(600.0, "Longest a recycled worker drains before it exits anyway",
                                  metavar="SECONDS", aliases=("--memwatch-drain-timeout",), positive=True)
    probes: bool = _opt(True, "the probes {prefix}/memwatch/healthz and readyz (they answer without credentials)")
    forward: bool = _opt(True, "forwarding a request to the worker that owns its object (needs the history database)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta["positive"] and not value > 0:
                raise ValueError(f"{f.name} must be > 0, got {value}")
            if meta["minimum"] is not None and not value >= meta["minimum"]:
                raise ValueError(f"{f.name} must be >= {meta['minimum']:g}, got {value}")
            if meta["choices"] and value not in meta["choices"]:
                raise ValueError(f"{f.name} must be one of {', '.join(meta['choices'])}, got {value!r}")
        if not 0 <= self.limit_fraction <= 1:
            raise ValueError(f"limit_fraction must be between 0 (off) and 1, got {self.limit_fraction}")
        parse_recycle_at(self.recycle_at)  # raises ValueError
        if self.token and len(self.token) < 16:
            raise ValueError(
                "token must be at least 16 characters (python -c 'import secrets; print(secrets.token_urlsafe())')"
            )

    def public(self) -> dict[str, Any]:
        """ The options as shown over HTTP: the token is never echoed. """
        shown = asdict(self)
        shown["token"] = "(set)" if self.token else ""
        return shown

    @property
    def capacity(self) -> int:
        """ Samples the in-memory store holds: ``history_s`` at ``interval_ms``. """
        return max(1, self.history_s * 1000 // self.interval_ms)


_DEFAULTS = MemwatchOptions()


def _kind(name: str) -> type:
    return type(getattr(_DEFAULTS, name))


def flag_name(name: str) -> str:
    """ The command-line flag of a field: ``interval_ms`` -> ``--memwatch-interval-ms``,
    and for a boolean that defaults to on, ``http`` -> ``--memwatch-no-http``. """
    stem = name.replace("_", "-")
    if _kind(name) is bool and getattr(_DEFAULTS, name):
        return f"{FLAG_PREFIX}no-{stem}"
    return FLAG_PREFIX + stem


def _dest(name: str) -> str:
    return "memwatch_" + name


def _help(f: dataclasses.Field[Any]) -> str:
    text: str = f.metadata["help"]
    default = getattr(_DEFAULTS, f.name)
    if _kind(f.name) is bool and default:
        return f"Off: {text}"
    if _kind(f.name) is bool or f.name in ("token", "history_dir", "recycle_at") or "(default" in text:
        return text
    return f"{text} (default: {default:g})" if isinstance(default, float) else f"{text} (default: {default})"


def arguments() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """ ``(flags, argparse keyword arguments)`` for every field: the flag
    with its unit first, then the old names it still answers to.  Each
    argument's default is None (not given), so environment variables apply. """
    out: list[tuple[tuple[str, ...], dict[str, Any]]] = []
    for f in dataclasses.fields(MemwatchOptions):
        kind = _kind(f.name)
        flags = (flag_name(f.name), *f.metadata["aliases"])
        kwargs: dict[str, Any] = {"dest": _dest(f.name), "help": _help(f), "default": None}
        if kind is bool:
            kwargs["action"] = "store_const"
            kwargs["const"] = not getattr(_DEFAULTS, f.name)
        else:
            kwargs.update(type=kind, metavar=f.metadata["metavar"])
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
        out.append((flags, kwargs))
    return out


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """ Add every option's ``--memwatch-*`` flag to ``parser``. """
    for flags, kwargs in arguments():
        parser.add_argument(*flags, **kwargs)


def flag_given(args: argparse.Namespace, name: str) -> bool:
    """ Whether the command line set field ``name`` (by any of its flags). """
    return getattr(args, _dest(name), None) is not None


def options_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """ Option overrides from the environment, then from the command line
    (a flag wins over its environment variable). """
    overrides = options_from_env(environ)
    for f in dataclasses.fields(MemwatchOptions):
        if flag_given(args, f.name):
            overrides[f.name] = getattr(args, _dest(f.name))
    return overrides


def options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """ Option overrides from ``BOKEH_MEMWATCH_<FIELD>`` environment variables
    (``BOKEH_MEMWATCH_INTERVAL_MS=1000``, ``BOKEH_MEMWATCH_ALLOW_REMOTE=1``),
    for ways in that take no command-line options (the Panel plugin).
    Raises ``ValueError`` for a value of the wrong type. """
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for f in dataclasses.fields(MemwatchOptions):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw == "":
            continue
        kind = _kind(f.name)
        try:
            if kind is bool:
                lowered = raw.strip().lower()
                if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(raw)
                out[f.name] = lowered in ("1", "true", "yes", "on")
            else:
                out[f.name] = kind(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{f.name.upper()} must be a {kind.__name__}, got {raw!r}") from None
    return out
