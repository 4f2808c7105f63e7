""" The HTTP side: the one base handler (``base``), the JSON API, snapshots,
census, metrics and probes.  The first layer free to import ``tornado.web``
and ``bokeh.server``; the routes that mount these handlers are
:mod:`bokeh_memwatch.routes`. """
