"""Offline evaluation: the MovieLens protocol, full-ranking metrics, segments and the runner."""
