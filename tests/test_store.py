from __future__ import annotations

import threading

import pytest

from bokeh_memwatch.schema import PROCESS_FIELDS
from bokeh_memwatch.store.ring import SampleStore


def test_ring_keeps_the_newest_samples_oldest_first() -> None:
    store = SampleStore(3)
    for i in range(5):
        store.append({"t": float(i), "rss_bytes": 100 + i}, {"/a": {"sessions": i}})
    rows = store.query()
    assert [r["t"] for r in rows] == [2.0, 3.0, 4.0]
    assert [r["apps"]["/a"]["sessions"] for r in rows] == [2, 3, 4]
    assert len(store) == 3 and store.total_appended == 5


def test_since_and_limit() -> None:
    store = SampleStore(10)
    for i in range(6):
        store.append({"t": float(i)}, {})
    assert [r["t"] for r in store.query(since=3.0)] == [4.0, 5.0]
    assert [r["t"] for r in store.query(limit=2)] == [4.0, 5.0]
    assert store.query(limit=0) == []
    assert store.latest() is not None and store.latest()["t"] == 5.0  # type: ignore[index]


def test_missing_fields_are_none_and_apps_appear_when_seen() -> None:
    store = SampleStore(4)
    store.append({"t": 1.0}, {})
    store.append({"t": 2.0, "traced_bytes": 7}, {"/new": {"orphans": 2}})
    first, second = store.query()
    assert first["traced_bytes"] is None and first["apps"] == {}
    assert second["traced_bytes"] == 7 and second["apps"]["/new"]["orphans"] == 2
    assert set(PROCESS_FIELDS) <= set(second)


def test_copies_out() -> None:
    store = SampleStore(2)
    store.append({"t": 1.0, "rss_bytes": 5}, {"/a": {"sessions": 1}})
    row = store.query()[0]
    row["rss_bytes"] = 999
    row["apps"]["/a"]["sessions"] = 999
    again = store.query()[0]
    assert again["rss_bytes"] == 5 and again["apps"]["/a"]["sessions"] == 1


def test_app_columns_are_bounded() -> None:
    store = SampleStore(2, max_apps=2)
    store.append({"t": 1.0}, {f"/{i}": {"sessions": 1} for i in range(5)})
    assert len(store.query()[0]["apps"]) == 2


def test_a_day_at_the_default_interval_is_small() -> None:
    # 24 h at 5 s = 17280 samples, with three applications.
    store = SampleStore(17280)
    assert store.nbytes() < 4096  # nothing is allocated before it is needed
    for i in range(17280 + 10):
        store.append({"t": float(i), "rss_bytes": 1e9}, {f"/app{j}": {"sessions": 1} for j in range(3)})
    assert len(store) == 17280
    assert store.nbytes() < 10 * 2**20


def test_since_uses_the_ring_order_after_wrapping() -> None:
    store = SampleStore(5)
    for i in range(12):
        store.append({"t": float(i)}, {})
    assert [r["t"] for r in store.query(since=8.5)] == [9.0, 10.0, 11.0]
    assert [r["t"] for r in store.query(since=0.0)] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert [r["t"] for r in store.query(since=8.5, limit=1)] == [11.0]


def test_concurrent_appends_and_reads() -> None:
    store = SampleStore(500)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(2000):
                store.append({"t": float(i)}, {"/a": {"sessions": i}})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(2)]
    for t in threads:
        t.start()
    for _ in range(200):
        rows = store.query(limit=50)
        assert all("t" in r for r in rows)
    for t in threads:
        t.join(30)
    assert not errors
    assert store.total_appended == 4000


def test_rejects_bad_capacity() -> None:
    with pytest.raises(ValueError):
        SampleStore(0)


def test_columns_bucket_peaks_and_last_values() -> None:
    store = SampleStore(100)
    for i in range(10):
        store.append({"t": float(i), "rss_bytes": 100.0 + (50 if i == 3 else i), "sessions_created_total": i}, {})
    cols = store.columns(("t", "rss_bytes", "sessions_created_total", "traced_bytes"), since=-1.0, max_points=5,
                         peak_fields=frozenset({"rss_bytes", "traced_bytes"}))
    assert cols["t"] == [1.0, 3.0, 5.0, 7.0, 9.0]  # last time of each pair
    assert cols["rss_bytes"] == [101.0, 150.0, 105.0, 107.0, 109.0]  # the spike at t=3 survives
    assert cols["sessions_created_total"] == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert cols["traced_bytes"] == [None] * 5
    assert store.columns(("t",), since=7.5)["t"] == [8.0, 9.0]
    assert store.count(since=7.5) == 2 and store.count() == 10


def test_query_and_columns_agree_after_wrapping() -> None:
    store = SampleStore(7)
    for i in range(20):
        store.append({"t": float(i), "rss_bytes": float(i * 10)}, {"/a": {"sessions": i}} if i % 2 else {})
    rows = store.query()
    assert [r["t"] for r in rows] == [float(i) for i in range(13, 20)]
    assert [("/a" in r["apps"]) for r in rows] == [bool(i % 2) for i in range(13, 20)]
    assert store.columns(("rss_bytes",), max_points=100)["rss_bytes"] == [r["rss_bytes"] for r in rows]
