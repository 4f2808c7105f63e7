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
  var MiB = 1024 * 1024;
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
    pollMs: config.poll_ms,  // 0: paused (the refresh control)
    timer: null,
    chains: {},            // session id -> the last chain searched for it (GET/POST api/orphans/<id>/chain)
    orphanRows: [],
    selectedHolder: null,
    typesAt: 0,
    snapshotsAt: 0,
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

  // -- formatting: the rules of bokeh_memwatch/units.py, function for function
  // (tests/test_dashboard.py runs both on the same inputs).

  var UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

  function round1(value) {  // units._round1: one decimal, ties away from zero
    return (Math.floor(value * 10 + 0.5) / 10).toFixed(1);
  }

  function isMissing(value) {
    return value === null || value === undefined || typeof value !== "number" || !isFinite(value);
  }

  function fmtBytes(n) {  // units.format_bytes
    if (isMissing(n)) return "–";
    var sign = n < 0 ? "-" : "", value = Math.abs(n);
    if (value < 1024) return sign + Math.floor(value + 0.5) + " B";
    var unit = 1;
    for (; unit < UNITS.length; unit++) {
      value /= 1024;
      if (value < 1024 || unit === UNITS.length - 1) break;
    }
    return sign + round1(value) + " " + UNITS[unit];
  }

  function fmtDuration(seconds) {  // units.format_duration
    if (isMissing(seconds)) return "–";
    var sign = seconds < 0 ? "-" : "", s = Math.abs(seconds);
    if (s < 1) return sign + Math.floor(s * 1000 + 0.5) + " ms";
    if (s < 60) return sign + (s < 10 ? round1(s) : String(Math.floor(s + 0.5))) + " s";
    var whole = Math.floor(s + 0.5);
    if (whole < 3600) return sign + Math.floor(whole / 60) + " min " + (whole % 60) + " s";
    if (whole < 86400) return sign + Math.floor(whole / 3600) + " h " + Math.floor((whole % 3600) / 60) + " min";
    return sign + Math.floor(whole / 86400) + " d " + Math.floor((whole % 86400) / 3600) + " h";
  }

  function fmtMs(ms) {  // units.format_interval_ms: 0 turns a setting off
    if (ms === null || ms === undefined || ms === 0) return "off";
    return fmtDuration(ms / 1000);
  }

  function pad2(n) { return (n < 10 ? "0" : "") + n; }

  function fmtClock(unixSeconds) {  // units.format_clock: 24 h, local time
    if (isMissing(unixSeconds)) return "–";
    var d = new Date(unixSeconds * 1000);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  // An application's page: its path under the server's prefix ({prefix}/memwatch is this page).
  function appUrl(app) {
    return window.location.pathname.replace(/\/+$/, "").replace(/\/memwatch$/, "") + app;
  }

  // For the tables' cell templates and the axes (dashboard.py).
  window.memwatchFormat = { bytes: fmtBytes, duration: fmtDuration, interval: fmtMs, clock: fmtClock,
                            appUrl: appUrl };

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
    redrawTable(name);
  }

  // A DataTable redraws when its CDSView's indices change, and those are
  // 0..n-1 for any data of n rows: new values in as many rows as before
  // never reached the page (the frozen tables of issue 14).  The view's change
  // signal is what BokehJS's DataTableView listens to (updateGrid): it re-reads
  // the data, re-applies the column the user sorted by and the selection.
  function redrawTable(sourceName) {
    var table = model(sourceName.replace(/_source$/, "") + "_table");
    if (table && table.view && table.view.change) table.view.change.emit();
  }

  // Tables grow with their rows, up to a limit (then they scroll).
  var TABLE_ROWS = { apps: 8, sessions: 12, orphans: 10, holders: 8, allocators: 15, types: 15, census: 10 };

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
    renderLinks();
    return true;
  }

  function schedule() {
    if (state.timer !== null) window.clearTimeout(state.timer);
    state.timer = state.pollMs > 0 ? window.setTimeout(poll, state.pollMs) : null;
  }

  async function poll() {
    state.timer = null;
    try {
      if (!document.hidden) await pollOnce();
    } catch (e) {
      state.errors.push(String(e));
      setText("status", "<span class='mw-bad'>dashboard error: " + esc(e) + "</span>");
    }
    if (state.timer === null) schedule();
  }

  // The refresh control: a rate, or "paused" (0).
  function setRefresh(label) {
    var ms = config.refresh_choices[label];
    var wasPaused = state.pollMs === 0;
    state.pollMs = ms === undefined ? config.poll_ms : ms;
    if (state.pollMs > 0 && wasPaused) poll();
    else schedule();
    renderStatus();
  }

  async function pollOnce() {
    if (state.endpoints === null) await loadEndpoints();
    var path = "dashboard/timeline?window_s=" + state.windowS;
    if (!state.reloadTimeline && state.lastT !== null) path += "&since=" + state.lastT;
    var reload = state.reloadTimeline;
    var snapshotsDue = has("GET", "api/snapshots") && Date.now() - state.snapshotsAt > ALLOCATORS_EVERY_MS;
    var results = await Promise.all([
      request("GET", "summary"), request("GET", "sessions"), request("GET", "orphans"), request("GET", path),
      has("GET", "api/tracemalloc") ? request("GET", "tracemalloc") : Promise.resolve(null),
      has("GET", "api/advice") ? request("GET", "advice") : Promise.resolve(null),
      has("GET", "api/census") ? request("GET", "census") : Promise.resolve(null),
      snapshotsDue ? request("GET", "snapshots") : Promise.resolve(null),
    ]);
    var summary = results[0], sessions = results[1], orphans = results[2], timeline = results[3];
    var tracing = results[4], advice = results[5];
    if (!summary.ok) {
      setText("status", "<span class='mw-bad'>cannot read " + esc(API) + "summary: " +
        esc(summary.data.error || "HTTP " + summary.status) + "</span>");
      return;
    }
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
      state.traced = !isMissing(summary.data.traced_bytes);
    }
    state.summary = summary.data;
    state.updatedAt = Date.now() / 1000;
    renderSummary(summary.data);
    if (sessions.ok) renderSessions(sessions.data.sessions || []);
    if (orphans.ok) renderOrphans(orphans.data);
    renderVerdict(summary.data);
    renderSettings(summary.data);
    if (advice && advice.ok) renderAdvice(advice.data.advice || []);
    if (results[6] && results[6].ok) renderCensus(results[6].data);
    if (results[7]) {
      state.snapshotsAt = Date.now();
      if (results[7].ok) renderSnapshots(results[7].data);
    }
    maybeRefreshAllocators(summary.data);
    state.polls += 1;
  }

  // The data the page came with (dashboard.py: the summary and the first
  // window of the timeline), shown before the first request returns.
  function renderInitial() {
    var element = document.getElementById("memwatch-initial");
    var initial;
    try {
      initial = element ? JSON.parse(element.textContent) : null;
    } catch (e) {
      initial = null;
    }
    if (!initial || !initial.summary) return;
    state.summary = initial.summary;
    state.updatedAt = initial.summary.time;
    state.traced = !isMissing(initial.summary.traced_bytes);
    if (initial.timeline) {
      mergeTimeline(initial.timeline, true);
      state.reloadTimeline = false;
    }
    renderSummary(initial.summary);
    renderVerdict(initial.summary);
    renderSettings(initial.summary);
    state.initialShown = true;
  }

  function mergeTimeline(data, reload) {
    var cols = data.columns;
    if (reload || state.timeline === null) {
      state.timeline = cols;
    } else {
      Object.keys(cols).forEach(function (k) { state.timeline[k] = (state.timeline[k] || []).concat(cols[k]); });
    }
    var t = state.timeline.t;
    if (t.length) state.lastT = t[t.length - 1];
    // Drop what fell out of the window.
    var cutoff = data.now - state.windowS, drop = 0;
    while (drop < t.length && t[drop] <= cutoff) drop++;
    if (drop) Object.keys(state.timeline).forEach(function (k) { state.timeline[k] = state.timeline[k].slice(drop); });
    renderTimeline(data.interval_ms);
  }

  var COUNT_SERIES = [["sessions", "live sessions"], ["documents", "alive Documents"],
                      ["orphans", "orphaned Documents"], ["models_retained_sessions", "sessions with retained Models"]];

  function renderTimeline(intervalMs) {
    var c = state.timeline, n = c.t.length;
    var out = { t: [], rss_bytes: [], traced_bytes: [], sessions: [], documents: [], orphans: [],
                models_retained_sessions: [], opened: [], closed: [], width: [] };
    var column = function (name, i) { return c[name] ? num(c[name][i]) : NaN; };
    for (var i = 0; i < n; i++) {
      out.t.push(localMs(c.t[i]));
      out.rss_bytes.push(column("rss_bytes", i));
      out.traced_bytes.push(column("traced_bytes", i));
      COUNT_SERIES.forEach(function (series) { out[series[0]].push(column(series[0], i)); });
      var opened = i ? column("sessions_created_total", i) - column("sessions_created_total", i - 1) : 0;
      var closed = i ? column("sessions_destroyed_total", i) - column("sessions_destroyed_total", i - 1) : 0;
      opened = isNaN(opened) || opened < 0 ? 0 : opened;
      closed = isNaN(closed) || closed < 0 ? 0 : closed;
      out.opened.push(opened ? opened : NaN);  // no bar rather than a flat line
      out.closed.push(closed ? -closed : NaN);
      var dt = i ? (c.t[i] - c.t[i - 1]) * 1000 : intervalMs;
      out.width.push(0.8 * dt);
    }
    setData("timeline_source", out);
    fitCounts(out);
    fitTime(out.t);
    fitRange("memory_range", out.rss_bytes, 10 * MiB, false);
    fitRange("traced_range", out.traced_bytes, MiB, false);
    fitRange("activity_range", out.opened.concat(out.closed), 2, true);
    var memory = model("memory_plot");
    if (memory) {
      var title = "Resident memory (RSS), last " + windowLabel(state.windowS);
      if (memory.title.text !== title) memory.title.text = title;
    }
    var traced = model("traced_plot");
    if (traced) {
      var any = out.traced_bytes.some(function (v) { return !isNaN(v); });
      var tracedTitle = "Traced by tracemalloc" + (any ? "" : ": off in this window (start it under Top allocators)");
      if (traced.title.text !== tracedTitle) traced.title.text = tracedTitle;
    }
    var activity = model("activity_plot");
    if (activity) {
      var bars = out.opened.concat(out.closed).some(function (v) { return !isNaN(v); });
      var activityTitle = "Sessions opened (up) and closed (down) per sample" + (bars ? "" : ": none in this window");
      if (activity.title.text !== activityTitle) activity.title.text = activityTitle;
    }
  }

  // The shared time axis shows the window's data, and keeps following it
  // unless the user zoomed or panned (then only "reset" brings it back:
  // reset_start/reset_end are always the data's span).
  function fitTime(t) {
    var range = model("time_range");
    if (!range || !t.length) return;
    var span = Math.max(t[t.length - 1] - t[0], 1000);
    var start = t[0] - 0.02 * span, end = t[t.length - 1] + 0.02 * span;
    var last = state.timeSet;
    var following = last === undefined || (range.start === last.start && range.end === last.end) ||
      (range.start === range.reset_start && range.end === range.reset_end);
    range.reset_start = start;
    range.reset_end = end;
    if (following) {
      range.setv({ start: start, end: end });
      state.timeSet = { start: start, end: end };
    }
  }

  // A y-range on the finite values, padded, never narrower than minInterval
  // (so noise is not magnified); symmetric around 0 for the activity bars.
  function fitRange(name, values, minInterval, symmetric) {
    var range = model(name);
    if (!range) return;
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) { if (!isNaN(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    var start, end;
    if (symmetric) {
      var m = isFinite(hi) ? Math.max(Math.abs(lo), Math.abs(hi), minInterval / 2) : minInterval / 2;
      start = -1.15 * m; end = 1.15 * m;
    } else if (!isFinite(lo)) {
      start = 0; end = minInterval;
    } else {
      var pad = Math.max(0.2 * (hi - lo), (minInterval - (hi - lo)) / 2, 0);
      start = Math.max(0, lo - pad); end = hi + pad;
      if (end - start < minInterval) end = start + minInterval;
    }
    if (range.start !== start) range.start = start;
    if (range.end !== end) range.end = end;
  }

  // The counts plot's y-range follows the bulk of the values (their 95th
  // percentile) and the latest value of every line, so a one-sample spike
  // (Panel's cleanup briefly counts 135 Documents) cannot flatten the lines
  // people read.  The spike is not hidden: a marker on the top edge says
  // where it was, its hover the value.  A log axis would keep the spike but
  // cannot show the zeros these counts mostly are.
  function fitCounts(out) {
    var range = model("counts_range");
    if (!range) return;
    var values = [], latest = 0, highest = 0;
    COUNT_SERIES.forEach(function (series) {
      var v = out[series[0]];
      for (var i = 0; i < v.length; i++) {
        if (!isNaN(v[i])) { values.push(v[i]); highest = Math.max(highest, v[i]); }
      }
      for (var j = v.length - 1; j >= 0; j--) {
        if (!isNaN(v[j])) { latest = Math.max(latest, v[j]); break; }
      }
    });
    values.sort(function (a, b) { return a - b; });
    var bulk = values.length ? values[Math.min(values.length - 1, Math.floor(0.95 * values.length))] : 0;
    var top = Math.max(bulk, latest, 1);
    var end = highest > 1.5 * top + 2 ? Math.ceil(top * 1.25) + 1 : Math.ceil(highest * 1.1) + 1;
    end = Math.max(end, 5);
    var spikes = { t: [], y: [], value: [], series: [] };
    COUNT_SERIES.forEach(function (series) {
      var v = out[series[0]];
      for (var i = 0; i < v.length; i++) {
        if (v[i] > end) {
          spikes.t.push(out.t[i]); spikes.y.push(end * 0.97); spikes.value.push(v[i]); spikes.series.push(series[1]);
        }
      }
    });
    if (range.start !== 0) range.start = 0;
    if (range.end !== end) range.end = end;
    setData("spikes_source", spikes);
  }

  function stat(name, value, cls) {
    var m = model(name);
    if (!m) return;
    var html = m.text.replace(/<div class='mw-stat-value[^']*'>[\s\S]*<\/div>$/, "") +
      "<div class='mw-stat-value " + (cls || "") + "'>" + esc(value) + "</div>";
    if (m.text !== html) m.text = html;
  }

  function renderSummary(s) {
    var traced = isMissing(s.traced_bytes) ? null : s.traced_bytes;
    stat("stat_rss", fmtBytes(s.rss_bytes));
    stat("stat_traced", traced === null ? "off" : fmtBytes(traced), traced === null ? "mw-muted" : "");
    stat("stat_sessions", fmtInt(s.sessions));
    stat("stat_documents", fmtInt(s.documents), s.documents > s.sessions ? "mw-warn" : "");
    // The verdict states of tracker.STATES, one card each (sessions, never Models).
    stat("stat_orphans", fmtInt(s.orphans), s.orphans > 0 ? "mw-bad" : "mw-ok");
    var retained = s.models_retained_sessions;
    stat("stat_retained", fmtInt(retained), retained > 0 ? "mw-bad" : "mw-ok");
    var unjudged = (s.pending_orphans || 0) + (s.held_by_timers || 0);
    stat("stat_pending", fmtInt(unjudged), unjudged > 0 ? "mw-warn" : "");
    stat("stat_awaiting", fmtInt(s.awaiting_collection || 0), s.awaiting_collection > 0 ? "mw-muted" : "");

    var rows = Object.keys(s.apps || {}).sort().map(function (app) {
      var a = s.apps[app];
      return { app: app, sessions: a.sessions, connections: a.connections, documents: a.documents,
               models: a.models, data_bytes: a.data_bytes, orphans: a.orphans,
               models_retained_sessions: a.models_retained_sessions };
    });
    setData("apps_source", columns(rows, ["app", "sessions", "connections", "documents", "models", "data_bytes",
                                          "orphans", "models_retained_sessions"]), "app");
    renderStatus();
  }

  function renderStatus() {
    var s = state.summary;
    if (!s) return;
    var sampler = s.sampler || {};
    var refresh = state.pollMs > 0 ? "refreshed every " + fmtMs(state.pollMs)
      : "<b class='mw-warn'>paused</b> (pick a rate to resume)";
    setText("status", "<span class='mw-muted'>process " + esc(s.pid) + " · up " + esc(fmtDuration(s.uptime_s)) +
      " · " + esc(fmtInt(s.sessions_created_total)) + " sessions opened and " +
      esc(fmtInt(s.sessions_destroyed_total)) + " closed since start · sampled every " +
      esc(fmtMs(sampler.interval_ms)) + " · " + refresh + " · updated " + esc(fmtClock(state.updatedAt)) + "</span>");
  }

  function renderLinks() {
    var base = API.replace(/api\/$/, "");
    var links = [
      [API + "report", "download a JSON report (for a bug report)", has("GET", "api/report")],
      [base + "metrics", "Prometheus metrics", true],
      [API, "the JSON API", true],
      ["#mw-snapshots", "tracemalloc snapshots (below)", has("GET", "api/snapshots")],
    ];
    setText("links", "<span class='mw-links'>" + links.filter(function (l) { return l[2]; }).map(function (l) {
      return "<a href='" + esc(l[0]) + "'" + (l[0].charAt(0) === "#" ? "" : " target='_blank'") + ">" + esc(l[1]) +
        "</a>";
    }).join(" · ") + "</span>");
  }

  function renderVerdict(s) {
    var parts = [];
    var c = state.timeline;
    if (c && c.rss_bytes && c.rss_bytes.length >= 2) {
      var first = null, last = null;
      for (var i = 0; i < c.rss_bytes.length; i++) {
        if (c.rss_bytes[i] !== null) { if (first === null) first = c.rss_bytes[i]; last = c.rss_bytes[i]; }
      }
      if (first !== null && last !== null) {
        var delta = last - first, span = c.t[c.t.length - 1] - c.t[0];
        var pct = first ? 100 * delta / first : 0;
        var spanText = "the last " + fmtDuration(span);
        var signed = (delta >= 0 ? "+" : "") + fmtBytes(delta);
        if (span < 120 && Math.abs(delta) > MiB) {
          parts.push("<span class='mw-warn'>RSS " + signed + " over " + spanText +
            " (too early to call a trend: a server grows while it warms up)</span>");
        } else if (delta > 5 * MiB && pct > 2) {
          parts.push("<span class='mw-bad'>▲ RSS grew by " + fmtBytes(delta) + " (+" + pct.toFixed(1) +
            "%) over " + spanText + "</span>");
        } else if (delta > MiB) {
          parts.push("<span class='mw-warn'>RSS up " + fmtBytes(delta) + " over " + spanText + "</span>");
        } else {
          parts.push("<span class='mw-ok'>RSS steady (" + signed + " over " + spanText + ")</span>");
        }
      }
    }
    if (s.orphans > 0) {
      parts.push("<span class='mw-bad'>" + fmtInt(s.orphans) + " orphaned Document" + (s.orphans === 1 ? "" : "s") +
        ": closed sessions whose Document is proven reachable from a root (see Orphans, “Why alive?”)</span>");
    } else {
      parts.push("<span class='mw-ok'>no orphaned Documents</span>");
    }
    if (s.models_retained_sessions > 0) {
      parts.push("<span class='mw-bad'>" + fmtInt(s.models_retained_sessions) + " closed session" +
        (s.models_retained_sessions === 1 ? "" : "s") + " proven to retain Models without their Document (" +
        fmtInt(s.models_retained) + " Model" + (s.models_retained === 1 ? "" : "s") + ")</span>");
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
    var data = columns(rows, ["id", "app", "connections", "age_s", "documents", "models", "data_bytes"]);
    setData("sessions_source", data, "id");
    setText("sessions_empty", rows.length ? "" : "No live sessions right now.");
    selectionChanged("sessions");
  }

  function kindOf(r) {
    if (r.status === "orphan") return "Document (orphan)";
    if (r.status === "models_retained") return "Models only (Document gone)";
    return r.document_alive ? "Document (held by a timer)" : "Models (held by a timer)";
  }

  function renderOrphans(data) {
    var rows = (data.orphans || []).concat(data.retained_models || [], data.held_by_timers || []);
    state.orphanRows = rows;
    var out = {
      kind: rows.map(kindOf),
      app: rows.map(function (r) { return r.app; }),
      session_id: rows.map(function (r) { return r.session_id; }),
      destroyed_at: rows.map(function (r) { return r.destroyed_at; }),
      ago_s: rows.map(function (r) { return r.seconds_since_destroyed; }),
      models: rows.map(function (r) { return r.status === "models_retained" ? r.models_proven : r.models; }),
      data_bytes: rows.map(function (r) { return r.data_bytes; }),
      status: rows.map(function (r) {
        if (r.status === "held_until" && r.held_until) return "held until " + fmtClock(r.held_until);
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
    var all = model("explain_all");
    if (all && all.disabled !== (rows.length === 0)) all.disabled = rows.length === 0;
    renderHolders();
  }

  // -- orphans grouped by what holds them ------------------------------------------------

  // One chain per holder: list indices, dict keys and addresses differ from
  // one orphan to the next (DOCS[3], DOCS[4]), the holder does not.
  function holderKey(text) {
    return String(text).replace(/\[\d+\]/g, "[…]").replace(/\[(['"])[^'"\]]*\1\]/g, "[…]")
      .replace(/0x[0-9a-f]+/gi, "0x…");
  }

  function holderOf(row) {
    var c = state.chains[row.session_id];
    if (c && c.text) {
      var root = c.root || {};
      var key = holderKey(c.text);
      return { key: key, label: key, root: root, explained: true };
    }
    return { key: "?" + row.app + "|" + row.status, explained: false,
             label: "not searched yet (" + row.app + "): Explain all, or Why alive? on a row" };
  }

  function renderHolders() {
    var groups = {}, order = [];
    state.orphanRows.forEach(function (r) {
      var h = holderOf(r);
      if (!groups[h.key]) { groups[h.key] = { h: h, rows: [] }; order.push(h.key); }
      groups[h.key].rows.push(r);
    });
    order.sort(function (a, b) { return groups[b].rows.length - groups[a].rows.length; });
    state.holderGroups = groups;
    var uniq = function (values) { return values.filter(function (v, i) { return values.indexOf(v) === i; }); };
    setData("holders_source", {
      key: order,
      count: order.map(function (k) { return groups[k].rows.length; }),
      holder: order.map(function (k) { return groups[k].h.label; }),
      apps: order.map(function (k) { return uniq(groups[k].rows.map(function (r) { return r.app; })).join(", "); }),
      data_bytes: order.map(function (k) {
        return groups[k].rows.reduce(function (acc, r) { return acc + (r.data_bytes || 0); }, 0);
      }),
      kind: order.map(function (k) { return uniq(groups[k].rows.map(kindOf)).join(", "); }),
      explained: order.map(function (k) { return groups[k].h.explained; }),
    }, "key");
    if (state.selectedHolder === null && order.length && groups[order[0]].h.explained && !state.chainBusy) {
      showHolder(order[0]);
    }
  }

  function showHolder(key) {
    var group = state.holderGroups && state.holderGroups[key];
    if (!group) return;
    state.selectedHolder = key;
    var rows = group.rows;
    var explained = rows.filter(function (r) { return state.chains[r.session_id]; });
    if (!explained.length) {
      setText("chain", "<b>" + rows.length + " session(s) not searched yet.</b> “Explain all” searches each one's " +
        "chain (in a forked child, one at a time) and groups them by holder.");
      return;
    }
    var r = explained[0];
    setText("chain", renderChain(state.chains[r.session_id], r.session_id, r.app) +
      (rows.length > 1 ? "<br><span class='mw-muted'>" + rows.length + " sessions are held this way:</span> " +
        rows.map(function (x) { return "<code>" + esc(x.session_id) + "</code>"; }).join(" ") : ""));
  }

  function selectionChanged(which) {
    var source = model(which + "_source");
    if (!source) return;
    var index = source.selected.indices.length ? source.selected.indices[0] : -1;
    if (which === "holders") {
      if (index >= 0) showHolder(source.data.key[index]);
      return;
    }
    var idColumn = which === "sessions" ? "id" : "session_id";
    var target = which === "sessions" ? "session_id" : "orphan_id";
    var ids = source.data[idColumn] || [];
    setText(target, index >= 0 && index < ids.length
      ? "<span class='mw-muted'>selected session (select to copy):</span> <code>" + esc(ids[index]) + "</code>" : "");
  }

  var SERVER_LABELS = {
    check_unused_sessions_ms: "Bokeh checks for unused sessions every",
    unused_session_lifetime_ms: "an unused session (no connection) is destroyed after",
    keep_alive_ms: "websocket keep-alive ping every",
    mem_log_frequency_ms: "Bokeh's own memory log every",
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
      fmtInt(sampler.capacity) + " samples, " + fmtBytes(sampler.store_bytes) + ")", "history_s");
    html += settingRow("a Document may outlive its session for", fmtMs(options.orphan_grace_ms), "orphan_grace_ms");
    html += settingRow("last / slowest sample took", fmtDuration((sampler.last_tick_ms || 0) / 1000) + " / " +
      fmtDuration((sampler.max_tick_ms || 0) / 1000));
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

  async function searchChain(id) {
    var path = "orphans/" + encodeURIComponent(id) + "/chain";
    var r = has("POST", "api/orphans/<session_id>/chain") ? await request("POST", path, {})
      : await request("GET", path);
    if (r.status === 405) r = await request("GET", path);
    if (r.ok && r.data && r.data.text !== undefined) state.chains[id] = r.data;
    return r;
  }

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
      var r = await searchChain(id);
      setText("chain", r.ok ? renderChain(r.data, id, app)
        : "<span class='mw-bad'>Could not explain session " + esc(id) + ": " +
          esc(r.data.error || "HTTP " + r.status) + "</span>");
      state.selectedHolder = "";
      renderHolders();
    } finally {
      state.chainBusy = false;
    }
  }

  var EXPLAIN_AT_MOST = 50;

  // Every orphan not explained yet, one search at a time (the heap worker
  // runs one); then the holders table has one row per holder.
  async function explainAll() {
    if (state.chainBusy) return;
    state.chainBusy = true;
    var todo = state.orphanRows.filter(function (r) { return !state.chains[r.session_id]; }).slice(0, EXPLAIN_AT_MOST);
    var done = 0, failed = 0;
    try {
      for (var i = 0; i < todo.length; i++) {
        setText("chain", "Searching chain " + (i + 1) + " of " + todo.length + "…");
        var r = await searchChain(todo[i].session_id);
        for (var tries = 0; r.status === 429 && tries < 10; tries++) {
          await new Promise(function (resolve) { window.setTimeout(resolve, 1000 * (r.data.retry_after_s || 2)); });
          r = await searchChain(todo[i].session_id);
        }
        if (r.ok) done++; else failed++;
        renderHolders();
      }
    } finally {
      state.chainBusy = false;
    }
    state.selectedHolder = null;
    renderHolders();
    if (!todo.length || failed) {
      setText("gc_status", (todo.length ? done + " chain(s) searched, " + failed + " failed" :
        "every orphan is explained already") + ".");
    }
  }

  function renderChain(c, id, app) {
    var hops = c.text ? String(c.text).split(" -> ") : [];
    var root = c.root || {};
    var html = "<b>Why is session <code>" + esc(id) + "</code> (<a href='" + esc(appUrl(app)) + "' target='_blank'>" +
      esc(app) + "</a>) still alive?</b><br>";
    if (root.name) {
      html += "Its " + esc(c.target || "Document") + " is held by <b>" + esc(root.kind) + " <code>" +
        esc(root.name) + "</code></b>";
    } else {
      html += "No root found";
    }
    html += c.complete ? " · <span class='mw-ok'>chain complete</span>"
      : " · <span class='mw-warn'>chain incomplete" + (c.reason ? ": " + esc(c.reason) : "") + "</span>";
    if (c.elapsed_s !== undefined) {
      html += " · <span class='mw-muted'>searched in " + esc(fmtDuration(c.elapsed_s)) +
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
      esc(fmtDuration(r.data.elapsed_ms / 1000)) + "."
      : r.status === 429 ? "Garbage collection ran recently; try again in " + esc(fmtDuration(r.data.retry_after_s)) + "."
        : "<span class='mw-bad'>Garbage collection refused: " + esc(r.data.error || r.status) + "</span>";
    setText("gc_status", text);  // never over the chain shown
  }

  // -- allocators, snapshots and types ----------------------------------------------------

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
      setData("allocators_source", { where: [], size_bytes: [], count: [], diff_bytes: [] });
    }
  }

  function maybeRefreshAllocators(summary) {
    renderAllocState();
    if (!allocatorsAvailable() || !state.traced || state.allocBusy) return;
    if (Date.now() - state.allocatorsAt < ALLOCATORS_EVERY_MS) return;
    refreshAllocators();
  }

  async function refreshAllocators() {
    if (!allocatorsAvailable()) { renderAllocState(); return; }
    if (state.allocBusy) { state.allocAgain = true; return; }  // the choice made meanwhile wins
    var group = (model("alloc_group") || { value: "lineno" }).value;
    var compare = ((model("alloc_compare") || { active: [] }).active || []).length > 0;
    state.allocBusy = true;
    state.allocAgain = false;
    state.allocatorsAt = Date.now();
    try {
      var r = await request("GET", "allocators?group=" + encodeURIComponent(group) + "&limit=50" +
        (compare ? "&compare=baseline" : ""));
      if (r.ok) {
        state.traced = true;
        renderAllocState();
        var rows = r.data.allocators || [];
        setData("allocators_source", {
          where: rows.map(function (a) {
            return a.where + (group === "traceback" && a.traceback && a.traceback.length > 1
              ? " ← " + a.traceback.slice(1).join(" ← ") : "");
          }),
          size_bytes: rows.map(function (a) { return num(a.size_bytes); }),
          count: rows.map(function (a) { return a.count; }),
          diff_bytes: rows.map(function (a) { return a.size_diff_bytes === undefined ? NaN : num(a.size_diff_bytes); }),
        });
        var total = rows.reduce(function (acc, a) { return acc + (a.size_bytes || 0); }, 0);
        setText("alloc_status", "Top " + rows.length + " allocation sites by " + esc(group) + " (" + fmtBytes(total) +
          " between them" + (compare ? ", compared to the baseline" : "") + ") · updated " +
          esc(fmtClock(Date.now() / 1000)));
      } else if (r.status === 409) {
        state.traced = false;
        renderAllocState();
      } else if (r.status === 404 && !compare) {
        state.endpoints["GET api/allocators"] = false;
        renderAllocState();
      } else {
        setData("allocators_source", { where: [], size_bytes: [], count: [], diff_bytes: [] });
        setText("alloc_status", "<span class='mw-bad'>" + esc(r.data.error || "HTTP " + r.status) + "</span>");
      }
    } finally {
      state.allocBusy = false;
    }
    if (state.allocAgain) refreshAllocators();
  }

  // Enough frames that "group by traceback" differs from "line".
  var TRACE_FRAMES = 10;

  async function startTracemalloc() {
    var action = state.traced ? { action: "stop" } : { action: "start", frames: TRACE_FRAMES };
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
    state.snapshotsAt = 0;
    var compare = model("alloc_compare");
    if (compare && !compare.active.length) compare.active = [0];  // triggers a refresh
    else refreshAllocators();
  }

  function renderSnapshots(data) {
    var rows = data.snapshots || [];
    var base = data.baseline && data.baseline.tracemalloc;
    var html = "<a id='mw-snapshots'></a>";
    if (!rows.length && !base) {
      html += "<span class='mw-muted'>No snapshot stored. Take one with <code>POST " + esc(API) +
        "snapshots</code> (or “Set baseline now” above).</span>";
    } else {
      html += "<table><tr><th>snapshot</th><th>taken at</th><th>file</th><th>traced</th><th>frames</th>" +
        "<th></th></tr>";
      var line = function (id, label, r) {
        return "<tr><td><code>" + esc(label) + "</code></td><td>" + esc(fmtClock(r.created_at)) + "</td><td>" +
          esc(fmtBytes(r.size_bytes)) + "</td><td>" + esc(fmtBytes(r.traced_bytes)) + "</td><td>" +
          esc(r.frames) + "</td><td><a href='" + esc(API + "snapshots/" + encodeURIComponent(id) + "/tracemalloc") +
          "' download>download</a></td></tr>";
      };
      if (base) html += line("baseline", "baseline", base);
      rows.forEach(function (r) { html += line(r.id, r.id, r); });
      html += "</table>";
    }
    setText("snapshots", html);
  }

  // -- census: types growing with closed sessions (census_views.py) -------------------------

  function renderCensus(c) {
    var rows = (c.growing || []).filter(function (r) { return !r.generic; });
    setData("census_source", {
      type: rows.map(function (r) { return r.type; }),
      per_session: rows.map(function (r) { return "+" + r.growth_per_session; }),
      bytes_per_session: rows.map(function (r) { return num(r.bytes_per_session); }),
      count: rows.map(function (r) { return r.count; }),
      holder: rows.map(function (r) { return r.holder || "(not searched yet)"; }),
    }, "type");
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
    if (c.last_time) text += " · last census " + esc(fmtClock(c.last_time));
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
    var compare = ((model("types_compare") || { active: [] }).active || []).length > 0;
    setText("types_status", "Summarizing every live object by type (walks the heap; can take seconds)…");
    var r = await request("GET", "types?limit=200" + (compare ? "&compare=baseline" : ""));
    if (!r.ok) {
      setData("types_source", { type: [], count: [], size_bytes: [], count_diff: [], size_diff_bytes: [] });
      setText("types_status", "<span class='mw-bad'>" + esc(r.data.error || "HTTP " + r.status) + "</span>" +
        (compare ? " (“Set baseline now” under Top allocators takes one)" : ""));
      return;
    }
    var growth = compare && r.data.compare ? r.data.compare.types || [] : null;
    var rows = (growth || r.data.types || []).slice(0, 200);
    setData("types_source", {
      type: rows.map(function (t) { return t.type; }),
      count: rows.map(function (t) { return t.count; }),
      size_bytes: rows.map(function (t) { return num(t.size_bytes); }),
      count_diff: rows.map(function (t) { return t.count_diff === undefined ? NaN : t.count_diff; }),
      size_diff_bytes: rows.map(function (t) { return t.size_diff_bytes === undefined ? NaN : num(t.size_diff_bytes); }),
    }, "type");
    setText("types_status", rows.length + " types, " + (growth ? "most grown since the baseline first"
      : "largest first") + (compare && !growth ? " (no baseline type summary: “Set baseline now”)" : "") +
      (r.data.age_s !== undefined ? " · summary taken " + esc(fmtDuration(r.data.age_s)) + " ago" : "") +
      " · updated " + esc(fmtClock(Date.now() / 1000)));
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
    explainAll: explainAll,
    collectGarbage: collectGarbage,
    startTracemalloc: startTracemalloc,
    setBaseline: setBaseline,
    refreshAllocators: refreshAllocators,
    refreshTypes: refreshTypes,
    runCensus: runCensus,
    setWindow: setWindow,
    setRefresh: setRefresh,
    selectionChanged: selectionChanged,
    fitCounts: fitCounts,
    format: window.memwatchFormat,
  };

  function whenReady() {
    var docs = window.Bokeh && window.Bokeh.documents;
    if (docs && docs.length && docs[0].get_model_by_name("timeline_source")) {
      state.doc = docs[0];
      renderLinks();
      renderInitial();
      poll();  // at once: the tables the page did not come with
      return;
    }
    window.setTimeout(whenReady, 20);
  }
  whenReady();
})();
