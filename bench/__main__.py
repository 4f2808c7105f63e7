""" ``python -m bench``: the benchmark suite (see bench/run.py). """
from __future__ import annotations

from .run import main

main()
