// memwatch dashboard: polls the JSON API and fills the page's Bokeh models.
//
// The page is a standalone Bokeh document (bokeh_memwatch/dashboard.py); every
// model this script touches has a name.  The API lives next to the page:
// {prefix}/memwatch -> {prefix}/memwatch/api/.  Requests are same-origin with
// credentials (cookies); actions are POSTs with a JSON body.
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("memwatch-config").textContent);
  var API = window.location.pathname.replace(/\/+$/, "") + "/api/";
  var MB = 1e6;
  var ALLOCATORS_EVERY_MS = 15000;

  var state = {
    doc: null,
    windowS: config.windows_s[0],
    timeline: null,        // raw columns, unix seconds
    lastT: null,
    reloadTimeline: true,
    endpoints: null,       // {"GET api/summary": true, ...} from GET api/
    traced: false,
    allocatorsAt: 0,
    allocBusy: false,
    chainBusy: false,
    summary: null,
    shown: {},             // JSON of the data last written to each source
    polls: 0,
    errors: [],
  };

  // -- helpers -----------------------------------------------------------------------

  function esc(value) {
    return String(value === null || value === undefined ? "" : value)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  function model(name) {
    return state.doc ? state.doc.get_model_by_name(name) : null;
  }

  function setText(name, html) {
    var m = model(name);
    if (m && m.text !== html) m.text = html;
  }

  function num(value) {
    return value === null || value === undefined ? NaN : Number(value);
  }

  function fmtInt(value) {
    return value === null || value === undefined || isNaN(value) ? "–" : Math.round(value).toLocaleString();
  }

  function fmtMB(bytes, digits) {
    if (bytes === null || bytes === undefined || isNaN(bytes)) return "–";
    return (bytes / MB).toLocaleString(undefined, {
      minimumFractionDigits: digits === undefined ? 1 : digits,
      maximumFractionDigits: digits === undefined ? 1 : digits,
    });
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) return "–";
    seconds = Math.round(seconds);
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + s + " s";
    return s + " s";
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms >= 1000 && ms % 1000 === 0) return fmtDuration(ms / 1000);
    if (ms >= 1000) return (ms / 1000).toLocaleString() + " s";
    return ms.toLocaleString() + " ms";
  }

  function windowLabel(seconds) {
    return seconds >= 3600 ? seconds / 3600 + " h" : seconds / 60 + " min";
  }

  // Bokeh's datetime axis shows UTC; shift so that it shows the browser's local time.
  function localMs(unixSeconds) {
    var ms = unixSeconds * 1000;
    return ms - new Date(ms).getTimezoneOffset() * 60000;
  }

  // Replace a ColumnDataSource's data only when it changed; keep the selected row (by key).
  function setData(name, data, key) {
    var source = model(name);
    if (!source) return;
    var json = JSON.stringify(data);
    if (state.shown[name] === json) return;
    var selected = null;
    if (key && source.selected.indices.length) {
      var old = source.data[key];
      selected = old ? old[source.selected.indices[0]] : null;
    }
    state.shown[name] = json;
    source.data = data;
    var first = Object.keys(data)[0];
    fitTable(name, first ? data[first].length : 0);
    if (key) {
      var index = selected === null ? -1 : data[key].indexOf(selected);
      source.selected.indices = index >= 0 ? [index] : [];
    }
  }

  // Tables grow with their rows, up to a limit (then they scroll).
  var TABLE_ROWS = { apps: 8, sessions: 12, orphans: 10, allocators: 15, types: 15 };

  function fitTable(sourceName, rows) {
    var name = sourceName.replace(/_source$/, "");
    var table = model(name + "_table");
    if (!table || !(name in TABLE_ROWS)) return;
    var height = 32 + 26 * Math.max(1, Math.min(rows, TABLE_ROWS[name]));
    if (table.height !== height) table.height = height;
  }

  function columns(rows, fields) {
    var out = {};
    fields.forEach(function (f) { out[f] = rows.map(function (r) { return r[f]; }); });
    return out;
  }

  // With --num-procs N any worker may answer a request.  The page talks to
  // one worker, the first that answered, naming it in X-Memwatch-Worker (the
  // workers forward to it), so what it shows and what its buttons do stay on
  // one process; when that worker is gone (recycled) it takes the next one.
  var workerPid = null;

  async function request(method, path, body, retried) {
    var init = { method: method, credentials: "same-origin", headers: { "Accept": "application/json" } };
    if (method !== "GET") {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body || {});
    }
    if (workerPid !== null) init.headers["X-Memwatch-Worker"] = String(workerPid);
    var response;
    try {
      response = await fetch(API + path, init);
    } catch (e) {
      return { status: 0, ok: false, data: { error: "the server did not answer (" + e + ")" } };
    }
    var data;
    try {
      data = await response.json();
    } catch (e) {
      data = { error: "HTTP " + response.status + " (not JSON)" };
    }
    var error = (data && data.error) || "";
    if (workerPid !== null && !retried && ((response.status === 404 && /^no worker /.test(error)) ||
                                           (response.status === 502 && /^worker \d+ did not answer/.test(error)))) {
      workerPid = null;
      return request(method, path, body, true);
    }
    if (workerPid === null && response.ok && data && typeof data.pid === "number") workerPid = data.pid;
    return { status: response.status, ok: response.ok, data: data || {} };
  }

  function has(method, path) {
    return !!(state.endpoints && state.endpoints[method + " " + path]);
  }

  // -- polling -----------------------------------------------------------------------

  async function loadEndpoints() {
    var r = await request("GET", "");
    if (!r.ok) return false;
    var found = {};
    (r.data.endpoints || []).forEach(function (e) { found[e.method + " " + e.path.split("?")[0]] = true; });
    state.endpoints = found;
    return true;
  }

  async function poll() {
    try {
      if (!document.hidden) await pollOnce();
    } catch (e) {
      state.errors.push(String(e));
      setText("status", "<span class='mw-bad'>dashboard error: " + esc(e) + "</span>");
    }
    window.setTimeout(poll, config.poll_ms);
  }

  async function pollOnce() {
    if (state.endpoints === null) await loadEndpoints();
    var path = "dashboard/timeline?window_s=" + state.windowS;
    if (!state.reloadTimeline && state.lastT !== null) path += "&since=" + state.lastT;
    var reload = state.reloadTimeline;
    var results = await Promise.all([
      request("GET", "summary"), request("GET", "sessions"), request("GET", "orphans"), request("GET", path),
      has("GET", "api/tracemalloc") ? request("GET", "tracemalloc") : Promise.resolve(null),
      has("GET", "api/advice") ? request("GET", "advice") : Promise.resolve(null),
      has("GET", "api/census") ? request("GET", "census") : Promise.resolve(null),
    ]);
    var summary = results[0], sessions = results[1], orphans = results[2], timeline = results[3];
    var tracing = results[4], advice = results[5];
    if (!summary.ok) {
      setText("status", "<span class='mw-bad'>cannot read " + esc(API) + "summary: " +
        esc(summary.data.error || "HTTP " + summary.status) + "</span>");
      return;
    }
    state.summary = summary.data;
    if (timeline.ok) {
      mergeTimeline(timeline.data, reload);
      if (reload) state.reloadTimeline = false;
    }
    // Whether tracemalloc traces: asked directly where the API can tell (the
    // summary's traced_bytes is from the last sample, so it lags a start or stop).
    if (tracing && tracing.ok) {
      state.traced = !!tracing.data.tracing;
      if (state.traced) summary.data.traced_bytes = tracing.data.traced_bytes;
    } else {
      state.traced = summary.data.traced_bytes !== null && summary.data.traced_bytes !== undefined;
    }
    renderSummary(summary.data);
    if (sessions.ok) renderSessions(sessions.data.sessions || []);
    if (orphans.ok) renderOrphans(orphans.data);
    renderVerdict(summary.data);
    renderSettings(summary.data);
    if (advice && advice.ok) renderAdvice(advice.data.advice || []);
    if (results[6] && results[6].ok) renderCensus(results[6].data);
    maybeRefreshAllocators(summary.data);
    state.polls += 1;
  }

  function mergeTimeline(data, reload) {
    var cols = data.columns;
    if (reload || state.timeline === null) {
      state.timeline = cols;
    } else {
      Object.keys(cols).forEach(function (k) { state.timeline[k] = state.timeline[k].concat(cols[k]); });
    }
    var t = state.timeline.t;
    if (t.length) state.lastT = t[t.length - 1];
    // Drop what fell out of the window.
    var cutoff = data.now - state.windowS, drop = 0;
    while (drop < t.length && t[drop] <= cutoff) drop++;
    if (drop) Object.keys(state.timeline).forEach(function (k) { state.timeline[k] = state.timeline[k].slice(drop); });
    renderTimeline(data.interval_ms);
  }

  function renderTimeline(intervalMs) {
    var c = state.timeline, n = c.t.length;
    var out = { t: [], rss_mb: [], traced_mb: [], sessions: [], documents: [], orphans: [], models_retained: [],
                opened: [], closed: [], width: [] };
    for (var i = 0; i < n; i++) {
      out.t.push(localMs(c.t[i]));
      out.rss_mb.push(num(c.rss_bytes[i]) / MB);
      out.traced_mb.push(num(c.traced_bytes[i]) / MB);
      out.sessions.push(num(c.sessions[i]));
      out.documents.push(num(c.documents[i]));
      out.orphans.push(num(c.orphans[i]));
      out.models_retained.push(num(c.models_retained[i]));
      var opened = i ? num(c.sessions_created_total[i]) - num(c.sessions_created_total[i - 1]) : 0;
      var closed = i ? num(c.sessions_destroyed_total[i]) - num(c.sessions_destroyed_total[i - 1]) : 0;
      opened = isNaN(opened) || opened < 0 ? 0 : opened;
      closed = isNaN(closed) || closed < 0 ? 0 : closed;
      out.opened.push(opened ? opened : NaN);  // no bar rather than a flat line
      out.closed.push(closed ? -closed : NaN);
      var dt = i ? (c.t[i] - c.t[i - 1]) * 1000 : intervalMs;
      out.width.push(0.8 * dt);
    }
    setData("timeline_source", out);
    var memory = model("memory_plot");
    if (memory) {
      var traced = out.traced_mb.some(function (v) { return !isNaN(v); });
      var activity = model("activity_plot");
      var bars = out.opened.concat(out.closed).some(function (v) { return !isNaN(v); });
      var activityTitle = "Sessions opened (up) and closed (down) per sample" + (bars ? "" : ": none in this window");
      if (activity && activity.title.text !== activityTitle) activity.title.text = activityTitle;
      var title = "Memory (MB), last " + windowLabel(state.windowS) +
        (traced ? "" : " (tracemalloc is off: no traced memory)");
      if (memory.title.text !== title) memory.title.text = title;
    }
  }

  function stat(name, value, cls) {
    var m = model(name);
    if (!m) return;
    var html = m.text.replace(/<div class='mw-stat-value[^']*'>[\s\S]*<\/div>$/, "") +
      "<div class='mw-stat-value " + (cls || "") + "'>" + esc(value) + "</div>";
    if (m.text !== html) m.text = html;
  }

  function renderSummary(s) {
    stat("stat_rss", fmtMB(s.rss_bytes));
    stat("stat_traced", s.traced_bytes === null || s.traced_bytes === undefined ? "off" : fmtMB(s.traced_bytes),
      s.traced_bytes === null || s.traced_bytes === undefined ? "mw-muted" : "");
    stat("stat_sessions", fmtInt(s.sessions));
    stat("stat_documents", fmtInt(s.documents), s.documents > s.sessions ? "mw-warn" : "");
    stat("stat_orphans", fmtInt(s.orphans), s.orphans > 0 ? "mw-bad" : "mw-ok");
    stat("stat_retained", fmtInt(s.models_retained), s.models_retained > 0 ? "mw-bad" : "mw-ok");
    var unjudged = (s.pending_orphans || 0) + (s.held_by_timers || 0);
    stat("stat_pending", fmtInt(unjudged), unjudged > 0 ? "mw-warn" : "");

    var rows = Object.keys(s.apps || {}).sort().map(function (app) {
      var a = s.apps[app];
      return { app: app, sessions: a.sessions, connections: a.connections, documents: a.documents,
               models: a.models, data_mb: a.data_bytes / MB, orphans: a.orphans,
               models_retained: a.models_retained };
    });
    setData("apps_source", columns(rows, ["app", "sessions", "connections", "documents", "models", "data_mb",
                                          "orphans", "models_retained"]));
    var sampler = s.sampler || {};
    setText("status", "<span class='mw-muted'>process " + esc(s.pid) + " · up " + esc(fmtDuration(s.uptime_s)) +
      " · " + esc(fmtInt(s.sessions_created_total)) + " sessions opened and " +
      esc(fmtInt(s.sessions_destroyed_total)) + " closed since start · sampled every " +
      esc(fmtMs(sampler.interval_ms)) + " · updated " + esc(new Date().toLocaleTimeString()) + "</span>");
  }

  function renderVerdict(s) {
    var parts = [];
    var c = state.timeline;
    if (c && c.rss_bytes.length >= 2) {
      var first = null, last = null;
      for (var i = 0; i < c.rss_bytes.length; i++) {
        if (c.rss_bytes[i] !== null) { if (first === null) first = c.rss_bytes[i]; last = c.rss_bytes[i]; }
      }
      if (first !== null && last !== null) {
        var delta = last - first, span = c.t[c.t.length - 1] - c.t[0];
        var pct = first ? 100 * delta / first : 0;
        var spanText = "the last " + fmtDuration(span);
        if (span < 120 && Math.abs(delta) > 1 * MB) {
          parts.push("<span class='mw-warn'>RSS " + (delta >= 0 ? "+" : "") + fmtMB(delta) + " MB over " + spanText +
            " (too early to call a trend: a server grows while it warms up)</span>");
        } else if (delta > 5 * MB && pct > 2) {
          parts.push("<span class='mw-bad'>▲ RSS grew by " + fmtMB(delta) + " MB (+" + pct.toFixed(1) +
            "%) over " + spanText + "</span>");
        } else if (delta > 1 * MB) {
          parts.push("<span class='mw-warn'>RSS up " + fmtMB(delta) + " MB over " + spanText + "</span>");
        } else {
          parts.push("<span class='mw-ok'>RSS steady (" + (delta >= 0 ? "+" : "") + fmtMB(delta) + " MB over " +
            spanText + ")</span>");
        }
      }
    }
    if (s.orphans > 0) {
      parts.push("<span class='mw-bad'>" + fmtInt(s.orphans) + " orphaned Document" + (s.orphans === 1 ? "" : "s") +
        ": closed sessions whose Document is proven reachable from a root (see Orphans, “Why alive?”)</span>");
    } else {
      parts.push("<span class='mw-ok'>no orphaned Documents</span>");
    }
    if (s.models_retained > 0) {
      parts.push("<span class='mw-bad'>" + fmtInt(s.models_retained) +
        " Model(s) of closed sessions proven retained without their Document</span>");
    }
    if (s.pending_orphans > 0) {
      parts.push("<span class='mw-warn'>" + fmtInt(s.pending_orphans) +
        " closed session(s) not judged yet (grace period, verification to come)</span>");
    }
    if (s.held_by_timers > 0) {
      parts.push("<span class='mw-warn'>" + fmtInt(s.held_by_timers) +
        " closed session(s) held only by scheduled callbacks, verified again when those are due</span>");
    }
    if (s.awaiting_collection > 0) {
      parts.push("<span class='mw-muted'>" + fmtInt(s.awaiting_collection) +
        " closed session(s) are garbage Python's next full collection frees (not leaks)</span>");
    }
    var v = s.verification || {};
    if (v.technique && v.technique !== "reachability_scan") {
      parts.push("<span class='mw-warn'>verdicts from the collector's schedule (no fork here): " +
        "alive after a full collection since the destroy</span>");
    }
    setText("verdict", parts.join(" · "));
  }

  function renderSessions(rows) {
    var data = columns(rows, ["id", "app", "connections", "age_s", "documents", "models"]);
    data.data_mb = rows.map(function (r) { return r.data_bytes / MB; });
    setData("sessions_source", data, "id");
    setText("sessions_empty", rows.length ? "" : "No live sessions right now.");
  }

  function renderOrphans(data) {
    var rows = (data.orphans || []).concat(data.retained_models || [], data.held_by_timers || []);
    var out = {
      kind: rows.map(function (r) {
        if (r.status === "orphan") return "Document (orphan)";
        if (r.status === "models_retained") return "Models only (Document gone)";
        return r.document_alive ? "Document (held by a timer)" : "Models (held by a timer)";
      }),
      app: rows.map(function (r) { return r.app; }),
      session_id: rows.map(function (r) { return r.session_id; }),
      destroyed: rows.map(function (r) {
        return r.destroyed_at ? new Date(r.destroyed_at * 1000).toLocaleTimeString() : "";
      }),
      ago_s: rows.map(function (r) { return r.seconds_since_destroyed; }),
      models: rows.map(function (r) { return r.status === "models_retained" ? r.models_proven : r.models; }),
      data_mb: rows.map(function (r) { return r.data_bytes / MB; }),
      status: rows.map(function (r) {
        if (r.status === "held_until" && r.held_until) {
          return "held until " + new Date(r.held_until * 1000).toLocaleTimeString();
        }
        return r.status + (r.verified_by === "reachability_scan" ? " (proven)" : "");
      }),
    };
    setData("orphans_source", out, "session_id");
    var pending = (data.pending || []).length, awaiting = (data.awaiting_collection || []).length;
    var empty = rows.length ? "" : "No orphans: no closed session is proven to hold anything." +
      (pending ? " (" + pending + " closed session(s) not judged yet)" : "") +
      (awaiting ? " (" + awaiting + " awaiting Python's next full collection: garbage, not leaks)" : "");
    setText("orphans_empty", empty);
    var why = model("why_alive");
    if (why && why.disabled !== (rows.length === 0)) why.disabled = rows.length === 0;
  }

  var SERVER_LABELS = {
    check_unused_sessions_ms: "Bokeh checks for unused sessions every",
    unused_session_lifetime_ms: "an unused session (no connection) is destroyed after",
    keep_alive_ms: "websocket keep-alive ping every",
    mem_log_frequency_ms: "Bokeh's own memory log every (0: off)",
    prefix: "URL prefix",
  };

  function renderAdvice(items) {
    if (!items.length) {
      setText("advice", "<span class='mw-ok'>nothing to report: no orphans, no retained Models, " +
        "sessions cleaned up as configured</span>");
      return;
    }
    setText("advice", items.map(function (a) {
      var cls = a.severity === "error" ? "mw-bad" : (a.severity === "warning" ? "mw-warn" : "");
      return "<div class='mw-advice-item'><b class='" + cls + "'>[" + esc(a.severity) + "] " + esc(a.title) +
        "</b>" + (a.app ? " <code>" + esc(a.app) + "</code>" : "") +
        "<br><span>" + esc(a.evidence) + "</span><br><i>fix:</i> " + esc(a.fix) +
        (a.article_section ? " <small>(" + esc(a.article_section) + ")</small>" : "") + "</div>";
    }).join(""));
  }

  function settingRow(label, value, key) {
    return "<tr><td>" + esc(label) + "</td><td><b>" + esc(value) + "</b>" +
      (key ? " <code>" + esc(key) + "</code>" : "") + "</td></tr>";
  }

  function renderSettings(s) {
    var html = "<table>";
    var server = s.server || {};
    html += "<tr><td colspan=2><b>Bokeh server</b></td></tr>";
    Object.keys(server).forEach(function (k) {
      var v = server[k];
      var shown = /_ms$/.test(k) && typeof v === "number" ? fmtMs(v) : (v === "" ? "(none)" : v);
      html += settingRow(SERVER_LABELS[k] || k, shown, k);
    });
    if (!Object.keys(server).length) html += settingRow("settings", "not known yet");
    var sampler = s.sampler || {}, options = s.options || {};
    html += "<tr><td colspan=2><b>memwatch</b></td></tr>";
    html += settingRow("samples taken every", fmtMs(sampler.interval_ms), "interval_ms");
    html += settingRow("history kept", fmtDuration(options.history_s) + " (" + fmtInt(sampler.samples) + " of " +
      fmtInt(sampler.capacity) + " samples, " + fmtMB(sampler.store_bytes) + " MB)", "history_s");
    html += settingRow("a Document may outlive its session for", fmtMs(options.orphan_grace_ms), "orphan_grace_ms");
    html += settingRow("last / slowest sample took", (sampler.last_tick_ms || 0).toFixed(1) + " ms / " +
      (sampler.max_tick_ms || 0).toFixed(1) + " ms");
    if ((sampler.failed_collectors || []).length) {
      html += settingRow("failing collectors", sampler.failed_collectors.join(", "));
    }
    html += "<tr><td colspan=2><b>process</b></td></tr>";
    html += settingRow("pid", s.pid);
    var versions = s.versions || {};
    html += settingRow("versions", Object.keys(versions).map(function (k) {
      return k + " " + (versions[k] === null ? "(not loaded)" : versions[k]);
    }).join(", "));
    html += "</table>";
    setText("settings", html);
  }

  // -- why alive ------------------------------------------------------------------------

  async function whyAlive() {
    var source = model("orphans_source");
    if (!source || state.chainBusy) return;
    var ids = source.data.session_id || [];
    if (!ids.length) {
      setText("chain", "No orphan to explain.");
      return;
    }
    var index = source.selected.indices.length ? source.selected.indices[0] : 0;
    var id = ids[index], app = source.data.app[index];
    state.chainBusy = true;
    setText("chain", "Searching the heap for what holds session <code>" + esc(id) +
      "</code> alive (in a forked child; can take a few seconds)…");
    try {
      var path = "orphans/" + encodeURIComponent(id) + "/chain";
      var r = has("POST", "api/orphans/<session_id>/chain") ? await request("POST", path, {})
        : await request("GET", path);
      if (r.status === 405) r = await request("GET", path);
      setText("chain", r.ok ? renderChain(r.data, id, app)
        : "<span class='mw-bad'>Could not explain session " + esc(id) + ": " +
          esc(r.data.error || "HTTP " + r.status) + "</span>");
    } finally {
      state.chainBusy = false;
    }
  }

  function renderChain(c, id, app) {
    var hops = c.text ? String(c.text).split(" -> ") : [];
    var root = c.root || {};
    var html = "<b>Why is session <code>" + esc(id) + "</code> (" + esc(app) + ") still alive?</b><br>";
    if (root.name) {
      html += "Its " + esc(c.target || "Document") + " is held by <b>" + esc(root.kind) + " <code>" +
        esc(root.name) + "</code></b>";
    } else {
      html += "No root found";
    }
    html += c.complete ? " · <span class='mw-ok'>chain complete</span>"
      : " · <span class='mw-warn'>chain incomplete" + (c.reason ? ": " + esc(c.reason) : "") + "</span>";
    if (c.elapsed_s !== undefined) {
      html += " · <span class='mw-muted'>searched in " + esc(c.elapsed_s) + " s" +
        (c.technique ? " (" + esc(c.technique) + ")" : "") + (c.cached ? ", cached" : "") + "</span>";
    }
    if (hops.length) {
      html += "<ol>" + hops.map(function (hop) { return "<li><code>" + esc(hop) + "</code></li>"; }).join("") + "</ol>";
      html += "<span class='mw-muted'>as one line:</span> <code>" + esc(c.text) + "</code>";
    }
    return html;
  }

  async function collectGarbage() {
    var r = await request("POST", "gc", {});
    var text = r.ok ? "Garbage collection ran: " + fmtInt(r.data.collected) + " objects freed in " +
      esc(r.data.elapsed_ms) + " ms."
      : r.status === 429 ? "Garbage collection ran recently; try again in " + esc(r.data.retry_after_s) + " s."
        : "<span class='mw-bad'>Garbage collection refused: " + esc(r.data.error || r.status) + "</span>";
    setText("chain", text);
  }

  // -- allocators and types ----------------------------------------------------------

  function allocatorsAvailable() {
    return has("GET", "api/allocators");
  }

  function renderAllocState() {
    var button = model("alloc_start");
    var available = allocatorsAvailable();
    ["alloc_start", "alloc_group", "alloc_compare", "alloc_baseline", "alloc_refresh"].forEach(function (name) {
      var m = model(name);
      var disabled = !available || (name !== "alloc_start" && !state.traced);
      if (m && m.disabled !== disabled) m.disabled = disabled;
    });
    if (button) {
      var label = state.traced ? "Stop tracemalloc" : "Start tracemalloc";
      if (button.label !== label) button.label = label;
      var type = state.traced ? "default" : "primary";
      if (button.button_type !== type) button.button_type = type;
    }
    if (!available) {
      setText("alloc_status", "<span class='mw-muted'>The allocation API (<code>api/allocators</code>) is not " +
        "available on this server, so there is nothing to show here.</span>");
    } else if (!state.traced) {
      setText("alloc_status", "<b>Not traced: start tracemalloc</b> to see which lines allocate the memory " +
        "still in use. Tracing slows Python down a little and costs memory while it runs.");
      setData("allocators_source", { where: [], size_mb: [], count: [], diff_mb: [] });
    }
  }

  function maybeRefreshAllocators(summary) {
    renderAllocState();
    if (!allocatorsAvailable() || !state.traced || state.allocBusy) return;
    if (Date.now() - state.allocatorsAt < ALLOCATORS_EVERY_MS) return;
    refreshAllocators();
  }

  async function refreshAllocators() {
    if (!allocatorsAvailable() || state.allocBusy) { renderAllocState(); return; }
    var group = (model("alloc_group") || { value: "lineno" }).value;
    var compare = ((model("alloc_compare") || { active: [] }).active || []).length > 0;
    state.allocBusy = true;
    state.allocatorsAt = Date.now();
    try {
      var r = await request("GET", "allocators?group=" + encodeURIComponent(group) + "&limit=50" +
        (compare ? "&compare=baseline" : ""));
      if (r.ok) {
        state.traced = true;
        renderAllocState();
        var rows = r.data.allocators || [];
        setData("allocators_source", {
          where: rows.map(function (a) { return a.where; }),
          size_mb: rows.map(function (a) { return num(a.size_bytes) / MB; }),
          count: rows.map(function (a) { return a.count; }),
          diff_mb: rows.map(function (a) { return a.size_diff_bytes === undefined ? NaN : num(a.size_diff_bytes) / MB; }),
        });
        var total = rows.reduce(function (acc, a) { return acc + (a.size_bytes || 0); }, 0);
        setText("alloc_status", "Top " + rows.length + " allocation sites by " + esc(group) + " (" + fmtMB(total) +
          " MB between them" + (compare ? ", compared to the baseline" : "") + ") · updated " +
          esc(new Date().toLocaleTimeString()));
      } else if (r.status === 409) {
        state.traced = false;
        renderAllocState();
      } else if (r.status === 404 && !compare) {
        state.endpoints["GET api/allocators"] = false;
        renderAllocState();
      } else {
        setText("alloc_status", "<span class='mw-bad'>" + esc(r.data.error || "HTTP " + r.status) + "</span>");
      }
    } finally {
      state.allocBusy = false;
    }
  }

  async function startTracemalloc() {
    var action = state.traced ? { action: "stop" } : { action: "start", frames: 1 };
    var r = await request("POST", "tracemalloc", action);
    if (r.status === 404) {
      if (state.endpoints) state.endpoints["GET api/allocators"] = false;
      renderAllocState();
      return;
    }
    if (!r.ok) {
      setText("alloc_status", "<span class='mw-bad'>tracemalloc " + esc(action.action) + " refused: " +
        esc(r.data.error || "HTTP " + r.status) + "</span>");
      return;
    }
    state.traced = action.action === "start";
    state.allocatorsAt = 0;
    renderAllocState();
    if (state.traced) refreshAllocators();
  }

  async function setBaseline() {
    var r = await request("POST", "baseline", {});
    if (!r.ok) {
      setText("alloc_status", "<span class='mw-bad'>baseline refused: " + esc(r.data.error || "HTTP " + r.status) +
        "</span>");
      return;
    }
    var compare = model("alloc_compare");
    if (compare && !compare.active.length) compare.active = [0];  // triggers a refresh
    else refreshAllocators();
  }

  // -- census: types growing with closed sessions (census_views.py) -------------------------

  function renderCensus(c) {
    var rows = (c.growing || []).filter(function (r) { return !r.generic; });
    setData("census_source", {
      type: rows.map(function (r) { return r.type; }),
      per_session: rows.map(function (r) { return "+" + r.growth_per_session; }),
      mb_per_session: rows.map(function (r) { return num(r.bytes_per_session) / MB; }),
      count: rows.map(function (r) { return r.count; }),
      holder: rows.map(function (r) { return r.holder || "(not searched yet)"; }),
    });
    var text;
    if (!c.available) {
      text = "<span class='mw-muted'>no census here: it needs os.fork</span>";
    } else if (!c.censuses) {
      text = "no census yet" + (c.interval_s ? " (one every " + esc(fmtDuration(c.interval_s)) +
        " while sessions close)" : " (on demand only)");
    } else if (c.censuses < 2 || !c.closed_between) {
      text = c.censuses + " census(es); growth needs two with closed sessions between them";
    } else if (!rows.length) {
      text = "<span class='mw-ok'>no type grew with the " + esc(c.closed_between) +
        " session(s) closed between " + esc(c.censuses) + " censuses</span>";
    } else {
      text = "<span class='mw-bad'>" + rows.length + " type(s) grow with closed sessions</span> (over " +
        esc(c.closed_between) + " closed sessions)";
    }
    if (c.last_time) text += " · last census " + esc(new Date(c.last_time * 1000).toLocaleTimeString());
    if (c.last_error) text += " · <span class='mw-warn'>last error: " + esc(c.last_error) + "</span>";
    setText("census_status", text);
  }

  async function runCensus() {
    if (!has("POST", "api/census")) return;
    setText("census_status", "Taking a census in a forked child (walks the heap; can take seconds)…");
    var r = await request("POST", "census", {});
    if (!r.ok && r.status !== 429) {
      setText("census_status", "<span class='mw-bad'>" + esc(r.data.error || "HTTP " + r.status) + "</span>");
      return;
    }
    renderCensus(r.data);
  }

  async function refreshTypes() {
    if (!has("GET", "api/types")) {
      setText("types_status", "<span class='mw-muted'>The type summary API (<code>api/types</code>) is not " +
        "available on this server.</span>");
      return;
    }
    setText("types_status", "Summarizing every live object by type (walks the heap; can take seconds)…");
    var r = await request("GET", "types");
    if (!r.ok) {
      setText("types_status", "<span class='mw-bad'>" + esc(r.data.error || "HTTP " + r.status) + "</span>");
      return;
    }
    var rows = (r.data.types || []).slice(0, 200);
    setData("types_source", {
      type: rows.map(function (t) { return t.type; }),
      count: rows.map(function (t) { return t.count; }),
      size_mb: rows.map(function (t) { return num(t.size_bytes) / MB; }),
    });
    setText("types_status", rows.length + " types, largest first" +
      (r.data.age_s !== undefined ? " · summary taken " + esc(fmtDuration(r.data.age_s)) + " ago" : "") +
      " · updated " + esc(new Date().toLocaleTimeString()));
  }

  function setWindow(active) {
    state.windowS = config.windows_s[active] || config.windows_s[0];
    state.reloadTimeline = true;
    pollOnce().catch(function (e) { state.errors.push(String(e)); });
  }

  // -- start -------------------------------------------------------------------------------

  window.memwatchDashboard = {
    state: state,
    whyAlive: whyAlive,
    collectGarbage: collectGarbage,
    startTracemalloc: startTracemalloc,
    setBaseline: setBaseline,
    refreshAllocators: refreshAllocators,
    refreshTypes: refreshTypes,
    runCensus: runCensus,
    setWindow: setWindow,
  };

  function whenReady() {
    var docs = window.Bokeh && window.Bokeh.documents;
    if (docs && docs.length && docs[0].get_model_by_name("timeline_source")) {
      state.doc = docs[0];
      poll();
      return;
    }
    window.setTimeout(whenReady, 50);
  }
  whenReady();
})();
