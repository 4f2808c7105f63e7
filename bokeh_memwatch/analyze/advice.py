""" Advice: turn live memwatch data into the checklist of the memory article.

Users of Bokeh and Panel servers follow a checklist by hand ("set
``--unused-session-lifetime``", "register ``on_session_destroyed``", "avoid
module-level references", "release large dataframes", "watch for growth").
:func:`advise` does that from data memwatch already has: the summary, the
live sessions, the destroyed sessions still holding something, the sample
history, which apps register cleanup hooks, and (from ``bokeh-memwatch
check``) retention measured after successive rounds of sessions.

Pure functions over plain data: this module imports neither tornado nor
bokeh, so a test gives it fixed inputs and a renderer (JSON handler, CLI,
dashboard) shows what it returns::

    [{"id", "severity", "title", "evidence", "fix", "article_section", "app"}]

``severity`` is ``error`` (memory is being lost now), ``warning`` (likely
to lose memory, or cleanup is not happening as configured) or ``info``.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ..schema import PROVEN_STATES
from ..units import format_bytes

log = logging.getLogger(__name__)

__all__ = (
    "SECTIONS",
    "SEVERITIES",
    "advise",
    "grows",
)

#: Severities, worst first (the order :func:`advise` sorts by).
SEVERITIES = ("error", "warning", "info")

#: Sections of the article (docs/bokeh-server-memory article) the advice points at.
SECTIONS = {
    "profile": "Best Practices: Profile & Monitor Memory",
    "lifetime": "Best Practices: Session Lifetime & Cleanup Configuration",
    "references": "Best Practices: Minimize Persistent References",
    "panel": "Best Practices: Holoviews, Panel, and Datashader Integration",
    "dataframes": "Best Practices: Release Large Dataframes and Images",
    "scale": "Best Practices: Monitor Memory at Scale",
    "hooks": "Advanced: Custom Document Lifecycle Hooks",
    "troubleshooting": "Troubleshooting: When Memory is Not Released",
}

#: An unused session may live lifetime + one check interval; beyond this
#: many times that (plus a second of slack), Bokeh is not cleaning up.
LINGER_FACTOR = 2.0

#: One session is a "hog" when it holds more than this share of data bytes...
HOG_SHARE = 0.5
#: ...and at least this much.
HOG_MIN_BYTES = 1024 * 1024

#: RSS growth per closed session worth mentioning when nothing is retained.
RSS_PER_SESSION_NOTE_BYTES = 2 * 1024 * 1024

#: Samples looked at for "orphans growing".
GROWTH_MIN_SAMPLES = 3


def grows(first: Mapping[str, Any], last: Mapping[str, Any]) -> bool:
    """ Did retention grow from one measurement to a later one?  Destroyed
    sessions still holding something, or Documents; Models count only when
    no Document is retained (how many Models an orphan Document keeps
    depends on how its session was opened, so they are noise there). """
    if _int(last, "holding_sessions") > _int(first, "holding_sessions"):
        return True
    if _int(last, "documents") > _int(first, "documents"):
        return True
    return not _int(last, "documents") and _int(last, "models") > _int(first, "models")


def _item(id_: str, severity: str, title: str, evidence: str, fix: str, section: str,  # noqa: PLR0917
          app: str | None) -> dict[str, Any]:
    return {
        "id": id_,
        "severity": severity,
        "title": title,
        "evidence": evidence,
        "fix": fix,
        "article_section": SECTIONS[section],
        "app": app,
    }


def _int(mapping: Mapping[str, Any] | None, key: str) -> int:
    if not mapping:
        return 0
    value = mapping.get(key)
    return int(value) if isinstance(value, (int, float)) else 0


def advise(
    summary: Mapping[str, Any],
    *,
    sessions: Sequence[Mapping[str, Any]] = (),
    retained: Sequence[Mapping[str, Any]] = (),
    history: Sequence[Mapping[str, Any]] = (),
    cleanup_hooks: Mapping[str, Mapping[str, int]] | None = None,
    rounds: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """ Advice from live data, worst first.

    Args:
        summary: ``MemWatch.summary()`` (uses ``apps`` and ``server``).
        sessions: live session rows (``MemWatch.sessions()``).
        retained: destroyed sessions still holding something (the rows of
            ``MemWatch.orphans()``); only proven leaks count (``status``
            ``orphan`` or ``models_retained``): sessions pending, held by
            timers or awaiting collection are not leaks (yet).
        history: samples, oldest first (``MemWatch.history()``).
        cleanup_hooks: per app, ``{"sessions", "with_hooks"}``: how many
            sessions were seen and how many had an ``on_session_destroyed``
            callback of the app's own when their Document was made.
        rounds: per app, what ``bokeh-memwatch check`` measured after each
            round of sessions: ``{"sessions_closed_total",
            "holding_sessions", "documents", "models", "data_bytes",
            "rss_bytes", "max_unused_ms", "settle_timed_out"}``.
    """
    server = summary.get("server") or {}
    apps: Mapping[str, Mapping[str, Any]] = summary.get("apps") or {}
    hooks = cleanup_hooks or {}
    measured = rounds or {}
    held = [r for r in retained if r.get("status") in PROVEN]
    names = sorted(set(apps) | {str(r.get("app")) for r in held} | set(measured))
    out: list[dict[str, Any]] = []
    out += _lingering_sessions(server, sessions, measured)
    for app in names:
        app_rows = [r for r in held if r.get("app") == app]
        app_rounds = list(measured.get(app, ()))
        counts = apps.get(app, {})
        out += _orphans(app, counts, app_rows)
        out += _models_without_document(app, app_rows)
        out += _growth(app, history, app_rounds)
        out += _missing_hooks(app, app_rows, hooks.get(app))
        out += _rss_without_retention(app, app_rounds)
    out += _data_hogs(sessions, held)
    out.sort(key=lambda a: SEVERITIES.index(a["severity"]))
    return out


def _lingering_sessions(
    server: Mapping[str, Any], sessions: Sequence[Mapping[str, Any]],
    rounds: Mapping[str, Sequence[Mapping[str, Any]]],
) -> list[dict[str, Any]]:
    lifetime_ms = _int(server, "unused_session_lifetime_ms")
    check_ms = _int(server, "check_unused_sessions_ms")
    if not lifetime_ms:
        return []
    expected_ms = lifetime_ms + check_ms
    limit_ms = LINGER_FACTOR * expected_ms + 1000
    out = []
    by_app: dict[str, list[float]] = {}
    for row in sessions:
        unused_ms = float(row.get("ms_since_unsubscribe") or 0)
        if not row.get("connections") and unused_ms > limit_ms:
            by_app.setdefault(str(row.get("app")), []).append(unused_ms)
    for app, app_rounds in rounds.items():
        worst = max((float(r.get("max_unused_ms") or 0) for r in app_rounds), default=0.0)
        timed_out = any(r.get("settle_timed_out") for r in app_rounds)
        if worst > limit_ms or timed_out:
            by_app.setdefault(app, []).append(worst)
    for app, ages in sorted(by_app.items()):
        out.append(_item(
            "unused-sessions-linger", "warning",
            "Unused sessions live far longer than --unused-session-lifetime",
            f"{len(ages)} unused session(s) of {app} alive up to {max(ages) / 1000:.1f} s after their last "
            f"connection closed; the server is set to discard them after {lifetime_ms / 1000:g} s, checked "
            f"every {check_ms / 1000:g} s (--unused-session-lifetime {lifetime_ms}, "
            f"--check-unused-sessions {check_ms}).",
            "Bokeh frees a session's Document only when it discards the session. Look for a blocked "
            "IOLoop (long synchronous callbacks), sessions kept on purpose (Panel --warm / --reuse-sessions, "
            "block_expiration) or clients that keep the websocket open; set both options explicitly, "
            "short during development.",
            "lifetime", app,
        ))
    return out


def _orphans(app: str, counts: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    documents = sum(1 for r in rows if r.get("status") == "orphan") or _int(counts, "orphans")
    if not documents:
        return []
    live = _int(counts, "sessions")
    how = _how_proven(rows)
    if live == 0:
        title = "Sessions at 0 while Documents stay alive"
        evidence = (f"{app} has no live session but {documents} Document(s) outlived their sessions "
                    f"(orphans: {how}).")
    else:
        title = "Documents outlive their sessions"
        evidence = (f"{app}: {documents} Document(s) alive after their sessions were destroyed ({how}), "
                    f"{live} live session(s).")
    return [_item(
        "documents-outlive-sessions", "error", title, evidence,
        "Something outside the session refers to the Document: a module-level list or dict, a thread, "
        "a tornado/asyncio callback never stopped, a logging handler, an lru_cache. The reference chain "
        "(api/orphans/<session_id>/chain, or the chains of 'bokeh-memwatch check') names it; keep "
        "per-session state on the session (curdoc().session_context) and release the rest in "
        "on_session_destroyed.",
        "references", app,
    )]


#: Row states that are leaks.
PROVEN = PROVEN_STATES


def _how_proven(rows: Sequence[Mapping[str, Any]]) -> str:
    """ How the verdict of these rows was reached, for an evidence line. """
    if rows and all(r.get("verified_by") == "reachability_scan" for r in rows):
        return "proven reachable from a root by a scan of a forked copy of the heap, no collection needed"
    return "alive after a full garbage collection since their sessions were destroyed"


def _models_without_document(app: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    detached = [r for r in rows if r.get("status") == "models_retained"]
    if not detached:
        return []
    models = sum(_int(r, "models_proven") or _int(r, "models") for r in detached)
    types: dict[str, int] = {}
    for r in detached:
        for name, n in (r.get("model_types") or {}).items():
            types[name] = types.get(name, 0) + int(n)
    top = ", ".join(f"{n} {name}" for name, n in sorted(types.items(), key=lambda kv: -kv[1])[:4])
    return [_item(
        "models-outlive-documents", "error",
        "Models (and their data) outlive their Document",
        f"{app}: {models} Model(s) of {len(detached)} destroyed session(s) retained without their "
        f"Document ({top}; {_how_proven(detached)}).",
        "The Document was freed but its Models were not: typical of Panel and HoloViews, which detach "
        "Models on cleanup, when a callback of a session is registered on something shared "
        "(param.watch / pn.depends on a module-level widget, opts(hooks=...), pn.state.cache). Create "
        "widgets per session, or unwatch in pn.state.on_session_destroyed.",
        "panel", app,
    )]


def _growth(app: str, history: Sequence[Mapping[str, Any]],
            rounds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if len(rounds) >= 2:
        first, last = rounds[0], rounds[-1]
        held_first, held_last = _int(first, "holding_sessions"), _int(last, "holding_sessions")
        if not held_last:
            return []
        closed = max(1, _int(last, "sessions_closed_total") - _int(first, "sessions_closed_total"))
        if grows(first, last):
            return [_item(
                "retention-grows", "error",
                "Retention grows with every session",
                f"{app}: {held_first} destroyed session(s) still holding memory after "
                f"{_int(first, 'sessions_closed_total')} closed, {held_last} after "
                f"{_int(last, 'sessions_closed_total')} closed "
                f"({(held_last - held_first) / closed:.2f} per session).",
                "This is an unbounded leak: memory grows until the process is killed. Fix the holder "
                "named by the chain; until then recycle worker processes and set container memory limits.",
                "scale", app,
            )]
        return [_item(
            "bounded-retention", "warning",
            "A bounded amount stays after sessions end",
            f"{app}: {held_last} destroyed session(s) still hold memory after "
            f"{_int(last, 'sessions_closed_total')} closed, as many as after "
            f"{_int(first, 'sessions_closed_total')}: it does not grow.",
            "Typically a single slot (a 'current document' global, a last-result cache) that keeps the "
            "latest session alive. It is bounded but keeps a whole session's data; keep such state on "
            "the session instead of in a module global.",
            "references", app,
        )]
    # Sessions, never Documents plus Models: an orphan is one session (its
    # Document), and so is a session in the models_retained state, however
    # many Models it keeps (models_retained_sessions; models_retained counts Models).
    values = [
        _int((s.get("apps") or {}).get(app), "orphans")
        + _int((s.get("apps") or {}).get(app), "models_retained_sessions")
        for s in history
    ]
    if len(values) < GROWTH_MIN_SAMPLES:
        return []
    steps_up = sum(1 for a, b in itertools.pairwise(values) if b > a)
    if values[-1] > values[0] and values[-1] == max(values) and steps_up >= 2:
        return [_item(
            "orphans-growing", "error",
            "Orphans keep growing",
            f"{app}: destroyed sessions proven to hold memory (orphaned Documents and sessions with "
            f"retained Models) went from {values[0]} to {values[-1]} over the last {len(values)} samples.",
            "Memory is lost with every session. Open the chain of one orphan to find the holder; until "
            "it is fixed, recycle worker processes and set container memory limits.",
            "scale", app,
        )]
    return []


def _missing_hooks(app: str, rows: Sequence[Mapping[str, Any]],
                   hooks: Mapping[str, int] | None) -> list[dict[str, Any]]:
    if not rows or not hooks:
        return []
    seen, with_hooks = _int(hooks, "sessions"), _int(hooks, "with_hooks")
    if not seen or with_hooks:
        return []
    return [_item(
        "no-cleanup-hooks", "warning",
        "A leaking app registers no on_session_destroyed cleanup",
        f"{app}: none of its {seen} session(s) had an on_session_destroyed callback of the app's own, "
        f"and {len(rows)} destroyed session(s) still hold memory.",
        "Register cleanup on the Document: curdoc().on_session_destroyed(cleanup) (Panel: "
        "pn.state.on_session_destroyed(cleanup)) and, in it, stop threads and periodic callbacks, "
        "unwatch shared widgets, drop cache entries and close files or connections of that session. "
        "Closure cells only: Bokeh clears the app module's globals before it runs.",
        "hooks", app,
    )]


def _rss_without_retention(app: str, rounds: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if len(rounds) < 2:
        return []
    first, last = rounds[0], rounds[-1]
    closed = _int(last, "sessions_closed_total") - _int(first, "sessions_closed_total")
    rss_first, rss_last = first.get("rss_bytes"), last.get("rss_bytes")
    if closed <= 0 or not isinstance(rss_first, int) or not isinstance(rss_last, int):
        return []
    per_session = (rss_last - rss_first) / closed
    if per_session < RSS_PER_SESSION_NOTE_BYTES or _int(last, "holding_sessions"):
        return []
    # Say only what was measured: Documents and Models always, other objects
    # only when a census ran after every round.
    censused = all(r.get("census") for r in rounds)
    measured = ("no Document, no Model and no object type growing with closed sessions (census)"
                if censused else "no Document or Model of the sessions retained (no census of other objects ran)")
    return [_item(
        "rss-grows-untracked", "info",
        "RSS grows although no Document or Model is retained",
        f"{app}: RSS grew by {format_bytes(per_session)} per closed session with {measured}.",
        "Look for plain-data caches (functools.lru_cache, pn.state.cache, dicts of DataFrames) and "
        "allocator fragmentation: compare tracemalloc snapshots (--memwatch-tracemalloc) and del large "
        "frames after building sources.",
        "profile", app,
    )]


def _data_hogs(sessions: Sequence[Mapping[str, Any]], retained: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for label, rows, id_key in (("live", sessions, "id"), ("destroyed", retained, "session_id")):
        if len(rows) < 2:
            continue
        total = sum(_int(r, "data_bytes") for r in rows)
        top = max(rows, key=lambda r: _int(r, "data_bytes"))
        top_bytes = _int(top, "data_bytes")
        if total and top_bytes >= HOG_MIN_BYTES and top_bytes > HOG_SHARE * total:
            out.append(_item(
                "one-session-holds-most-data", "warning",
                "One session holds most of the data",
                f"{label} session {str(top.get(id_key))[:12]}... of {top.get('app')} holds "
                f"{format_bytes(top_bytes)} of {format_bytes(total)} in ColumnDataSources "
                f"({100 * top_bytes / total:.0f}%, {len(rows)} {label} sessions).",
                "Send only the subset a view shows (filter or aggregate server-side, Datashader for "
                "large data), load lazily, and del the full DataFrame once the source is built.",
                "dataframes", str(top.get("app")),
            ))
    return out


# -- the census: types growing with closed sessions ---------------------------------


#: Modules whose growing types say the app is built on Panel/param/HoloViews
#: (then the param-watcher advice applies).
_PARAM_PACKAGES = ("param", "panel", "holoviews", "hvplot", "datashader")


def census_advice(app: str | None, census: Mapping[str, Any], *, documents: int = 0,
                  models: int = 0) -> list[dict[str, Any]]:
    """ Advice from a census (``bokeh-memwatch check``'s per-app census
    report, or ``CensusManager.state()`` of a live server, ``app`` None):
    application types whose count grows with closed sessions.

    Args:
        documents: Documents of destroyed sessions proven retained (orphans)
            when the census was taken: the growing types then include what
            they hold, and the advice points at them instead.
        models: Models proven retained without their Document (Panel).
    """
    rows = [r for r in census.get("growing") or () if not r.get("generic")]
    if not rows:
        return []
    shown = "; ".join(
        f"{r['type']} +{r['growth_per_session']:g}/session ({format_bytes(r['bytes_per_session'])}/session)"
        for r in rows[:5]
    )
    # A chain explains the growth only when its instance is new since the
    # first census (None: not known, an older census).
    # A chain that reached no root names no holder.
    held = next((r for r in rows if r.get("holder") and r.get("holder_complete")
                 and r.get("holder_instance_new") is not False), None)
    holder = f" One new {held['type']} is held by: {held['holder']}." if held else ""
    where = f"{app}: " if app else ""
    over = (f"(census of what a full collection keeps, over {census.get('closed_between')} closed "
            f"session(s))")
    modules = {r["type"].split(".", 1)[0] for r in rows}
    param = bool(modules & set(_PARAM_PACKAGES))
    if documents > 0 or models > 0:
        what = (f"{documents} Document(s)" if documents > 0
                else f"{models} Model(s) without their Document")
        return [_item(
            "types-grow-with-sessions", "warning",
            f"Objects of some types grow with the retained {'Documents' if documents > 0 else 'Models'}",
            f"{where}{len(rows)} type(s) grow in proportion to closed sessions, and destroyed sessions "
            f"retain {what}: {shown} {over}. What those retained objects hold grows with them, so this "
            f"growth is not a separate finding until they are freed.{holder}",
            "Fix what holds the retained " + ("Documents (the 'why alive' chains of the orphans)"
                                              if documents > 0 else "Models (their 'why alive' chains)")
            + ", then measure again: a type that still grows with closed sessions is held by something else.",
            "panel" if param and not documents else "references", app,
        )]
    fix = ("A process-wide object keeps per-session objects: a cache keyed by session, a list or dict "
           "in an imported module, a callback registered on a shared object. Follow the holder chain, "
           "release the session's entries in on_session_destroyed, or bound the cache.")
    if param:
        fix += (" Panel/param types grow: a param watcher or a .param reference to a shared "
                "Parameterized (widgets created with value=SHARED.param.x link both ways) keeps them; "
                "unwatch in pn.state.on_session_destroyed or pass plain values instead of shared .param "
                "references.")
    return [_item(
        "types-grow-with-sessions", "error",
        "Objects of some types grow with every closed session",
        f"{where}{len(rows)} type(s) grow in proportion to closed sessions although no Document or Model "
        f"of the destroyed sessions is retained: {shown} {over}.{holder}",
        fix, "panel" if param else "references", app,
    )]


