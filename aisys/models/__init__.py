"""PyTorch recommenders, baselines and the model bundle."""
