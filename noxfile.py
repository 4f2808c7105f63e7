""" The version matrix (``.ci/run`` runs it after the whole suite on python3).

``nox -s core`` runs the core tests on each other Python the package declares;
``nox -s lowest`` runs them and the command's on the lowest Bokeh and Panel
setup.cfg accepts, ``nox -s lowest_plugin`` the Panel plugin's on the lowest
Panel that has ``--plugins``.  ``nox -l`` lists
the sessions.  Interpreters come from PATH (``python3.12``...) or, where
pyenv installed them, from ``$PYENV_ROOT/versions/3.X.Y/bin``: pyenv's shims
answer "command not found" for a version that is not the global one, so the
real interpreters are linked into ``.nox/pythons`` and put first on PATH.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

#: The Pythons setup.cfg declares; python3 (3.11 here) runs the whole suite in .ci/run.
OTHER_PYTHONS = ["3.10", "3.12", "3.13"]

#: Tracking, verdicts (the reachability scan), orphans and their chains, the
#: census, snapshots, ``check`` (the README's demo among them) and the heap
#: worker's host safety: what breaks first when Python or Bokeh changes
#: (frames, refcounts, gc, asyncio, tracemalloc), plus the Bokeh internals
#: and the embedded ways in.
CORE_TESTS = [
    "tests/test_tracker.py",
    "tests/test_reachability.py",
    "tests/test_verdicts.py",
    "tests/test_orphans.py",
    "tests/test_census.py",
    "tests/test_frames.py",
    "tests/test_host_safety.py",
    "tests/test_chains.py",
    "tests/test_snapshots.py",
    "tests/test_check.py",
    "tests/test_demo.py",
    "tests/test_referents.py",
    "tests/test_bokeh_internals.py",
    "tests/test_server.py",
    # memray's tracker differs by Python (profiling hooks, frame objects): issue 18
    "tests/test_memray_backend.py",
]

#: The lowest Bokeh and Panel setup.cfg accepts (Panel 1.4 needs Bokeh 3.4).
LOWEST = ["bokeh==3.4.*", "panel==1.4.*"]

#: The lowest Panel with ``panel serve --plugins`` (1.6), on the lowest Bokeh it takes.
LOWEST_PLUGIN = ["bokeh==3.5.*", "panel==1.6.*"]

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.sessions = ["core", "lowest", "lowest_plugin"]


def _link_pyenv_pythons() -> None:
    """ Put a link to the newest pyenv-installed ``python3.X`` of each
    version first on PATH (see the module docstring). """
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if not versions.is_dir():
        return
    links = ROOT / ".nox" / "pythons"
    links.mkdir(parents=True, exist_ok=True)
    for minor in ["3.11", *OTHER_PYTHONS]:
        found = [p for p in versions.glob(f"{minor}.*") if re.fullmatch(rf"{re.escape(minor)}\.\d+", p.name)]
        if not found:
            continue
        newest = max(found, key=lambda p: int(p.name.rsplit(".", 1)[1]))
        exe = newest / "bin" / f"python{minor}"
        if exe.exists():
            link = links / f"python{minor}"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(exe)
    os.environ["PATH"] = f"{links}{os.pathsep}{os.environ.get('PATH', '')}"


_link_pyenv_pythons()


def _versions(session: nox.Session) -> None:
    session.run("python", "-c", "import sys, bokeh, panel, tornado; print('python', sys.version.split()[0], "
                "'bokeh', bokeh.__version__, 'panel', panel.__version__, 'tornado', tornado.version)")


def _pytest(session: nox.Session, *tests: str) -> None:
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests, *session.posargs)


@nox.session(python=OTHER_PYTHONS)
def core(session: nox.Session) -> None:
    """ The core tests on another Python, with the Bokeh and Panel pip picks. """
    session.install("-q", "-e", ".[test]")
    _versions(session)
    _pytest(session, *CORE_TESTS)


@nox.session(python="3.10")
def lowest(session: nox.Session) -> None:
    """ The core and command tests on the lowest declared Bokeh and Panel
    (the Panel plugin's tests skip themselves: ``--plugins`` needs 1.6). """
    session.install("-q", "-e", ".[test]", *LOWEST)
    _versions(session)
    _pytest(session, *CORE_TESTS, "tests/test_command.py", "tests/test_panel_plugin.py")


@nox.session(python="3.10")
def lowest_plugin(session: nox.Session) -> None:
    """ ``panel serve --plugins bokeh_memwatch.panel`` on the lowest Panel that has it. """
    session.install("-q", "-e", ".[test]", *LOWEST_PLUGIN)
    _versions(session)
    _pytest(session, "tests/test_panel_plugin.py", "tests/test_bokeh_internals.py")
