""" Thousands of generated requests against every endpoint of a real server:
not one may answer 5xx, and every answer is JSON (or the dashboard's HTML).

Bodies include nested and oversized JSON; headers include forged ``Host``,
``Origin``, ``Sec-Fetch-*`` and proxy headers, whose refusal is checked too. """
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import api, http, open_and_close_sessions, script_app, wait_until

TEMPLATES = [
    "", "summary", "sessions", "orphans", "orphans/{id}/chain", "history", "gc", "advice",
    "snapshots", "snapshots/{id}", "snapshots/{id}/tracemalloc", "baseline", "allocators", "types",
    "report", "tracemalloc", "dashboard/timeline", "{text}", "{text}/{text}",
]
PARAMS = ["app", "since", "limit", "group", "compare", "snapshot", "window_s", "max_points", "token", "x"]
nasty_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=0, max_size=30,
)
values = st.one_of(
    nasty_text, st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(str),
    st.sampled_from(["lineno", "filename", "traceback", "baseline", "-1", "0", "1e309", "..%2f..%2fetc%2fpasswd"]),
)
bodies = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["action", "frames", "id", "x"]),
                    st.one_of(st.integers(-5, 10**9), nasty_text, st.none(), st.booleans()), max_size=3),
    st.lists(st.integers(), max_size=3),
    nasty_text,
)
#: Raw bodies, as (kind, size) (built in the test: hypothesis would print 60 KB reprs):
#: deep nesting (valid or not) and more than the 64 KB a body may have.
RAW_KINDS = {
    "open_arrays": lambda n: b"[" * n,
    "open_objects": lambda n: b'{"a":' * (n // 5),
    "nested_arrays": lambda n: b'{"x":' + b"[" * (n // 2) + b"]" * (n // 2) + b"}",
    "nested_objects": lambda n: b'{"action":' + b'{"a":' * (n // 6) + b"1" + b"}" * (n // 6) + b"}",
    "oversized": lambda n: b'{"x":"' + b"a" * (n + 64 * 1024) + b'"}',
    "bytes": lambda n: bytes(range(256)) * (n // 256 + 1),
}
raw_bodies = st.tuples(st.sampled_from(sorted(RAW_KINDS)), st.integers(1, 70_000))
#: What a Host may hold by RFC 3986 (tornado answers anything else itself, with a 400).
host_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+;=:",
                    min_size=0, max_size=40)
#: (Host, whether memwatch must refuse it); None: the real one.
hosts = st.one_of(
    st.just((None, False)),
    st.sampled_from([("localhost", False), ("LOCALHOST.", False), ("127.0.0.1", False), ("127.9.9.9:1", False),
                     ("[::1]", False), ("[::1]:80", False), ("[::ffff:127.0.0.1]:5", False),
                     ("evil.example", True), ("evil.example:{port}", True), ("127.0.0.1.evil.example", True),
                     ("localhost.evil.example:{port}", True), ("[::1]evil", True), ("[fe80::1]", True),
                     ("2130706433", True), ("", False)]),
    host_text.map(lambda h: (h, None)),  # anything: refused unless it happens to be loopback
)
fetch_sites = st.sampled_from([None, None, "same-origin", "none", "cross-site", "same-site", "garbage"])
origins = st.sampled_from([None, None, "http://evil.example", "null", "http://localhost", "garbage"])
proxied = st.sampled_from([None, None, None, ("X-Real-Ip", "127.0.0.1"), ("X-Forwarded-For", "127.0.0.1"),
                           ("Forwarded", "for=127.0.0.1")])


def _check(status: int, method: str, url: str, response_headers: dict[str, str], payload: Any) -> None:
    assert status < 500, (method, url, payload)
    kind = response_headers.get("Content-Type", "")
    if status != 200 or "json" in kind:
        assert "json" in kind, (method, url, kind)
        assert isinstance(payload, dict) and "pid" in payload, payload
        if status >= 400:
            assert payload["error"] and "Traceback" not in json.dumps(payload)


def test_no_request_gets_a_5xx(serve) -> None:
    server = serve({"/app": script_app("leak_global")}, gc_min_interval_s=0, chain_cache_s=3600)
    ids = open_and_close_sessions(server.url + "/app", 2)
    wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] >= 2)
    api(server.url, "gc", "POST")
    base = f"{server.url}/memwatch/api/"
    statuses: Counter[int] = Counter()

    @settings(max_examples=2000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(
        template=st.sampled_from(TEMPLATES),
        ident=st.one_of(st.sampled_from([*ids, "baseline", "..", "%2e%2e"]), nasty_text),
        text=nasty_text,
        method=st.sampled_from(["GET", "GET", "POST", "DELETE", "PUT"]),
        params=st.dictionaries(st.sampled_from(PARAMS), values, max_size=3),
        body=bodies,
        content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
    )
    def one(  # noqa: PLR0917 - hypothesis passes the drawn values by keyword anyway
        template: str, ident: str, text: str, method: str, params: dict[str, str], body: object, content_type: str,
    ) -> None:
        path = template.format(id=urllib.parse.quote(ident, safe=""), text=urllib.parse.quote(text, safe=""))
        query = urllib.parse.urlencode(params)
        url = base + path + ("?" + query if query else "")
        headers = {"Content-Type": content_type}
        data = None if body is None or method in ("GET",) else body
        status, response_headers, payload = http(method, url, data, headers=headers)
        statuses[status] += 1
        _check(status, method, url, response_headers, payload)

    one()
    print(f"fuzzed {sum(statuses.values())} requests: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 2000
    assert not [s for s in statuses if s >= 500]


def test_hostile_bodies_and_forged_headers(serve) -> None:
    """ Nested and oversized JSON to every action; forged Host, Origin,
    Sec-Fetch-Site and proxy headers on every endpoint: never a 5xx, and a
    forged header is refused (403; 405 when tornado refuses the method first). """
    from bokeh_memwatch.http.base import host_is_loopback

    server = serve({"/app": script_app("leak_global")}, gc_min_interval_s=0, chain_cache_s=3600)
    ids = open_and_close_sessions(server.url + "/app", 1)
    wait_until(lambda: api(server.url, "summary")["sessions_destroyed_total"] >= 1)
    port = server.server.port
    base = f"{server.url}/memwatch/api/"
    statuses: Counter[int] = Counter()

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                     HealthCheck.data_too_large])
    @given(
        template=st.sampled_from(TEMPLATES),
        method=st.sampled_from(["GET", "POST", "POST", "DELETE"]),
        raw=st.one_of(st.none(), raw_bodies),
        host=hosts, site=fetch_sites, origin=origins, proxy=proxied,
        navigate=st.booleans(),
        # Which headers are forged: none in half the requests (so bodies reach the actions).
        forge=st.sampled_from(["none"] * 5 + ["host", "site", "origin", "proxy", "all"]),
    )
    def one(  # noqa: PLR0917 - hypothesis passes the drawn values by keyword anyway
        template: str, method: str, raw: tuple[str, int] | None, host: tuple[str | None, bool | None], site: str | None,
        origin: str | None, proxy: tuple[str, str] | None, navigate: bool, forge: str,
    ) -> None:
        if forge not in ("host", "all"):
            host = (None, False)
        if forge not in ("site", "all"):
            site, navigate = None, False
        if forge not in ("origin", "all"):
            origin = None
        if forge not in ("proxy", "all"):
            proxy = None
        path = template.format(id=ids[0], text="x")
        url = base + path
        headers = {"Content-Type": "application/json"}
        name, refuse = host
        if name is not None:
            headers["Host"] = name.replace("{port}", str(port))
            if refuse is None:
                refuse = bool(name) and not host_is_loopback(name)
        if site is not None:
            headers["Sec-Fetch-Site"] = site
        if navigate:
            headers.update({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"})
        if origin is not None:
            headers["Origin"] = origin
        if proxy is not None:
            headers[proxy[0]] = proxy[1]
        data = RAW_KINDS[raw[0]](raw[1]) if method == "POST" and raw is not None else None
        try:
            status, response_headers, payload = http(method, url, data, headers)
        except ValueError:  # http.client refuses to send that header value at all
            return
        statuses[status] += 1
        if status == 400 and "X-Memwatch-Pid" not in response_headers:
            return  # tornado's own answer to a malformed Host, before any route
        _check(status, method, url, response_headers, payload)
        forged_site = site not in (None, "same-origin", "none") and not (navigate and path in ("", "summary"))
        sent_host = headers.get("Host", f"127.0.0.1:{port}").lower()
        forged_origin = (origin is not None and urllib.parse.urlsplit(origin).netloc.lower() != sent_host
                         and not (navigate and path in ("", "summary")))
        if refuse or proxy is not None or forged_site or forged_origin:
            assert status in (403, 405), (method, url, headers, status, payload)
        if data is not None and status not in (403, 404, 405):
            # Bodies this deep or this large are never read as actions.
            if len(data) > 64 * 1024:
                assert status == 413, (url, status, payload)
            elif data.count(b"[") + data.count(b"{") > 40 and data.startswith(b"["):
                assert status == 400, (url, status, payload)

    one()
    print(f"fuzzed {sum(statuses.values())} hostile requests: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 900
    assert statuses[403] > 100 and not [s for s in statuses if s >= 500]
