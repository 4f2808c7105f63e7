""" The ``bokeh-memwatch`` command: one module per subcommand. """
