""" Thousands of generated requests against every endpoint of a real server:
not one may answer 5xx, and every answer is JSON (or the dashboard's HTML). """
from __future__ import annotations

import json
import urllib.parse
from collections import Counter

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
        assert status < 500, (method, url, body, payload)
        kind = response_headers.get("Content-Type", "")
        if status != 200 or "json" in kind:
            assert "json" in kind, (method, url, kind)
            assert isinstance(payload, dict) and "pid" in payload, payload
            if status >= 400:
                assert payload["error"] and "Traceback" not in json.dumps(payload)

    one()
    print(f"fuzzed {sum(statuses.values())} requests: {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= 2000
    assert not [s for s in statuses if s >= 500]
