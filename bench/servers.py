""" The benchmark driver's side of ``bench.serve``: start server processes,
talk to their control API and to memwatch's, open sessions with real clients.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .serve import APP_PATH, ROOT

__all__ = ("BenchServer", "open_sessions", "pull", "start_all", "stop_all")


class BenchServer:
    """ One ``python -m bench.serve`` process.

    Args:
        name: label in the results (``off``, ``on``, ``on+tracemalloc``, ``memlog``).
        mode: ``--mode`` of bench.serve.
        log_dir: where the server's stderr goes.
        options: further command-line options (``tracemalloc=1`` gives ``--tracemalloc 1``).
    """

    def __init__(self, name: str, mode: str, log_dir: Path, **options: Any) -> None:
        self.name = name
        self.mode = mode
        self.options = options
        self.log_path = log_dir / f"server-{name.replace('+', '-')}.log"
        self.port: int | None = None
        self.pid: int | None = None
        self._process: subprocess.Popen[str] | None = None

    def launch(self) -> None:
        argv = [sys.executable, "-m", "bench.serve", "--mode", self.mode]
        for key, value in self.options.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            # Whatever memwatch persists goes to a throwaway directory, never the user's.
            "XDG_STATE_HOME": str(self.log_path.parent / "state"),
            # The app loads numpy: a one-thread OpenBLAS pool, as the fork
            # policy advises, so heavy operations are measured forked.
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
        }
        with open(self.log_path, "w") as log_file:
            self._process = subprocess.Popen(
                argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env,
            )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        assert self._process is not None and self._process.stdout is not None
        box: dict[str, str] = {}
        reader = threading.Thread(target=lambda: box.setdefault("line", self._process.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(timeout_s)
        line = box.get("line", "")
        if not line:
            self.stop()
            raise RuntimeError(f"server {self.name} did not start; see {self.log_path}")
        info = json.loads(line)
        self.port, self.pid = int(info["port"]), int(info["pid"])

    def pause(self) -> None:
        """ Stop the process (SIGSTOP) so that it takes no CPU while another
        server is measured; :meth:`resume` continues it. """
        if self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.pid is not None:
            os.kill(self.pid, signal.SIGCONT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def app_url(self) -> str:
        return self.url + APP_PATH

    def request(self, path: str, method: str = "GET", *, timeout_s: float = 600.0) -> Any:
        data = b"{}" if method == "POST" else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            body = e.read()[:500].decode("utf-8", "replace")
            raise RuntimeError(f"{self.name}: {method} {path} -> {e.code} {body}") from None

    def control(self, path: str, method: str = "GET", **query: Any) -> Any:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return self.request(f"/bench/{path}" + (f"?{qs}" if qs else ""), method)

    def api(self, path: str, method: str = "GET", *, timeout_s: float = 600.0) -> Any:
        return self.request(f"/memwatch/api/{path}", method, timeout_s=timeout_s)

    def cpu_s(self) -> float:
        """ CPU seconds (user + system) the server process has used so far. """
        import psutil

        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def start_all(servers: Sequence[BenchServer]) -> None:
    """ Launch every server at once (their imports overlap), then wait for each. """
    for server in servers:
        server.launch()
    try:
        for server in servers:
            server.wait_ready()
    except BaseException:
        stop_all(servers)
        raise


def stop_all(servers: Sequence[BenchServer]) -> None:
    for server in servers:
        server.stop()


def get_page(url: str) -> float:
    """ One HTTP GET of the app page (Bokeh makes the session and its
    Document before answering); returns seconds. """
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
    return time.perf_counter() - started


def open_sessions(targets: Sequence[tuple[BenchServer, int]]) -> float:
    """ Bring each server up to ``n`` sessions by page GETs (kept by the
    server as unused sessions): one client thread per server, so servers
    work in parallel and a slow one (tracemalloc) holds up only itself.
    Returns seconds. """
    started = time.perf_counter()

    def fill(server: BenchServer, n: int) -> None:
        missing = n - int(server.control("state")["sessions"])
        for _ in range(max(0, missing)):
            get_page(server.app_url)

    with ThreadPoolExecutor(max(1, len(targets))) as pool:
        for future in [pool.submit(fill, server, n) for server, n in targets]:
            future.result()
    for server, n in targets:
        have = int(server.control("state")["sessions"])
        if have < n:
            raise RuntimeError(f"{server.name}: {have} sessions, wanted {n}")
    return time.perf_counter() - started


def pull(url: str, **kwargs: Any) -> Any:
    """ ``bokeh.client.pull_session`` with TCP_NODELAY on the client's socket
    (see ``bench.serve.websocket_nodelay``). """
    from bokeh.client import pull_session

    session = pull_session(url=url, **kwargs)
    nodelay(session)
    return session


def nodelay(session: Any) -> None:
    socket = session._connection._socket
    inner = getattr(socket, "_socket", socket)  # bokeh's WebSocketClientConnectionWrapper
    inner.protocol.stream.set_nodelay(True)


@contextlib.contextmanager
def alone(running: Iterable[BenchServer], everyone: Iterable[BenchServer]) -> Iterator[None]:
    """ Pause every server of ``everyone`` but those ``running`` while the
    block runs: on two cores, a neighbour's heap scan or sampler would land
    in the figures. """
    keep = list(running)
    paused = [s for s in everyone if s not in keep]
    for other in paused:
        other.pause()
    try:
        yield
    finally:
        for other in paused:
            other.resume()
