"""Splits, metrics, the training loop and its Ray Train adapter."""
