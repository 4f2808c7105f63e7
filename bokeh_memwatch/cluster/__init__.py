""" Beyond one process: the cluster (history database, workers, memory limit),
forwarding between workers, recycling, and the wiring of these per-worker
services.  Each takes a narrow typed host (a Protocol) rather than the Monitor
it serves, so nothing here imports the layers above. """
