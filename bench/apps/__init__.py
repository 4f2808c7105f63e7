""" Bokeh apps the benchmarks serve (``realistic.py``) and the module that
holds leaked Documents for the chain-search figure (``holder.py``). """
