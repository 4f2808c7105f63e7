""" Judgements on what was measured: verification of destroyed sessions and
"why alive?" (each a job for the heap worker), the advice checklist, the
leak check's verdicts and the memory limit.  Above ``heap`` and ``collect``;
imports neither tornado nor ``bokeh.server``. """
