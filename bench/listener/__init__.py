"""The listener benchmarks, one module per mode; ``bench/bench_listener.py MODE`` runs them.

* ``common``: the harness every mode shares (the stamp, its FIFO, the tables, the
  generated unit, /proc readings) and :class:`common.Marks`, the timestamps taken
  from the listener's and the engine's public hooks;
* ``latency``, ``giveup``, ``onfailure``: kill -> running again, per path;
* ``flood``: signal parsing and routing throughput (``flood_emitter.py`` is the sender);
* ``scale``, ``bare``, ``floor``: a burst of failures at once, with and without the ladder.
"""
