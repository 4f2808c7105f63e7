""" The API's contract for clients: JSON everywhere, 4xx for mistakes, loopback only. """
from __future__ import annotations

import pytest

from .conftest import api, http, script_app


@pytest.fixture
def url(serve) -> str:
    return str(serve({"/clean": script_app("clean")}).url)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "history?limit=abc", 400),
        ("GET", "history?limit=-1", 400),
        ("GET", "history?limit=99999999", 400),
        ("GET", "history?since=nan", 400),
        ("GET", "history?since=yesterday", 400),
        ("GET", "summary?bogus=1", 400),
        ("GET", "orphans/nope/chain", 404),
        ("GET", "orphans/%00%ff/chain", 400),  # not UTF-8: tornado refuses the path argument
        ("GET", "orphans/%00abc/chain", 404),
        ("GET", "no/such/endpoint", 404),
        ("GET", "gc", 405),
    ],
)
def test_client_mistakes_are_json_4xx(url: str, method: str, path: str, status: int) -> None:
    got, headers, body = http(method, f"{url}/memwatch/api/{path}")
    assert got == status, body
    assert headers["Content-Type"].startswith("application/json")
    assert body["status"] == status and body["error"] and isinstance(body["pid"], int)
    assert "Traceback" not in str(body)


def test_actions_need_a_json_body(url: str) -> None:
    assert http("POST", f"{url}/memwatch/api/gc")[0] == 415  # no Content-Type
    status, _, body = http("POST", f"{url}/memwatch/api/gc", headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["error"]
    assert api(url, "gc", "POST", body={"unexpected": 1}, expect=400)["error"]
    assert api(url, "gc", "POST")["ran"] is True
    again = api(url, "gc", "POST", expect=429)
    assert again["ran"] is False and again["retry_after_s"] > 0


def test_index_lists_every_endpoint(url: str) -> None:
    index = api(url, "")
    listed = {f"{e['method']} {e['path'].split('?')[0]}" for e in index["endpoints"]}
    assert {"GET api/summary", "GET api/sessions", "GET api/orphans", "GET api/orphans/<session_id>/chain",
            "GET api/history", "POST api/gc"} <= listed
    assert all(e["purpose"] for e in index["endpoints"])


def test_bare_memwatch_points_somewhere_useful(url: str) -> None:
    status, _, _ = http("GET", f"{url}/memwatch")
    assert status == 200


def test_every_answer_names_its_process(url: str) -> None:
    status, headers, body = http("GET", f"{url}/memwatch/api/summary")
    assert status == 200 and headers["X-Memwatch-Pid"] == str(body["pid"])
    for key in ("pid", "rss_bytes", "sessions", "documents", "models", "orphans"):
        assert key in body


def test_non_loopback_clients_are_refused_without_auth(serve) -> None:
    # Behind a proxy (--use-xheaders) the client's address comes from X-Forwarded-For:
    # that is how a non-loopback client reaches a server bound to loopback.
    server = serve({"/clean": script_app("clean")}, use_xheaders=True)
    remote = {"X-Forwarded-For": "203.0.113.9"}
    status, _, body = http("GET", f"{server.url}/memwatch/api/summary", headers=remote)
    assert status == 403 and "loopback" in body["error"]
    assert http("GET", f"{server.url}/memwatch/api/summary")[0] == 200
    assert http("GET", f"{server.url}/clean", headers=remote)[0] == 200  # the apps are not affected
    allowed = serve({"/clean": script_app("clean")}, use_xheaders=True, allow_remote=True)
    assert http("GET", f"{allowed.url}/memwatch/api/summary", headers=remote)[0] == 200
