""" Routes mounted by ``--extra-patterns tests.extra_routes`` in the CLI tests. """
from __future__ import annotations

from tornado.web import RequestHandler


class HelloHandler(RequestHandler):
    def get(self) -> None:
        self.write({"hello": "from an extra pattern"})


ROUTES = [(r"/hello", HelloHandler)]
OTHER = [(r"/other", HelloHandler)]
NOT_ROUTES = 42
