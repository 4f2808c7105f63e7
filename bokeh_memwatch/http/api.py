""" The JSON API's handlers under ``{prefix}/memwatch/api/``: summary,
sessions, orphans and their chains, history, gc, advice, the index and the
JSON 404.  Access, arguments and errors are :mod:`.base`'s; the routes are
:mod:`bokeh_memwatch.routes`'.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from tornado.web import HTTPError

from .base import JSONHandler, float_arg, int_arg, json_body, no_query_args

if TYPE_CHECKING:
    from ..monitor import Monitor

log = logging.getLogger(__name__)

__all__ = (
    "AdviceHandler",
    "ChainHandler",
    "GcHandler",
    "HistoryHandler",
    "IndexHandler",
    "NotFoundHandler",
    "OrphansHandler",
    "SessionsHandler",
    "SummaryHandler",
)

#: Rows per history request: building and encoding 1000 samples costs ~25 ms on the loop;
#: page forward with ``since`` for more.
MAX_HISTORY_LIMIT = 1000


class IndexHandler(JSONHandler):
    """ ``GET api/``: every endpoint (the route table's, :data:`bokeh_memwatch.routes.ENDPOINTS`). """

    cross_site_navigation = True

    def initialize(self, memwatch: Monitor, endpoints: Sequence[Mapping[str, str]] = ()) -> None:
        super().initialize(memwatch)
        self.endpoints = endpoints

    def get(self) -> None:
        no_query_args(self)
        prefix = self.application.prefix  # type: ignore[attr-defined]
        base = f"{prefix}/memwatch/"
        self.write_json({"endpoints": [{**e, "url": base + e["path"]} for e in self.endpoints]})


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

    job = "search"

    def get(self, session_id: str) -> None:
        no_query_args(self)
        with self.errors():
            result = self.memwatch.cached_chain(session_id)
        if result is None:
            raise HTTPError(404, reason="no recent search for that session: POST to this URL to run one")
        self.write_json(result)

    async def post(self, session_id: str) -> None:
        no_query_args(self)
        body = json_body(self)
        if body:
            raise HTTPError(400, reason=f"chain takes no parameters, got {', '.join(sorted(body))[:80]}")
        self.write_json(await self.run(self.memwatch.chain(session_id)))


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
    """ ``GET api/advice``: see :mod:`bokeh_memwatch.analyze.advice`. """

    def get(self) -> None:
        no_query_args(self)
        self.write_json({"advice": self.memwatch.advice()})


class NotFoundHandler(JSONHandler):
    def get(self, path: str) -> None:
        raise HTTPError(404, reason=f"no memwatch endpoint {path[:80]!r}; see api/")

    post = get
