""" The HTTP side: tornado handlers for the JSON API, snapshots, census, metrics,
probes and forwarding to the worker that owns an object.  The only layer (with ``ui``
and the ways in) that imports ``tornado.web`` and ``bokeh.server``. """
