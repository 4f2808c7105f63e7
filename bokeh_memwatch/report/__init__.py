""" Reports built from what the lower layers measured: the JSON bug report
(one heap job), the light report written near the memory limit, and their
text renderings for the command line. """
