"""bokeh_memwatch demo app: serve with ``bokeh serve demo_app``; see main.py and leaks.py."""
