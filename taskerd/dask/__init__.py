"""Tasker on a Dask cluster: the worker side and the scheduler's claims.

* :mod:`taskerd.dask.spec`: what the daemon and a worker exchange (:class:`~spec.RunSpec`, the
  result dict, the event messages); plain data, no Dask import.
* :mod:`taskerd.dask.worker`: loaded into ``dask worker --preload taskerd.dask.worker``; runs a
  spec with :func:`taskerd.runner.run_command` (the local runner's rules), streams its output as
  Dask events, and answers cancels and the end of a previous daemon's runs.
* :mod:`taskerd.dask.claims`: a scheduler plugin through which each run claims its ``run_key``
  before it spawns, so that no attempt runs twice however often Dask executes it.
* :mod:`taskerd.dask.keeper`: a watchdog process per worker that ends its runs if it dies.

* :mod:`taskerd.dask.executor`: the daemon's side: a group's attempts handed to the cluster.

The daemon imports Dask (and the modules that use it) only when a group's executor is
``"dask"``; :mod:`taskerd.dask.spec` is plain data and imports none of it.
"""
