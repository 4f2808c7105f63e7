""" The dashboard: a standalone Bokeh page (``dashboard.py``) and its script
(``dashboard.js``) that reads the JSON API. """
