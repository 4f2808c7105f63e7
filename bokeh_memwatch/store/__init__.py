""" Where samples go: the in-memory ring, the SQLite history and the worker
registry that shares that database.  Imports neither tornado nor ``bokeh.server``. """
