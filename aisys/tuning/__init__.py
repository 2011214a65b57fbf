"""Hyper-parameter sweeps (Ray Tune + ASHA) over the sequential model; see :mod:`aisys.tuning.sweep`."""
