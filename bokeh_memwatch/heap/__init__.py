""" Heap primitives: reading referents and frames safely, the forked heap worker,
reachability, reference chains, the census and tracemalloc/pympler snapshots.

The lowest layer above ``saferepr``: it reads objects and never imports tornado,
``bokeh.server`` or any other layer of memwatch. """
