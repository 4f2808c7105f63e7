""" Tornado handlers: memwatch's JSON API under ``{prefix}/memwatch/api/``.

Every response is JSON and names the process that answered (``pid`` in the
body, ``X-Memwatch-Pid`` header), so with ``--num-procs N`` a client knows
which worker it is talking to.  Client mistakes are 4xx JSON errors raised
from :func:`_int_arg` / :func:`_float_arg`; nothing a client sends becomes a
500.

Access: when the server has Bokeh authentication (``--auth-module``, Panel's
``--basic-auth`` or OAuth) the API requires the same login as the apps; with
no authentication only loopback clients are answered, unless the operator
passes ``--memwatch-allow-remote``.  A loopback client must also name a
loopback host (``Host: localhost``, ``127.0.0.1``, ``[::1]``, with or without a
port) or one of Bokeh's ``--allow-websocket-origin`` hosts, so that a page
rebound to 127.0.0.1 by DNS (``Host: evil.example``) is refused; a request
that came through a proxy (``X-Forwarded-For``, ``X-Real-Ip``, ``Forwarded``)
is never a loopback client.  Requests a page of another site makes
(``Sec-Fetch-Site: cross-site`` or ``same-site``, or a foreign ``Origin``)
are refused on every endpoint, GETs included; only a link followed to the
dashboard, the index, the summary or the metrics is let through.

Nothing a client sends reaches a log line: the ``token`` query parameter (and
the token itself, wherever it appears) is cut from the request's URL before
tornado or memwatch logs it.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import os
import re
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote_plus, urlsplit

from bokeh.server.util import check_allowlist
from bokeh.server.views.auth_request_handler import AuthRequestHandler
from bokeh.settings import settings as bokeh_settings
from tornado.web import HTTPError, RequestHandler

from .core import SessionAlive, SessionCollected, UnknownSession
from .error_pages import ERROR_PAGE_CSP, render_error_page, url_without_token, wants_html
from .heapwork import ForkRefused, HeapWorkBusy, HeapWorkError, HeapWorkTimeout
from .saferepr import merge_json_objects, render_json

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest
    from tornado.web import Application

    from .core import MemWatch, MemwatchOptions

log = logging.getLogger(__name__)

__all__ = (
    "ENDPOINTS",
    "JSONHandler",
    "float_arg",
    "int_arg",
    "json_body",
    "json_depth",
    "no_query_args",
    "redact_uri",
    "routes",
)

MAX_BODY_BYTES = 64 * 1024

#: Deepest nesting of arrays and objects a JSON body may have (actions take flat objects).
MAX_JSON_DEPTH = 32

#: Rows per history request: building and encoding 1000 samples costs ~25 ms on the loop;
#: page forward with ``since`` for more.
MAX_HISTORY_LIMIT = 1000


class JSONHandler(AuthRequestHandler):
    """ Common ground: access control, JSON bodies and JSON errors. """

    memwatch: MemWatch

    #: A link followed from another site may open this endpoint (cheap GETs
    #: only: the dashboard page, the index, the summary, the metrics).
    cross_site_navigation: ClassVar[bool] = False

    #: Set by ``_token_ok`` when a valid ``?token=`` set the cookie (a browser is then
    #: redirected to the same URL without it, error_pages.url_without_token).
    token_cookie_set: bool = False

    def __init__(self, application: Application, request: HTTPServerRequest, **kwargs: Any) -> None:
        # Before anything can log the request (tornado's access log, its
        # 405 for an unknown method, an uncaught exception's repr).
        memwatch = kwargs.get("memwatch")
        secret = memwatch.options.token if memwatch is not None else ""
        request.uri = redact_uri(request.uri or "", secret)
        request.query = redact_uri("?" + request.query, secret)[1:]
        super().__init__(application, request, **kwargs)

    def initialize(self, memwatch: MemWatch) -> None:
        self.memwatch = memwatch

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Memwatch-Pid", str(os.getpid()))

    async def prepare(self) -> None:
        await super().prepare()  # type: ignore[no-untyped-call]
        self.memwatch.note_tornado_app(self.application)  # type: ignore[arg-type]
        from .forwarding import forward_request, is_forwarded

        if not is_forwarded(self, self.memwatch):  # a worker of this server checked it already
            check_access(self, self.memwatch.options)
            if not (self.cross_site_navigation and self.request.method == "GET" and _is_navigation(self.request)):
                check_same_origin(self)
            if self.token_cookie_set and self.request.method == "GET" and wants_html(self.request):
                self.redirect(url_without_token(self.request), status=303)  # the token leaves the address bar
                return
        await forward_request(self, self.memwatch)  # answered by the worker that owns the object, if another

    def write_json(self, data: dict[str, Any], status: int = 200, *, rendered: bytes | None = None) -> None:
        """ Answer ``data``; ``rendered`` is a JSON object a heap worker
        already encoded, whose members follow ``data``'s, sent undecoded. """
        self.set_status(status)
        body = render_json({"pid": os.getpid(), **data})
        self.finish(body if rendered is None else merge_json_objects(body, rendered))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info is not None and not isinstance(exc_info[1], HTTPError):
            reason = "internal error in memwatch (logged on the server)"
        if wants_html(self.request):  # a browser: a page saying what to do (error_pages.py)
            memwatch = getattr(self, "memwatch", None)
            token_form = status_code == 401 and memwatch is not None and bool(memwatch.options.token)
            self.set_header("Content-Type", "text/html; charset=UTF-8")
            self.set_header("Content-Security-Policy", ERROR_PAGE_CSP)
            self.finish(render_error_page(status_code, reason, path=self.request.path, token_form=token_form))
            return
        self.finish(json.dumps({"pid": os.getpid(), "status": status_code, "error": reason}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError):
            secret = self.memwatch.options.token
            log.debug("memwatch %s %s: %s", self.request.method, redact_uri(self.request.path, secret),
                      redact_uri(str(value), secret))
        else:
            super().log_exception(typ, value, tb)


TOKEN_COOKIE = "memwatch_token"
TOKEN_HEADER = "X-Memwatch-Token"
REDACTED = "(redacted)"


def redact_uri(uri: str, secret: str = "") -> str:
    """ ``uri`` with the value of every ``token`` query parameter (however its
    name is encoded) replaced by ``(redacted)``, and ``secret`` (the token)
    wherever else it appears. """
    path, sep, query = uri.partition("?")
    if sep:
        parts = query.split("&")
        for i, part in enumerate(parts):
            name = part.split("=", 1)[0]
            if "token" in unquote_plus(name, encoding="latin-1", errors="replace").lower():
                parts[i] = f"{name}={REDACTED}"
        uri = path + sep + "&".join(parts)
    if secret and len(secret) >= 8:
        uri = uri.replace(secret, REDACTED)
    return uri


def check_access(handler: JSONHandler, options: MemwatchOptions) -> None:
    """ Who may read heap data: the server's logged-in users when it has
    authentication; holders of the memwatch token when one is set; else
    loopback clients only (unless ``allow_remote``). """
    if options.token and _token_ok(handler, options.token):
        return
    provider = handler.application.auth_provider  # type: ignore[attr-defined]
    if provider.get_user is not None or provider.get_user_async is not None:
        if handler.current_user:
            return
        raise HTTPError(401, reason="login required: memwatch uses the server's authentication")
    if options.token:
        raise HTTPError(401, reason=f"memwatch token required ({TOKEN_HEADER} header or ?token=)")
    if options.allow_remote:
        return
    forwarded = [name for name in FORWARDING_HEADERS if name in handler.request.headers]
    if forwarded:
        raise HTTPError(
            403,
            reason=f"this request came through a proxy ({', '.join(forwarded)}): memwatch answers only "
            "direct loopback clients when the server has no authentication (set --memwatch-token)",
        )
    if not _is_loopback(handler.request.remote_ip):
        raise HTTPError(
            403,
            reason="memwatch answers only loopback clients when the server has no authentication "
            "(set --memwatch-token, or --memwatch-allow-remote)",
        )
    check_host(handler)


#: Headers a proxy adds (and a client can forge); with ``--use-xheaders``
#: tornado takes the client's address from the first two.
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")


def check_host(handler: JSONHandler) -> None:
    """ Refuse a loopback request whose ``Host`` names neither a loopback
    host nor one of the server's websocket origins (``--allow-websocket-origin``,
    ``BOKEH_ALLOW_WS_ORIGIN``): a DNS-rebound page sends its own name. """
    host = handler.request.headers.get("Host")
    if not host:
        return  # HTTP/1.0 without Host: no browser sends that
    if host_is_loopback(host):
        return
    allowed = set(getattr(handler.application, "websocket_origins", ()) or ())
    allowed.update(bokeh_settings.allowed_ws_origin() or ())
    if check_allowlist(host.strip().lower(), list(allowed)):
        return
    raise HTTPError(
        403,
        reason=f"Host {host[:80]!r} is neither a loopback name nor an allowed websocket origin "
        "(add it with --allow-websocket-origin, or use localhost / 127.0.0.1)",
    )


_PORT = re.compile(r"[0-9]{1,5}")


def host_is_loopback(host: str) -> bool:
    """ Does a ``Host`` value (``name``, ``name:port``, ``[v6]``, ``[v6]:port``)
    name this machine's loopback: ``localhost`` or a loopback address? """
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and _PORT.fullmatch(rest[1:]))):
            return False
        return _is_loopback(name)
    if host.count(":") == 1:
        host, port = host.split(":")
        if not _PORT.fullmatch(port):
            return False
    name = host[:-1] if host.endswith(".") else host
    return name == "localhost" or _is_loopback(name)


def _is_navigation(request: HTTPServerRequest) -> bool:
    """ A top-level page load (a link followed, an address typed). """
    headers = request.headers
    return headers.get("Sec-Fetch-Mode") == "navigate" and headers.get("Sec-Fetch-Dest") == "document"


def _token_ok(handler: JSONHandler, token: str) -> bool:
    """ Constant-time comparison of every credential the request carries.  A
    valid one-time ``?token=`` sets an HttpOnly, SameSite=Strict cookie. """
    expected = token.encode()
    authorization = handler.request.headers.get("Authorization", "")
    candidates = [
        handler.request.headers.get(TOKEN_HEADER, ""),
        authorization[7:] if authorization[:7].lower() == "bearer " else "",
        handler.get_cookie(TOKEN_COOKIE, "") or "",
    ]
    query = handler.get_query_argument("token", "")
    ok = any(hmac.compare_digest(c.encode(), expected) for c in candidates if c)
    if query and hmac.compare_digest(query.encode(), expected):
        prefix = handler.application.prefix  # type: ignore[attr-defined]
        handler.set_cookie(
            TOKEN_COOKIE, token, path=f"{prefix}/memwatch", httponly=True, samesite="Strict",
            secure=handler.request.protocol == "https",
        )
        handler.token_cookie_set = True
        ok = True
    return ok


def check_same_origin(handler: RequestHandler) -> None:
    """ Refuse a request sent by a page of another origin: an action, or a
    GET that an ``<img>`` on any page could repeat (a heap job forks).
    (Actions also require a JSON body, which such a page cannot send without
    a CORS preflight that memwatch never grants.) """
    site = handler.request.headers.get("Sec-Fetch-Site", "same-origin")
    if site not in ("same-origin", "none"):
        raise HTTPError(
            403,
            reason=f"{site[:40]} request refused (Sec-Fetch-Site): open memwatch from its dashboard "
            "or type its address",
        )
    origin = handler.request.headers.get("Origin")
    if origin is None:
        return
    host = handler.request.headers.get("Host", "")
    if urlsplit(origin).netloc.lower() != host.lower():
        raise HTTPError(403, reason="cross-origin request refused")


def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback


def int_arg(handler: JSONHandler, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = handler.get_query_argument(name, None)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, reason=f"{name} must be an integer, got {raw[:40]!r}") from None
    if not lo <= value <= hi:
        raise HTTPError(400, reason=f"{name} must be between {lo} and {hi}, got {value}")
    return value


def float_arg(handler: JSONHandler, name: str) -> float | None:
    raw = handler.get_query_argument(name, None)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise HTTPError(400, reason=f"{name} must be a number, got {raw[:40]!r}") from None
    if not math.isfinite(value):
        raise HTTPError(400, reason=f"{name} must be finite")
    return value


def no_query_args(handler: JSONHandler, allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(handler.request.query_arguments) - {*allowed, "token"})
    if unknown:
        raise HTTPError(400, reason=f"unknown query parameter(s): {', '.join(u[:40] for u in unknown)}")


def json_body(handler: JSONHandler) -> dict[str, Any]:
    """ The JSON object a POST carries.  Actions must be sent as
    ``Content-Type: application/json``: a page on another origin cannot send
    that without a CORS preflight, which memwatch never grants. """
    content_type = handler.request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise HTTPError(415, reason="actions take a JSON body: send Content-Type: application/json")
    raw = handler.request.body or b"{}"
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPError(413, reason=f"body larger than {MAX_BODY_BYTES} bytes")
    too_deep = f"body nested deeper than {MAX_JSON_DEPTH} levels"
    try:
        body = json.loads(raw)
    except RecursionError:  # the decoder recurses once per level
        raise HTTPError(400, reason=too_deep) from None
    except ValueError:
        raise HTTPError(400, reason="body is not valid JSON") from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise HTTPError(400, reason=too_deep)
    if not isinstance(body, dict):
        raise HTTPError(400, reason="body must be a JSON object")
    return body


def json_depth(value: Any) -> int:
    """ The deepest nesting of lists and dicts in a decoded JSON value
    (``1`` for a flat object, ``0`` for a scalar); iterative, so any depth
    costs no recursion. """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in item if isinstance(child, (list, dict)))
    return deepest


#: Every endpoint, for ``GET api/``; modules that add routes add their rows.
ENDPOINTS: list[dict[str, str]] = [
    {"method": "GET", "path": "api/", "purpose": "this list"},
    {"method": "GET", "path": "api/summary",
     "purpose": "pid, RSS, sessions, Documents, Models, orphans (proven) and the other states of destroyed "
                "sessions, how verdicts are reached (verification), per-app counts, sampler and server settings"},
    {"method": "GET", "path": "api/sessions?app=",
     "purpose": "live sessions, heaviest first: id, app, connections, age, models, data_bytes"},
    {"method": "GET", "path": "api/orphans",
     "purpose": "destroyed sessions still holding something, by state: orphans and retained_models (proven "
                "leaks), held_by_timers (with held_until), awaiting_collection (garbage), pending"},
    {"method": "POST", "path": "api/orphans/<session_id>/chain",
     "purpose": "why alive: search the reference chain from a root to the orphan (in a forked child)"},
    {"method": "GET", "path": "api/orphans/<session_id>/chain",
     "purpose": "the last chain searched for that orphan (404 until a POST ran one)"},
    {"method": "GET", "path": "api/history?since=&limit=&pid=",
     "purpose": "samples of every worker and earlier runs (memory + history database), oldest first, with pid"},
    {"method": "GET", "path": "metrics",
     "purpose": "Prometheus text format: RSS, sessions, Documents, Models, orphans per worker (pid) and app"},
    {"method": "POST", "path": "api/gc", "purpose": "run one full garbage collection (rate-limited)"},
    {"method": "GET", "path": "api/recycle",
     "purpose": "recycling: this worker's state (threshold, drain), every worker's, the newest recycles"},
    {"method": "GET", "path": "healthz", "purpose": "liveness probe: 200 ok (no credentials, reveals nothing)"},
    {"method": "GET", "path": "readyz", "purpose": "readiness probe: 200 ok, 503 draining (no credentials)"},
    {"method": "GET", "path": "api/advice",
     "purpose": "the memory checklist applied to live data: [{id, severity, title, evidence, fix, article_section}]"},
    # heap snapshots (snapshot_views.py)
    {"method": "GET", "path": "api/tracemalloc", "purpose": "tracemalloc state: tracing, frames, traced bytes"},
    {"method": "POST", "path": "api/tracemalloc",
     "purpose": 'start or stop tracemalloc: {"action": "start"|"stop", "frames": N}'},
    {"method": "POST", "path": "api/snapshots", "purpose": "take a tracemalloc snapshot (in a forked child); {id}"},
    {"method": "GET", "path": "api/snapshots",
     "purpose": "stored snapshots: id, created_at, size_bytes, traced_bytes, frames"},
    {"method": "GET", "path": "api/snapshots/<id>/tracemalloc",
     "purpose": "download a snapshot file for tracemalloc.Snapshot.load (id 'baseline': the baseline's)"},
    {"method": "DELETE", "path": "api/snapshots/<id>", "purpose": "drop a stored snapshot"},
    {"method": "GET", "path": "api/baseline", "purpose": "the baseline: when, and what it holds"},
    {"method": "POST", "path": "api/baseline",
     "purpose": "set the baseline: a tracemalloc snapshot and a pympler type summary"},
    {"method": "GET",
     "path": "api/allocators?group=lineno|filename|traceback&limit=&compare=baseline|<id>&snapshot=<id>",
     "purpose": "top allocators (memwatch's own left out), or growth since the baseline"},
    {"method": "GET", "path": "api/types?limit=&compare=baseline",
     "purpose": "pympler type summary (rate-limited, age_s) and per-type growth since the baseline"},
    {"method": "GET", "path": "api/report?chains=",
     "purpose": "download a JSON report for a bug report: summary, sessions, orphans and chains, "
                "allocators, types, settings, versions"},
    # the dashboard at {prefix}/memwatch (dashboard.py)
    {"method": "GET", "path": "api/dashboard/timeline?window_s=&since=&max_points=",
     "purpose": "history as columns for the dashboard's plots, at most max_points points per window"},
]


class IndexHandler(JSONHandler):
    cross_site_navigation = True

    def get(self) -> None:
        no_query_args(self)
        prefix = self.application.prefix  # type: ignore[attr-defined]
        base = f"{prefix}/memwatch/"
        from .census_views import ENDPOINTS as CENSUS_ENDPOINTS
        from .memray_views import ENDPOINTS as MEMRAY_ENDPOINTS

        self.write_json({"endpoints": [{**e, "url": base + e["path"]} for e in [*ENDPOINTS, *CENSUS_ENDPOINTS,
                                                                                  *MEMRAY_ENDPOINTS]]})


class SummaryHandler(JSONHandler):
    cross_site_navigation = True

    def get(self) -> None:
        no_query_args(self)
        self.write_json(self.memwatch.summary())


class SessionsHandler(JSONHandler):
    def get(self) -> None:
        no_query_args(self, ("app",))
        app = self.get_query_argument("app", None)
        self.write_json({"sessions": self.memwatch.sessions(app)})


class OrphansHandler(JSONHandler):
    def get(self) -> None:
        no_query_args(self)
        self.write_json(self.memwatch.orphans())


class ChainHandler(JSONHandler):
    """ GET: the last answer (searching is an action, so it is a POST). """

    def get(self, session_id: str) -> None:
        no_query_args(self)
        try:
            result = self.memwatch.cached_chain(session_id)
        except UnknownSession:
            raise HTTPError(404, reason=f"no session {session_id[:80]!r} is known to memwatch") from None
        if result is None:
            raise HTTPError(404, reason="no recent search for that session: POST to this URL to run one")
        self.write_json(result)

    async def post(self, session_id: str) -> None:
        no_query_args(self)
        body = json_body(self)
        if body:
            raise HTTPError(400, reason=f"chain takes no parameters, got {', '.join(sorted(body))[:80]}")
        try:
            result = await self.memwatch.chain(session_id)
        except UnknownSession:
            raise HTTPError(404, reason=f"no session {session_id[:80]!r} is known to memwatch") from None
        except SessionAlive:
            raise HTTPError(409, reason="that session is alive: the server holds its Document") from None
        except SessionCollected:
            raise HTTPError(410, reason="nothing of that session is alive any more") from None
        except HeapWorkBusy:
            self.set_header("Retry-After", "2")
            raise HTTPError(429, reason="another heap search is running; retry shortly") from None
        except HeapWorkTimeout:
            raise HTTPError(504, reason="the search ran out of time; the heap may be very large") from None
        except ForkRefused as e:
            raise HTTPError(409, reason=str(e)) from None
        except HeapWorkError as e:
            log.warning("memwatch chain search failed: %s", e)
            raise HTTPError(503, reason="the search failed in its worker (logged on the server)") from None
        self.write_json(result)


class HistoryHandler(JSONHandler):
    def get(self) -> None:
        no_query_args(self, ("since", "limit", "pid"))
        since = float_arg(self, "since")
        limit = int_arg(self, "limit", 1000, lo=0, hi=MAX_HISTORY_LIMIT)
        pid = int_arg(self, "pid", 0, lo=0, hi=2**31) or None
        # Every worker's and earlier runs' samples too (history database).
        samples = self.memwatch.history(since=since, limit=limit, merged=True, pid=pid)
        self.write_json({"samples": samples, "count": len(samples)})


class GcHandler(JSONHandler):
    def get(self) -> None:
        raise HTTPError(405, reason="use POST: collecting garbage changes state")

    def post(self) -> None:
        no_query_args(self)
        body = json_body(self)
        if body:
            raise HTTPError(400, reason=f"gc takes no parameters, got {', '.join(sorted(body))[:80]}")
        result = self.memwatch.collect_garbage()
        if not result["ran"]:
            self.set_header("Retry-After", str(math.ceil(result["retry_after_s"])))
            self.write_json({**result, "error": "rate limited"}, status=429)
            return
        self.write_json(result)


class AdviceHandler(JSONHandler):
    """ ``GET api/advice``: see :mod:`bokeh_memwatch.advice`. """

    def get(self) -> None:
        no_query_args(self)
        self.write_json({"advice": self.memwatch.advice()})


class NotFoundHandler(JSONHandler):
    def get(self, path: str) -> None:
        raise HTTPError(404, reason=f"no memwatch endpoint {path[:80]!r}; see api/")

    post = get


Routes = list[tuple[str, type, dict[str, Any]]]


def routes(memwatch: MemWatch) -> Routes:
    """ The routes, relative to the server's prefix (Bokeh prepends it).

    Feature modules contribute their own lists here, before the catch-all.
    """
    from .census_views import census_routes
    from .dashboard import dashboard_routes
    from .memray_views import memray_routes
    from .metrics import metrics_routes
    from .probes import recycle_routes
    from .snapshot_views import snapshot_routes

    return [*api_routes(memwatch), *recycle_routes(memwatch), *metrics_routes(memwatch), *snapshot_routes(memwatch),
            *dashboard_routes(memwatch), *census_routes(memwatch), *memray_routes(memwatch),
            *fallback_routes(memwatch)]


def api_routes(memwatch: MemWatch) -> Routes:
    kw = {"memwatch": memwatch}
    return [
        (r"/memwatch/api/?", IndexHandler, kw),
        (r"/memwatch/api/summary/?", SummaryHandler, kw),
        (r"/memwatch/api/sessions/?", SessionsHandler, kw),
        (r"/memwatch/api/orphans/?", OrphansHandler, kw),
        (r"/memwatch/api/orphans/([^/]+)/chain/?", ChainHandler, kw),
        (r"/memwatch/api/history/?", HistoryHandler, kw),
        (r"/memwatch/api/gc/?", GcHandler, kw),
        (r"/memwatch/api/advice/?", AdviceHandler, kw),
    ]


def fallback_routes(memwatch: MemWatch) -> Routes:
    """ Last: JSON 404 for unknown API paths.  (The bare ``/memwatch`` is
    the dashboard's page, see dashboard.py.) """
    kw = {"memwatch": memwatch}
    return [
        (r"/memwatch/api/(.*)", NotFoundHandler, kw),
    ]
