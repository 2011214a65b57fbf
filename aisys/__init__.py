"""aisys: a real-time e-commerce recommendation engine on Ray.

Importing the package does nothing but define names: no Ray, no MLflow, no
directories. Stages are reached through :mod:`aisys.cli` or their modules.
"""

__version__ = "0.1.0"
