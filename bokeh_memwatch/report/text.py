""" Text renderers for the command line: allocator rows and the JSON bug
report (``bokeh-memwatch diff`` and ``report``), and the leak check's report
(``bokeh-memwatch check``, the pytest plugin's failure message). """
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import proven_leaks
from ..units import format_bytes, format_duration
from .bug_report import REPORT_FORMAT

log = logging.getLogger(__name__)

__all__ = (
    "format_allocators",
    "format_report",
    "render_text",
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
            if key == "uptime_s" and isinstance(value, (int, float)):  # as the dashboard writes it
                text = format_duration(value)
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
    memray = report.get("memray")  # the memray backend's section (heap/memray_backend.py)
    if memray is not None:
        allocators = memray.get("allocators") or {}
        capture = allocators.get("capture") or {}
        section(f"memray: alive at the end of a {capture.get('window_s', '?')} s window, by line")
        if "error" in allocators:
            out.append(f"  ({allocators['error']})")
        else:
            out.append(format_allocators(allocators.get("allocators", [])[:limit]))
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


# -- the leak check --------------------------------------------------------------------


def _census_lines(census: Mapping[str, Any], documents: int = 0, models: int = 0) -> list[str]:
    if not census.get("ran"):
        reason = "; ".join(census.get("errors") or ()) or "not run"
        return [f"  census of live objects by type: not taken ({reason}); only Documents and Models were checked"]
    growing = [r for r in census.get("growing") or () if not r.get("generic")]
    if not growing:
        return [f"  census of live objects by type: no type grew with the {census.get('closed_between')} "
                "session(s) closed between the first and the last round"]
    retained = (f"{documents} Document(s)" if documents else f"{models} Model(s)" if models else "")
    lines = ["  types growing with closed sessions (census" + (f"; they include what the {retained} retained "
                                                               "by destroyed sessions hold" if retained else "")
             + "):"]
    for row in growing[:10]:
        lines.append(f"    {row['type']}: +{row['growth_per_session']:g} per session, "
                     f"{format_bytes(row['bytes_per_session'])} per session (shallow), {row['count']} alive")
        if row.get("holder"):
            size = row.get("instance_bytes")
            label = ("held by" if row.get("holder_instance_new") is not False
                     else "held by (an instance older than the first census)")
            lines.append(f"      {label}: {row['holder']}"
                         + (f" ({format_bytes(size)} reachable from one)" if size else ""))
    return lines


def render_text(report: Mapping[str, Any]) -> str:
    """ The report for people. """
    lines: list[str] = []
    for path, app in report["apps"].items():
        per = app["per_closed_session"]
        lines.append(f"{path}: {app['verdict'].upper()} ({'pass' if app['passed'] else 'FAIL'}, "
                     f"tolerance {report['tolerance']} retained session(s))")
        lines.append(f"  sessions opened and closed: {app['sessions']} "
                     f"({report['rounds']} rounds of {report['sessions_per_round']})")
        for r in app["rounds"]:
            lines.append(
                f"  after round {r['round']} ({r['sessions_closed_total']} closed): "
                f"{r['holding_sessions']} session(s) still holding memory, {r['documents']} Document(s), "
                f"{r['models']} Model(s), {format_bytes(r['data_bytes'])} in ColumnDataSources, "
                f"RSS {format_bytes(r['rss_bytes'])}"
            )
        lines.append(
            f"  retained per closed session: {per['documents']:g} Documents, {per['models']:g} Models, "
            f"{format_bytes(per['data_bytes'])}; RSS growth per session "
            f"{format_bytes(app['rss_growth_bytes_per_session'])}"
        )
        if app["model_types"]:
            lines.append("  retained Model types: " + ", ".join(f"{n} {t}" for t, n in app["model_types"].items()))
        lines.extend(_census_lines(app.get("census") or {}, int(app.get("documents_retained") or 0),
                                   int(app.get("models_retained") or 0)))
        for error in app["app_errors"]:
            head, _, rest = str(error).partition("\n")
            lines.append(f"  app error: {head}")
            lines.extend(f"    {line}" for line in rest.rstrip().splitlines()[-12:])
        if app["chains"]:
            lines.append("  why alive (reference chains, deduplicated):")
            for c in app["chains"]:
                text = c["text"] or f"(no chain: {c.get('reason') or 'unknown'})"
                lines.append(f"    {c['count']} x {c['target']} (of {c['retained_of_kind']} retained): {text}")
        if app["advice"]:
            lines.append("  advice:")
            for a in app["advice"]:
                lines.append(f"    [{a['severity']}] {a['title']}")
                lines.append(f"      evidence: {a['evidence']}")
                lines.append(f"      fix: {a['fix']}")
                lines.append(f"      see: {a['article_section']}")
        lines.append("")
    verdict = report["verdict"]
    if not report.get("served", True):
        lines.append("the app served no session: no verdict")
    lines.append(f"verdict: {verdict} -> exit {report['exit_code']}")
    return "\n".join(lines)
