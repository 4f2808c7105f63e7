""" Beyond one process: the cluster (history database, workers, memory limit)
and recycling.  Each takes a narrow typed host (a Protocol), never the whole MemWatch. """
