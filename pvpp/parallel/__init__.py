"""Several devices and processes: the layout of the devices, replication, processes and their liveness.

    devices.py      the device axis (AXIS), the device layout of a run, replication, the prefetching thread
    distributed.py  several processes (`jax.distributed`): start-up, the global batch, agreement checks
    liveness.py     heartbeats, so that a process whose peer died stops instead of hanging
    tracing.py      counting the traces of compiled functions (a retrace is a bug the tests catch)
"""
