""" What a browser gets when memwatch refuses or cannot answer it.

The API answers errors as JSON (``{"pid", "status", "error"}``).  A person
who opens ``/memwatch`` (or any memwatch URL) in a browser without
credentials should see a page saying what to do instead of raw JSON, so a
request whose ``Accept`` header asks for HTML and not JSON gets a small,
self-contained HTML page (no script, no outside resource) with the same
status and reason; a memwatch-token server's page has a field to enter the
token.  Every other client keeps the JSON.

``?token=`` in a browser's address bar: once the token was accepted (and the
cookie set by ``views._token_ok``), :func:`url_without_token` is where the
browser is sent, so the token leaves the address bar and the history.
"""
from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlencode

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest

log = logging.getLogger(__name__)

__all__ = (
    "ERROR_PAGE_CSP",
    "render_error_page",
    "url_without_token",
    "wants_html",
)

#: The page has inline CSS, no script; a form may only submit to this server.
ERROR_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"

_TITLES = {
    400: "Bad request",
    401: "Sign-in required",
    403: "Access refused",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    429: "Too many requests",
}


def wants_html(request: HTTPServerRequest) -> bool:
    """ Did a browser ask (``Accept`` names ``text/html`` and not JSON)? """
    accept = request.headers.get("Accept", "").lower()
    return "text/html" in accept and "application/json" not in accept


def url_without_token(request: HTTPServerRequest) -> str:
    """ The request's path and query without any ``token`` parameter (the
    names :func:`bokeh_memwatch.http.base.redact_uri` redacts). """
    kept = [(name, value.decode("utf-8", "replace"))
            for name, values in request.query_arguments.items() if "token" not in name.lower()
            for value in values]
    return request.path + (f"?{urlencode(kept)}" if kept else "")


def render_error_page(status: int, reason: str, *, path: str, token_form: bool) -> str:
    """ The HTML page for ``status``; ``reason`` is the JSON error's text
    (escaped here); ``token_form`` adds a field that sends ``?token=`` to
    ``path``. """
    title = _TITLES.get(status, "Error" if status >= 500 else "Request refused")
    form = ""
    if token_form:
        form = (f"<form method='get' action='{html.escape(path, quote=True)}'>"
                "<label>memwatch token <input type='password' name='token' autocomplete='current-password' "
                "required autofocus></label> <button type='submit'>Open</button></form>"
                "<p class='hint'>The token is kept in a cookie for this browser (HttpOnly, SameSite=Strict) and "
                "removed from the address bar.</p>")
    hints = {
        401: "Sign in to this server's applications first (memwatch uses the server's own login), "
             "or give memwatch's token.",
        403: "memwatch shows the heap of this server, so by default it answers only its own machine. "
             "Open it from the server (http://localhost:PORT/memwatch, an SSH tunnel) or ask the operator "
             "to set a memwatch token.",
    }
    hint = "" if token_form else f"<p class='hint'>{html.escape(hints.get(status, ''))}</p>"
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>memwatch: {status} {html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}"
        "h1{font-size:1.4em}.reason{background:#f6f6f6;border-left:4px solid #c62828;padding:.5em .8em}"
        ".hint{color:#555}input{font:inherit;padding:.2em}button{font:inherit}</style></head><body>"
        f"<h1>memwatch: {status} {html.escape(title)}</h1>"
        f"<p class='reason'>{html.escape(reason)}</p>{hint}{form}</body></html>"
    )
