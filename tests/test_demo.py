""" The README's demo, as a newcomer runs it: ``bokeh-memwatch check`` on the
demo's global leak names the module global that holds the Documents. """
from __future__ import annotations

import subprocess
from pathlib import Path

from .conftest import PYTHON, ROOT

CLI = str(Path(PYTHON).with_name("bokeh-memwatch"))


def test_check_names_the_demo_global_leak() -> None:
    result = subprocess.run(
        [CLI, "check", "demo_app", "--sessions", "2", "--session-args", "leak=global"],
        cwd=ROOT, check=False, capture_output=True, text=True, timeout=170,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "verdict: leak" in result.stdout
    chains = [line for line in result.stdout.splitlines() if "Document (of 4 retained)" in line]
    assert chains and "module demo_app.leaks -> .CACHE (list)" in chains[0], result.stdout
