"""The model registry (MLflow): the only package that imports mlflow."""
