"""One HTTP load generator and one percentile helper, shared by the benchmarks, the demo and the tests.

- :mod:`aisys.loadgen.stats`: pure percentile and latency summaries (no numpy, no I/O).
- :mod:`aisys.loadgen.http`: closed-loop and open-loop load over aiohttp (imported when a load runs).
- ``python -m aisys.loadgen``: one load cell in its own process, printed as one JSON line, so the client never
  shares a process (or an event loop) with the server it measures.

Nothing happens at import.
"""
