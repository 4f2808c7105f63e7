""" A Bokeh ``--auth-module`` for the access tests: the user is whoever the
``X-Test-User`` header names. """
from __future__ import annotations

from typing import Any


def get_user(request_handler: Any) -> str | None:
    user = request_handler.request.headers.get("X-Test-User")
    return str(user) if user else None


login_url = "/login"
