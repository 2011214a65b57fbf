"""Monitoring: every metric in one place, drift statistics and reports, online quality; it reports, the loop decides.

Submodules (import them directly; nothing here imports Ray, Evidently or MLflow):

* ``metrics``: the metric catalogue (``ray.serve.metrics``) and recording helpers
* ``drift``: PSI / Jensen-Shannon statistics (pure)
* ``profile``: the reference profile of a training snapshot (JSON)
* ``online_quality``: online hit-rate per model version and arm (pure)
* ``findings``: what one check found (pure); the loop decides on it (``aisys.loop.policy``)
* ``audit``: the table of the loop's retrain decisions, in the lake (the ops view reads it)
* ``evidently_report``: Evidently drift reports in the lake, linked from MLflow
* ``monitor_actor``: the ``DriftMonitor`` Ray actor
"""
