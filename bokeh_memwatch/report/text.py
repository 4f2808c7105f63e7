""" Text renderers of reports and allocator rows, for the command line
(``bokeh-memwatch diff`` and ``report``). """
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import format_bytes, proven_leaks
from .bug_report import REPORT_FORMAT

log = logging.getLogger(__name__)

__all__ = (
    "format_allocators",
    "format_report",
)

def format_allocators(rows: Sequence[Mapping[str, Any]]) -> str:
    """ Allocator rows as a text table (growth columns when present). """
    if not rows:
        return "(nothing)"
    diff = "size_diff_bytes" in rows[0]
    lines = []
    for i, row in enumerate(rows, 1):
        if diff:
            head = (f"{i:>3}. {format_bytes(row['size_diff_bytes']):>11} ({row['count_diff']:+d} blocks)"
                    f"  now {format_bytes(row['size_bytes'])} in {row['count']}")
        else:
            head = f"{i:>3}. {format_bytes(row['size_bytes']):>11} in {row['count']} blocks"
        lines.append(f"{head}  {row['where']}")
        for frame in row.get("traceback") or []:
            lines.append(f"       {frame}")
    return "\n".join(lines)


def format_report(report: Mapping[str, Any], *, limit: int = 15) -> str:
    """ A JSON report, readable. """
    if report.get("format") != REPORT_FORMAT:
        raise ValueError(f"not a memwatch report (format {report.get('format')!r})")
    out: list[str] = []

    def section(title: str) -> None:
        out.extend(["", title, "-" * len(title)])

    summary = report.get("summary") or {}
    out.append(f"bokeh-memwatch report, pid {report.get('pid')}, "
               f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(report.get('created_at', 0)))}")
    section("Summary")
    for key in ("rss_bytes", "traced_bytes", "sessions", "documents", "models", "data_bytes",
                "orphans", "pending_orphans", "models_retained", "sessions_created_total",
                "sessions_destroyed_total", "uptime_s"):
        if key in summary:
            value = summary[key]
            text = format_bytes(value) if key.endswith("_bytes") and isinstance(value, (int, float)) else value
            out.append(f"  {key:<26} {text}")
    sessions = report.get("sessions") or []
    section(f"Sessions ({len(sessions)})")
    for row in sessions[:limit]:
        out.append(f"  {row.get('id')}  {row.get('app')}  models={row.get('models')} "
                   f"data={format_bytes(row.get('data_bytes') or 0)}")
    orphans = report.get("orphans") or {}
    chains = report.get("chains") or {}
    held = proven_leaks(orphans)
    section(f"Orphans and retained Models ({len(held)})")
    for row in held[:limit]:
        out.append(f"  {row.get('session_id')}  {row.get('app')}  {row.get('status')}  "
                   f"models={row.get('models')} data={format_bytes(row.get('data_bytes') or 0)}")
        chain = chains.get(str(row.get("session_id")))
        if chain:
            out.append("      " + str(chain.get("text") or chain.get("error") or ""))
    for key, title in (("growth", "Growth since the baseline"), ("allocators", "Top allocators")):
        data = report.get(key)
        if data is None:
            continue
        section(title)
        if "error" in data:
            out.append(f"  ({data['error']})")
        else:
            out.append(format_allocators(data.get("allocators", [])[:limit]))
    types = report.get("types") or {}
    section("Types (pympler)")
    if "error" in types:
        out.append(f"  ({types['error']})")
    else:
        compare = types.get("compare")
        rows = compare["types"] if compare else types.get("types", [])
        for row in rows[:limit]:
            growth = (f"{format_bytes(row['size_diff_bytes']):>11} {row['count_diff']:+d}  "
                      if "size_diff_bytes" in row else "")
            out.append(f"  {growth}{format_bytes(row['size_bytes']):>11} {row['count']:>9}  {row['type']}")
    section("Versions")
    for key, value in (report.get("versions") or {}).items():
        out.append(f"  {key:<10} {value}")
    settings = report.get("settings") or {}
    section("Settings")
    out.append("  " + json.dumps(settings, sort_keys=True))
    return "\n".join(out).lstrip("\n") + "\n"
