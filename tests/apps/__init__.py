"""Bokeh and Panel apps the tests serve; their leak holders live in holders.py."""
