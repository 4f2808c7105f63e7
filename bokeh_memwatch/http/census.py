""" Tornado handlers for the census (:mod:`bokeh_memwatch.heap.census`), under
``{prefix}/memwatch/api/census``.

``GET`` answers the kept censuses' growth at once (no heap work); ``POST``
takes a census in the heap worker (a forked child), at most one per
``census_min_interval_s``: the handler only awaits it, so the IOLoop keeps
serving meanwhile.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from tornado.web import HTTPError

from ..heap.census import CensusUnavailable
from .base import JSONHandler, json_body, no_query_args

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

__all__ = ("CensusHandler",)

class CensusHandler(JSONHandler):
    """ ``GET``: the state; ``POST``: take a census, then the state. """

    job = "census"
    busy_retry_after_s = 5  # a census takes longer than a chain search

    def get(self) -> None:
        no_query_args(self)
        self.write_json(self.memwatch.census.state())

    async def post(self) -> None:
        no_query_args(self)
        body = json_body(self)
        if body:
            raise HTTPError(400, reason=f"census takes no parameters, got {', '.join(sorted(body))[:80]}")
        census = self.memwatch.census
        try:
            state = await self.run(census.run())
        except CensusUnavailable as e:  # rate-limited: an answer with the state, not an error
            if e.retry_after_s is None:
                raise HTTPError(501, reason=str(e)) from None
            self.set_header("Retry-After", str(max(1, math.ceil(e.retry_after_s))))
            self.write_json({"error": str(e), "retry_after_s": e.retry_after_s, **census.state()}, status=429)
            return
        self.write_json(state)
