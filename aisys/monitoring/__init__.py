"""Monitoring: every metric in one place, drift statistics and reports, online quality, the retrain policy.

Submodules (import them directly; nothing here imports Ray, Evidently or MLflow):

* ``metrics``: the metric catalogue (``ray.serve.metrics``) and recording helpers
* ``drift``: PSI / Jensen-Shannon statistics (pure)
* ``profile``: the reference profile of a training snapshot (JSON)
* ``online_quality``: online hit-rate per model version and arm (pure)
* ``policy``: the retrain policy and its audit log (pure)
* ``evidently_report``: Evidently drift reports in the lake, linked from MLflow
* ``monitor_actor``: the ``DriftMonitor`` Ray actor
"""
