""" Benchmarks for bokeh_memwatch (see bench/README.rst). """
