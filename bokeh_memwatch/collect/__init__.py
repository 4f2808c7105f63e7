""" Collectors: what one tick reads from the process (RSS, gc, tracemalloc),
the container (cgroup) and the Bokeh server's sessions (the tracker and the
application handler that feeds it).  Below the store and the sampler; above ``heap``
(the tracker's verdicts are a reachability scan). """
