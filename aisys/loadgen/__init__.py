"""One HTTP load generator and one percentile helper, shared by the benchmarks, the demo and the tests.

- :mod:`aisys.loadgen.stats`: pure percentile and latency summaries (no numpy, no I/O).
- :mod:`aisys.loadgen.http`: closed-loop and open-loop load over aiohttp (imported when a load runs), with the
  one open-loop scheduler (``send_on_schedule``) that the soak benchmark and the replica-kill test send through.
- ``python -m aisys.loadgen``: one load cell in its own process, printed as one JSON line, so the client never
  shares a process (or an event loop) with the server it measures.

Nothing happens at import.
"""
