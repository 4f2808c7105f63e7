""" The container's memory limit, and the report written before it is hit. """
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from bokeh_memwatch.analyze.limits import LimitGuard
from bokeh_memwatch.collect.cgroup import CgroupMemoryCollector, memory_limit_bytes

from .conftest import api, free_port, wait_until
from .test_command import ENV, serve_argv

GIB = 2**30


def v2(root: Path, limits: dict[str, str], membership: str = "0::/\n") -> Path:
    for relative, value in limits.items():
        directory = root / relative if relative else root
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "memory.max").write_text(value + "\n")
    (root / "cgroup.controllers").write_text("memory cpu\n")
    proc = root.parent / "proc_self_cgroup"
    proc.write_text(membership)
    return proc


def test_v2_container_root(tmp_path: Path) -> None:
    proc = v2(tmp_path / "cg", {"": str(GIB)})
    assert memory_limit_bytes(str(tmp_path / "cg"), proc_cgroup=str(proc), physical_bytes=None) == GIB


def test_v2_max_means_no_limit(tmp_path: Path) -> None:
    proc = v2(tmp_path / "cg", {"": "max"})
    assert memory_limit_bytes(str(tmp_path / "cg"), proc_cgroup=str(proc), physical_bytes=None) is None


def test_v2_smallest_limit_on_the_way_up_wins(tmp_path: Path) -> None:
    proc = v2(tmp_path / "cg", {"": "max", "kube": str(3 * GIB), "kube/pod": str(2 * GIB), "kube/pod/c": "max"},
              membership="0::/kube/pod/c\n")
    assert memory_limit_bytes(str(tmp_path / "cg"), proc_cgroup=str(proc), physical_bytes=None) == 2 * GIB


def test_absurd_or_larger_than_the_machine_is_no_limit(tmp_path: Path) -> None:
    proc = v2(tmp_path / "cg", {"": str(2**62)})
    assert memory_limit_bytes(str(tmp_path / "cg"), proc_cgroup=str(proc), physical_bytes=None) is None
    (tmp_path / "cg" / "memory.max").write_text(str(8 * GIB))
    assert memory_limit_bytes(str(tmp_path / "cg"), proc_cgroup=str(proc), physical_bytes=4 * GIB) is None
    assert memory_limit_bytes(str(tmp_path / "cg"), proc_cgroup=str(proc), physical_bytes=16 * GIB) == 8 * GIB


def test_v1(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / "memory" / "docker" / "abc").mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    proc = tmp_path / "cgroup"
    proc.write_text("12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n")
    assert memory_limit_bytes(str(root), proc_cgroup=str(proc), physical_bytes=None) is None
    (root / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(f"{GIB}\n")
    assert memory_limit_bytes(str(root), proc_cgroup=str(proc), physical_bytes=None) == GIB


def test_nothing_there_is_no_limit(tmp_path: Path) -> None:
    assert memory_limit_bytes(str(tmp_path / "missing"), proc_cgroup=str(tmp_path / "nope")) is None
    assert CgroupMemoryCollector(str(tmp_path / "missing")).collect() == {}


def test_collector_rereads_after_refresh(tmp_path: Path) -> None:
    proc = v2(tmp_path / "cg", {"": str(GIB)})
    now = [0.0]
    collector = CgroupMemoryCollector(str(tmp_path / "cg"), proc_cgroup=str(proc), refresh_s=60,
                                      physical_bytes=None, clock=lambda: now[0])
    assert collector.collect() == {"memory_limit_bytes": GIB}
    (tmp_path / "cg" / "memory.max").write_text(str(2 * GIB))
    assert collector.limit_bytes() == GIB  # cached
    now[0] = 61
    assert collector.limit_bytes() == 2 * GIB


def test_guard_fraction_and_rate_limit() -> None:
    now = [0.0]
    guard = LimitGuard(fraction=0.9, min_interval_s=600, clock=lambda: now[0])
    assert not guard.check(899, 1000) and not guard.check(950, None) and not guard.check(None, 1000)
    assert guard.check(900, 1000)
    now[0] = 599
    assert not guard.check(999, 1000) and guard.suppressed_total == 1
    assert guard.retry_in_s() == pytest.approx(1)
    now[0] = 600
    assert guard.check(999, 1000) and guard.triggered_total == 2
    assert not LimitGuard(fraction=0, min_interval_s=0).check(10**12, 1)
    with pytest.raises(ValueError):
        LimitGuard(fraction=1.5, min_interval_s=0)


def test_near_the_limit_a_report_and_a_snapshot_are_written_once(run_command, tmp_path: Path) -> None:
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{40 * 2**20}\n")  # 40 MiB: any Bokeh server is over 90% of it
    history = tmp_path / "history"
    port = free_port()
    server = run_command(
        serve_argv(port, "--memwatch-history-dir", str(history), "--memwatch-tracemalloc", "1",
                   "tests/apps/leak_global.py"),
        port, env={**ENV, "BOKEH_MEMWATCH_CGROUP_ROOT": str(cgroup), "BOKEH_MEMWATCH_LIMIT_MIN_INTERVAL_S": "600"},
    )
    reports = history / "reports"
    wait_until(lambda: list(reports.glob("memwatch-limit-*.json")), timeout_s=60, what="the limit report")
    summary = wait_until(lambda: (s := api(server.url, "summary"))["limit"]["last_report"] and s,
                         what="the report in the summary")
    assert summary["memory_limit_bytes"] == 40 * 2**20 and summary["rss_fraction_of_limit"] > 0.9
    assert summary["workers"][0]["memory_limit_bytes"] == 40 * 2**20
    [report_path] = reports.glob("memwatch-limit-*.json")
    report = json.loads(report_path.read_text())
    assert report["reason"] == "memory_limit" and report["pid"] == server.proc.pid
    assert report["memory_limit_bytes"] == 40 * 2**20 and report["rss_fraction_of_limit"] > 0.9
    assert report["summary"]["pid"] == server.proc.pid and "orphans" in report and "sessions" in report
    snapshot = Path(report["snapshot"]["path"])
    assert snapshot.exists() and snapshot.parent == reports
    assert tracemalloc.Snapshot.load(str(snapshot)).traces is not None
    assert "error" not in report["allocators"] and report["allocators"]["group"] == "lineno"
    assert "of the memory limit" in server.log() and "limit report written" in server.log()
    # Still over the threshold at every tick, but rate-limited: no second report.
    ticks = summary["sampler"]["ticks"]
    wait_until(lambda: api(server.url, "summary")["sampler"]["ticks"] >= ticks + 10, what="more ticks")
    assert len(list(reports.glob("memwatch-limit-*.json"))) == 1
    assert api(server.url, "summary")["limit"]["reports_total"] == 1
    assert server.log().count("of the memory limit") == 1
