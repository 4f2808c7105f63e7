""" Leaks the Document through objects whose dunder methods misbehave:
``__repr__`` raises or hangs, ``__eq__``/``__hash__`` raise, ``__del__``
raises.  memwatch must explain the leak without calling any of them (and,
with values shown, survive their reprs). """
from __future__ import annotations

import sys
from pathlib import Path

root = str(Path(__file__).resolve().parents[2])
if root not in sys.path:
    sys.path.insert(0, root)

import numpy as np  # noqa: E402
from bokeh.io import curdoc  # noqa: E402
from bokeh.models import ColumnDataSource  # noqa: E402
from bokeh.plotting import figure  # noqa: E402

from tests.apps import holders  # noqa: E402


class BadColumn(list):  # type: ignore[type-arg]
    """ A column whose size cannot be asked. """

    @property
    def nbytes(self) -> int:
        raise RuntimeError("nbytes refuses")


doc = curdoc()
source = ColumnDataSource(data={"x": np.arange(10.0), "y": np.zeros(10)})
p = figure()
p.line("x", "y", source=source)
doc.add_root(p)
source.data["bad"] = BadColumn(range(10))
holders.NASTY.append(holders.Nasty(doc, "hang" if len(holders.NASTY) % 2 else "raise"))
