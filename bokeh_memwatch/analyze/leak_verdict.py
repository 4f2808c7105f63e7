""" The verdicts of a leak check (``bokeh-memwatch check`` and the pytest
plugin): from what each round of sessions left behind, ``clean``,
``bounded`` or ``leak``; whether that passes; which holder chains are the
same; the whole report over the apps.  Plain data in, plain data out.

This module imports neither tornado nor ``bokeh.server``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .advice import grows

log = logging.getLogger(__name__)

__all__ = (
    "VERDICTS",
    "CheckSettings",
    "census_chains",
    "chain_key",
    "combine",
    "dedupe_chains",
    "judge",
    "judge_census",
    "passes",
)

#: Verdicts, best first.
VERDICTS = ("clean", "bounded", "leak")


class CheckSettings(Protocol):
    """ What the report repeats of the check's options
    (:class:`bokeh_memwatch.testing.leakcheck.CheckOptions`). """

    @property
    def tolerance(self) -> int: ...

    @property
    def sessions(self) -> int: ...

    @property
    def rounds(self) -> int: ...


_GROWTH_KEYS = ("holding_sessions", "documents", "models")


def judge(rounds: Sequence[Mapping[str, Any]]) -> str:
    """ ``clean``: nothing held after the last round; ``leak``: retention
    grew from the first round to the last; ``bounded``: held, not growing. """
    last = rounds[-1]
    if not any(int(last.get(k) or 0) for k in _GROWTH_KEYS):
        return "clean"
    if len(rounds) > 1 and grows(rounds[0], last):
        return "leak"
    return "bounded"


def judge_census(census: Mapping[str, Any]) -> str:
    """ ``leak`` when some application type grew with closed sessions
    between the first and the last round's census, else ``clean`` (the
    Document/Model verdict, :func:`judge`, covers the rest). """
    return "leak" if any(not row.get("generic") for row in census.get("growing") or ()) else "clean"


def census_chains(census: Mapping[str, Any]) -> list[dict[str, Any]]:
    """ The holder chains the census found, as check chains. """
    out = []
    for row in census.get("growing") or ():
        if row.get("holder"):
            out.append({"target": row["type"], "count": 1, "retained_of_kind": int(row["growth"]),
                        "text": row["holder"], "root": None, "complete": bool(row.get("holder_complete")),
                        "reason": None, "sessions": [], "source": "census"})
    return out


def passes(verdict: str, rounds: Sequence[Mapping[str, Any]], tolerance: int) -> bool:
    """ Clean, or bounded within the tolerance (in destroyed sessions). """
    if verdict == "clean":
        return True
    return verdict == "bounded" and int(rounds[-1].get("holding_sessions") or 0) <= tolerance


_KEY_PATTERNS = (
    (re.compile(r"bokeh_app_[0-9a-f]+"), "bokeh_app_*"),
    (re.compile(r"'[A-Za-z0-9_-]{20,}'"), "'…'"),  # session ids as dict keys
    (re.compile(r"\d+"), "#"),  # list indexes, thread numbers
)


def chain_key(text: str) -> str:
    """ What makes two chains "the same holder": the text without indexes,
    numbers, session ids and per-session module names. """
    for pattern, replacement in _KEY_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def dedupe_chains(found: Sequence[Mapping[str, Any]], kinds: Mapping[str, int]) -> list[dict[str, Any]]:
    """ Group searched chains by :func:`chain_key`; most frequent first. """
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for chain in found:
        target = str(chain.get("target") or "?")
        key = (target, chain_key(str(chain.get("text") or chain.get("reason") or "")))
        group = groups.get(key)
        if group is None:
            groups[key] = {
                "target": target,
                "count": 1,
                "retained_of_kind": kinds.get(target, 0),
                "text": chain.get("text") or "",
                "root": chain.get("root"),
                "complete": bool(chain.get("complete")),
                "reason": chain.get("reason"),
                "sessions": [chain.get("session_id")],
            }
        else:
            group["count"] += 1
            group["sessions"].append(chain.get("session_id"))
    return sorted(groups.values(), key=lambda g: (-g["count"], g["target"]))


def combine(apps: Mapping[str, Mapping[str, Any]], options: CheckSettings) -> dict[str, Any]:
    """ The whole report: totals over the apps, the worst verdict, per app. """
    verdict = max((a["verdict"] for a in apps.values()), key=VERDICTS.index, default="clean")
    ok = all(a["passed"] for a in apps.values())
    # Errors in some sessions do not hide the verdict; an app that served
    # no session at all has none worth the name.
    served = all((a.get("session_errors") or {}).get("served", True) for a in apps.values())
    report: dict[str, Any] = {
        "verdict": verdict,
        "passed": ok,
        "served": served,
        "exit_code": 2 if not served else 0 if ok else 1,
        "tolerance": options.tolerance,
        "sessions_per_round": options.sessions,
        "rounds": options.rounds,
    }
    for key in ("sessions", "documents_retained", "models_retained", "data_bytes_retained"):
        report[key] = sum(int(a[key]) for a in apps.values())
    report["chains"] = [{**c, "app": path} for path, a in apps.items() for c in a["chains"]]
    report["advice"] = [item for a in apps.values() for item in a["advice"]]
    report["apps"] = dict(apps)
    return report
