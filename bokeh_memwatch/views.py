""" Tornado handlers: memwatch's JSON API under ``{prefix}/memwatch/api/``.

Every response is JSON and names the process that answered (``pid`` in the
body, ``X-Memwatch-Pid`` header), so with ``--num-procs N`` a client knows
which worker it is talking to.  Client mistakes are 4xx JSON errors raised
from :func:`_int_arg` / :func:`_float_arg`; nothing a client sends becomes a
500.

Access: when the server has Bokeh authentication (``--auth-module``, Panel's
``--basic-auth`` or OAuth) the API requires the same login as the apps; with
no authentication only loopback clients are answered, unless the operator
passes ``--memwatch-allow-remote``.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from bokeh.server.views.auth_request_handler import AuthRequestHandler
from tornado.web import HTTPError

from .core import SessionAlive, SessionCollected, UnknownSession
from .heapwork import HeapWorkBusy, HeapWorkError, HeapWorkTimeout

if TYPE_CHECKING:
    from .core import MemWatch

log = logging.getLogger(__name__)

__all__ = (
    "ENDPOINTS",
    "JSONHandler",
    "float_arg",
    "int_arg",
    "json_body",
    "no_query_args",
    "routes",
)

MAX_BODY_BYTES = 64 * 1024

MAX_HISTORY_LIMIT = 20_000


class JSONHandler(AuthRequestHandler):
    """ Common ground: access control, JSON bodies and JSON errors. """

    memwatch: MemWatch

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
        provider = self.application.auth_provider  # type: ignore[attr-defined]
        if provider.get_user is not None or provider.get_user_async is not None:
            if not self.current_user:
                raise HTTPError(401, reason="login required: memwatch uses the server's authentication")
            return
        if self.memwatch.options.allow_remote:
            return
        if not _is_loopback(self.request.remote_ip):
            raise HTTPError(
                403,
                reason="memwatch answers only loopback clients when the server has no authentication "
                "(see --memwatch-allow-remote)",
            )

    def write_json(self, data: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        body = {"pid": os.getpid(), **data}
        self.finish(json.dumps(body, allow_nan=False, default=_json_default))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info is not None and not isinstance(exc_info[1], HTTPError):
            reason = "internal error in memwatch (logged on the server)"
        self.finish(json.dumps({"pid": os.getpid(), "status": status_code, "error": reason}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HTTPError):
            log.debug("memwatch %s %s: %s", self.request.method, self.request.path, value)
        else:
            super().log_exception(typ, value, tb)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


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
    unknown = sorted(set(handler.request.query_arguments) - set(allowed))
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
    try:
        body = json.loads(raw)
    except ValueError:
        raise HTTPError(400, reason="body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPError(400, reason="body must be a JSON object")
    return body


#: Every endpoint, for ``GET api/``; modules that add routes add their rows.
ENDPOINTS: list[dict[str, str]] = [
    {"method": "GET", "path": "api/", "purpose": "this list"},
    {"method": "GET", "path": "api/summary",
     "purpose": "pid, RSS, sessions, Documents, Models, orphans, per-app counts, sampler and server settings"},
    {"method": "GET", "path": "api/sessions?app=",
     "purpose": "live sessions, heaviest first: id, app, connections, age, models, data_bytes"},
    {"method": "GET", "path": "api/orphans",
     "purpose": "destroyed sessions whose Document (orphans) or Models (retained_models) are still alive"},
    {"method": "GET", "path": "api/orphans/<session_id>/chain",
     "purpose": "why alive: the reference chain from a root to the orphan, searched in a forked child"},
    {"method": "GET", "path": "api/history?since=&limit=", "purpose": "stored samples, oldest first"},
    {"method": "POST", "path": "api/gc", "purpose": "run one full garbage collection (rate-limited)"},
]


class IndexHandler(JSONHandler):
    def get(self) -> None:
        no_query_args(self)
        prefix = self.application.prefix  # type: ignore[attr-defined]
        base = f"{prefix}/memwatch/"
        self.write_json({"endpoints": [{**e, "url": base + e["path"]} for e in ENDPOINTS]})


class SummaryHandler(JSONHandler):
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
    async def get(self, session_id: str) -> None:
        no_query_args(self)
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
        except HeapWorkError as e:
            log.warning("memwatch chain search failed: %s", e)
            raise HTTPError(503, reason="the search failed in its worker (logged on the server)") from None
        self.write_json(result)


class HistoryHandler(JSONHandler):
    def get(self) -> None:
        no_query_args(self, ("since", "limit"))
        since = float_arg(self, "since")
        limit = int_arg(self, "limit", 1000, lo=0, hi=MAX_HISTORY_LIMIT)
        samples = self.memwatch.history(since=since, limit=limit)
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


class RootHandler(JSONHandler):
    """ ``{prefix}/memwatch``: points at the API (the dashboard lives here later). """

    def get(self) -> None:
        prefix = self.application.prefix  # type: ignore[attr-defined]
        self.redirect(f"{prefix}/memwatch/api/")


class NotFoundHandler(JSONHandler):
    def get(self, path: str) -> None:
        raise HTTPError(404, reason=f"no memwatch endpoint {path[:80]!r}; see api/")

    post = get


Routes = list[tuple[str, type, dict[str, Any]]]


def routes(memwatch: MemWatch) -> Routes:
    """ The routes, relative to the server's prefix (Bokeh prepends it).

    Feature modules contribute their own lists here, before the catch-all.
    """
    return [*api_routes(memwatch), *fallback_routes(memwatch)]


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
    ]


def fallback_routes(memwatch: MemWatch) -> Routes:
    """ Last: JSON 404 for unknown API paths, and the bare ``/memwatch``. """
    kw = {"memwatch": memwatch}
    return [
        (r"/memwatch/api/(.*)", NotFoundHandler, kw),
        (r"/memwatch/?", RootHandler, kw),
    ]
