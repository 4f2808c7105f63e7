""" Testing helpers: a real Bokeh server with memwatch in a background thread
(``server``), and the leak-check driver behind ``bokeh-memwatch check`` and the pytest
plugin (``leakcheck``). """
