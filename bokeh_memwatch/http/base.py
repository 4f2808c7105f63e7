""" The one base of memwatch's JSON handlers: access control, argument
parsing, JSON bodies, and one table from the lower layers' errors to HTTP
statuses (:data:`ERROR_STATUS`).

Every response is JSON and names the process that answered (``pid`` in the
body, ``X-Memwatch-Pid`` header), so with ``--num-procs N`` a client knows
which worker it is talking to.  Client mistakes are 4xx JSON errors raised
from :func:`int_arg` / :func:`float_arg` / :func:`json_body`, and the
errors of the work a handler runs become statuses through
:meth:`JSONHandler.errors`; nothing a client sends becomes a 500.

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

Over 400 lines: every check a request passes before a handler runs (token,
loopback, host, origin, forwarding) is here, once, next to the argument
parsers and the error table; splitting it would spread the access rules over
several files.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import unquote_plus, urlsplit

from bokeh.server.util import check_allowlist
from bokeh.server.views.auth_request_handler import AuthRequestHandler
from bokeh.settings import settings as bokeh_settings
from tornado.web import HTTPError, RequestHandler

from ..analyze.why_alive import SessionAlive, SessionCollected, UnknownSession
from ..cluster.forwarding import is_loopback
from ..heap.memray_backend import (
    HelperFailed,
    MemrayBusy,
    MemrayError,
    MemrayReadBusy,
    MemrayUnavailable,
    UnknownCapture,
)
from ..heap.snapshots import BaselineMissing, NotTracing, SnapshotError, SnapshotTooLarge, UnknownSnapshot
from ..heap.worker import ForkRefused, HeapWorkBusy, HeapWorkError, HeapWorkTimeout
from ..saferepr import merge_json_objects, render_json
from .error_pages import ERROR_PAGE_CSP, render_error_page, url_without_token, wants_html

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest
    from tornado.web import Application

    from ..monitor import Monitor
    from ..options import MemwatchOptions

log = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = (
    "ERROR_STATUS",
    "NOT_TRACING",
    "JSONHandler",
    "float_arg",
    "int_arg",
    "json_body",
    "json_depth",
    "no_query_args",
    "redact_uri",
)

MAX_BODY_BYTES = 64 * 1024

#: Deepest nesting of arrays and objects a JSON body may have (actions take flat objects).
MAX_JSON_DEPTH = 32

#: An error of the layers below -> (status, its reason for the client); the
#: first matching row applies, so subclasses come first.  The reason is made
#: from the error and the handler (its :attr:`JSONHandler.job`).
ErrorRow = tuple[type[Exception], int | Callable[[Exception], int], Callable[[Exception, "JSONHandler"], str]]
ERROR_STATUS: tuple[ErrorRow, ...] = (
    (UnknownSession, 404, lambda e, h: f"no session {str(e.args[0] if e.args else '')[:80]!r} is known to memwatch"),
    (SessionAlive, 409, lambda e, h: "that session is alive: the server holds its Document"),
    (SessionCollected, 410, lambda e, h: "nothing of that session is alive any more"),
    (NotTracing, 409, lambda e, h: NOT_TRACING),
    (UnknownSnapshot, 404, lambda e, h: str(e)),
    (BaselineMissing, 409, lambda e, h: str(e)),
    (SnapshotTooLarge, 507, lambda e, h: str(e)),
    (HeapWorkBusy, 429, lambda e, h: "another heap job is running; retry shortly"),
    (HeapWorkTimeout, 504, lambda e, h: f"the {h.job} ran out of time; the heap may be very large{h.timeout_hint}"),
    (ForkRefused, 409, lambda e, h: str(e)),
    (HeapWorkError, 503, lambda e, h: f"the {h.job} failed in its worker (logged on the server)"),
    (SnapshotError, 409, lambda e, h: str(e)[:300]),
    (MemrayUnavailable, 501, lambda e, h: str(e)),
    (UnknownCapture, 404, lambda e, h: str(e)),
    (MemrayReadBusy, 429, lambda e, h: str(e)),
    (MemrayBusy, 409, lambda e, h: str(e)),
    (HelperFailed, lambda e: 504 if getattr(e, "timed_out", False) else 503, lambda e, h: str(e)[:300]),
    (MemrayError, 409, lambda e, h: str(e)[:300]),  # NotTrackingMemray and the rest
)

#: The reason of a 409 for work that needs tracemalloc.
NOT_TRACING = ("tracemalloc is not tracing: POST api/tracemalloc {\"action\": \"start\", \"frames\": N} "
               "or start the server with --memwatch-tracemalloc N")


class JSONHandler(AuthRequestHandler):
    """ Common ground: access control, JSON bodies and JSON errors. """

    memwatch: Monitor

    #: A link followed from another site may open this endpoint (cheap GETs
    #: only: the dashboard page, the index, the summary, the metrics).
    cross_site_navigation: ClassVar[bool] = False

    #: What the handler's heavy work is called in its errors ("the search ran out of time").
    job: ClassVar[str] = "heap job"

    #: Said after a timeout: the option that bounds the job.
    timeout_hint: ClassVar[str] = ""

    #: Seconds a client is told to wait when the heap worker is busy (``Retry-After``).
    busy_retry_after_s: ClassVar[int] = 2

    #: Errors that are the client's, beyond :data:`ERROR_STATUS` (a bad argument the work itself found).
    client_errors: ClassVar[tuple[type[Exception], ...]] = ()

    @contextmanager
    def errors(self) -> Iterator[None]:
        """ Turn the errors of the work inside into HTTP errors, through
        :data:`ERROR_STATUS`; :attr:`client_errors` are 400s.  A failed heap
        job is logged (its reason stays on the server). """
        try:
            yield
        except HTTPError:
            raise
        except Exception as e:
            for kind, status_of, reason in ERROR_STATUS:
                if isinstance(e, kind):
                    status = status_of if isinstance(status_of, int) else status_of(e)
                    if status == 429:
                        self.set_header("Retry-After", str(self.busy_retry_after_s))
                    if status == 503:
                        log.warning("memwatch %s failed: %s", self.job, e)
                    raise HTTPError(status, reason=reason(e, self)) from None
            if isinstance(e, self.client_errors):
                raise HTTPError(400, reason=str(e)[:300]) from None
            raise

    async def run(self, work: Awaitable[T]) -> T:
        """ Await ``work`` inside :meth:`errors`. """
        with self.errors():
            return await work

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

    def initialize(self, memwatch: Monitor) -> None:
        self.memwatch = memwatch

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("X-Memwatch-Pid", str(os.getpid()))

    async def prepare(self) -> None:
        await super().prepare()  # type: ignore[no-untyped-call]
        self.memwatch.note_tornado_app(self.application)  # type: ignore[arg-type]
        from ..cluster.forwarding import forward_request, is_forwarded

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
    if not is_loopback(handler.request.remote_ip):
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
        return is_loopback(name)
    if host.count(":") == 1:
        host, port = host.split(":")
        if not _PORT.fullmatch(port):
            return False
    name = host[:-1] if host.endswith(".") else host
    return name == "localhost" or is_loopback(name)


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
