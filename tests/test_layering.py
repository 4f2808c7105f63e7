""" The package's imports run one way: down the layers the folders show.

:func:`check_layering` reads every module of a package with ``ast`` (nothing
is imported) and collects each import of another module of the package:
top-level, inside functions and under ``TYPE_CHECKING`` alike, since a lazy
or type-only import is still a dependency a reader has to follow.  It reports

* an import of a module in a higher layer (an upward import);
* an import cycle among the package's modules, even within one layer;
* ``tornado`` or ``bokeh.server`` imported below ``http``, except by the
  modules :data:`SERVER_IMPORTS_BELOW_HTTP` names, each with its reason.

The last tests run the same checker on small packages written to a
temporary directory, to show that it fails on an upward import, a cycle and
a stray tornado import.
"""
from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import bokeh_memwatch

#: The layers, lowest first.  A module may import its own layer and those
#: below.  A name is a top-level module or a subpackage of ``bokeh_memwatch``.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_version", "saferepr", "schema", "units", "_bokeh_internals"),  # foundations
    ("heap",),        # referents, frames, the forked worker, reachability, chains, census, snapshots
    ("collect",),     # process, cgroup, the session tracker and the app handler feeding it
    ("analyze",),     # advice, the memory-limit guard and report
    ("store",),       # the in-memory ring, the SQLite history, the worker registry
    ("options",),     # the one options table
    ("sampler",),     # the periodic sampler on the server's loop
    ("report",),      # the bug report, the limit report, their text
    ("cluster",),     # beyond one process: history merge, workers, forwarding, recycling
    ("monitor",),     # the object that builds everything in __init__ and binds in start()
    ("http",),        # tornado handlers
    ("ui",),          # the dashboard
    ("routes",),      # the one route table, the API index generated from it
    ("memwatch",),    # MemWatch: a Monitor and its routes
    ("server", "panel", "pytest_plugin", "cli", "testing", "__init__"),  # the ways in
)

#: The first layer allowed to import tornado and ``bokeh.server`` freely.
HTTP_LAYER = "http"

#: Modules below ``http`` that import tornado or ``bokeh.server``, and why.
SERVER_IMPORTS_BELOW_HTTP: Mapping[str, str] = {
    "_bokeh_internals": "the single home of Bokeh's private internals; its functions take the server "
                        "objects the layers above hand them",
    "sampler": "a tornado PeriodicCallback on the server's IOLoop is what a sampler is",
    "cluster.recycle": "the drain runs on a PeriodicCallback and stops the worker's HTTPServer; "
                       "tornado.process.task_id tells --num-procs workers apart",
    "cluster.forwarding": "relays requests between workers: tornado's HTTP client and a private "
                          "loopback HTTPServer, started after the fork like every per-process resource",
    "cluster.workers": "type-only: the BokehTornado and HTTPServer the worker services start on",
    "monitor": "binds to the server's IOLoop in start() and attaches to a running BokehTornado "
               "(the Panel plugin); the Bokeh listener protocol's types",
}

EXTERNAL = ("tornado", "bokeh.server")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_package: bool, package: str) -> Iterable[tuple[bool, str, int]]:
    """ ``(internal, name, line)``: package-internal names relative to the
    package (``heap.worker``, maybe ending in an attribute), external ones
    absolute (``tornado.web``). """
    here = [] if module == "__init__" else module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                if name == package or name.startswith(package + "."):
                    yield True, name[len(package) + 1:], node.lineno
                else:
                    yield False, name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                name = node.module or ""
                if not (name == package or name.startswith(package + ".")):
                    yield False, name, node.lineno
                    continue
                base = name[len(package) + 1:]
            else:
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            for alias in node.names:
                # "from . import x": x may be a module or a name; _resolve decides.
                yield True, (f"{base}.{alias.name}" if base else alias.name), node.lineno


def _resolve(name: str, modules: Iterable[str]) -> str:
    """ The package module an internal ``name`` refers to: the longest
    module prefix, else the package's own ``__init__``. """
    known = set(modules)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return "__init__"


def _layer_of(module: str, layers: Sequence[Sequence[str]]) -> int | None:
    head = module.split(".", maxsplit=1)[0]
    for rank, names in enumerate(layers):
        if module in names or head in names:
            return rank
    return None


def check_layering(
    root: Path, package: str, layers: Sequence[Sequence[str]], *, http_layer: str = HTTP_LAYER,
    server_imports: Mapping[str, str] | None = None,
) -> list[str]:
    """ Every layering problem of the package in ``root`` (its folder), as
    text; empty when imports run one way.  See the module docstring. """
    server_imports = server_imports or {}
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {m: {} for m in files}
    problems: list[str] = []
    http_rank = _layer_of(http_layer, layers)
    for module, path in files.items():
        rank = _layer_of(module, layers)
        if rank is None:
            problems.append(f"{module}: in no layer (add it to LAYERS)")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for internal, name, line in _imports(tree, module, path.name == "__init__.py", package):
            if not internal:
                if (any(name == e or name.startswith(e + ".") for e in EXTERNAL) and http_rank is not None
                        and rank < http_rank and module not in server_imports):
                    problems.append(f"{module}:{line}: imports {name} below {http_layer}/")
                continue
            target = _resolve(name, files)
            if target == module:
                continue
            # A subpackage's __init__ is imported on the way to any of its modules.
            if module.startswith(target + ".") and files[target].name == "__init__.py":
                continue
            graph[module].setdefault(target, line)
            target_rank = _layer_of(target, layers)
            if target_rank is not None and target_rank > rank:
                problems.append(f"{module}:{line}: imports {target}, a higher layer (upward import)")
    problems.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph))
    return problems


def _cycles(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """ One cycle per strongly connected component with more than one module. """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


PACKAGE_ROOT = Path(bokeh_memwatch.__file__).parent


def test_the_package_imports_run_one_way() -> None:
    problems = check_layering(PACKAGE_ROOT, "bokeh_memwatch", LAYERS, server_imports=SERVER_IMPORTS_BELOW_HTTP)
    assert problems == [], "\n".join(problems)


def test_every_exception_is_still_needed() -> None:
    """ An exception nobody needs any more is a hole in the rule: drop it. """
    for module in SERVER_IMPORTS_BELOW_HTTP:
        rest = {m: r for m, r in SERVER_IMPORTS_BELOW_HTTP.items() if m != module}
        problems = check_layering(PACKAGE_ROOT, "bokeh_memwatch", LAYERS, server_imports=rest)
        assert any(p.startswith(f"{module}:") for p in problems), f"{module} needs no exception any more"


def _write(root: Path, files: Mapping[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return package


SYNTHETIC_LAYERS = (("low",), ("mid",), ("http",), ("__init__",))
CLEAN = {
    "__init__.py": "from .mid.b import B\n",
    "low/__init__.py": "",
    "low/a.py": "A = 1\n",
    "mid/__init__.py": "",
    "mid/b.py": "from ..low.a import A\nB = A\n",
    "http/__init__.py": "",
    "http/c.py": "import tornado.web\nfrom ..mid import b\n",
}


def test_the_checker_passes_a_clean_package(tmp_path: Path) -> None:
    assert check_layering(_write(tmp_path, CLEAN), "pkg", SYNTHETIC_LAYERS) == []


def test_the_checker_fails_on_an_upward_import(tmp_path: Path) -> None:
    files = {**CLEAN, "low/a.py": "A = 1\n\ndef late():\n    from ..mid.b import B\n    return B\n"}
    problems = check_layering(_write(tmp_path, files), "pkg", SYNTHETIC_LAYERS)
    assert "low.a:4: imports mid.b, a higher layer (upward import)" in problems, problems
    assert "import cycle: low.a -> mid.b" in problems, problems


def test_the_checker_fails_on_a_type_only_upward_import(tmp_path: Path) -> None:
    files = {**CLEAN, "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from pkg.http.c import X\nA = 1\n"}
    problems = check_layering(_write(tmp_path, files), "pkg", SYNTHETIC_LAYERS)
    assert "low.a:3: imports http.c, a higher layer (upward import)" in problems, problems


def test_the_checker_fails_on_a_cycle_within_a_layer(tmp_path: Path) -> None:
    files = {**CLEAN, "low/a.py": "from . import d\nA = 1\n", "low/d.py": "from .a import A\n"}
    problems = check_layering(_write(tmp_path, files), "pkg", SYNTHETIC_LAYERS)
    assert problems == ["import cycle: low.a -> low.d"], problems


def test_the_checker_fails_on_tornado_below_http(tmp_path: Path) -> None:
    files = {**CLEAN, "mid/b.py": "from tornado.ioloop import IOLoop\nB = IOLoop\n"}
    package = _write(tmp_path, files)
    assert check_layering(package, "pkg", SYNTHETIC_LAYERS) == ["mid.b:1: imports tornado.ioloop below http/"]
    assert check_layering(package, "pkg", SYNTHETIC_LAYERS, server_imports={"mid.b": "a reason"}) == []
