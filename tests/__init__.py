"""Tests for bokeh_memwatch."""
