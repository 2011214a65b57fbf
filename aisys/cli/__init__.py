"""The `aisys` command: one verb per stage (``aisys.cli:main``; also ``python -m aisys.cli``).

- :mod:`aisys.cli.app`: the parser, the global flags (``--version``, ``-v/--verbose``) and :func:`main`, which
  turns every known failure into one line on stderr and a documented exit code;
- :mod:`aisys.cli.verbs`: the stage verbs (config, data, ingest, snapshots, train, serve, evaluate, retrain,
  demo); ``tune``/``promote``/``rollback`` live in :mod:`aisys.cli.model_verbs`, ``keys`` in
  :mod:`aisys.cli.access_verbs` (with ``sessions``);
- :mod:`aisys.cli.errors`: the exit codes and the exception -> (code, message) mapping;
- :mod:`aisys.progress`: bars on a terminal, plain periodic lines elsewhere.

Heavy imports (Ray, torch, MLflow) happen inside the verbs, so ``aisys --help`` is instant.
"""

from aisys.cli.app import EVALUATE_MODELS, VERBS, build_parser, main

__all__ = ["EVALUATE_MODELS", "VERBS", "build_parser", "main"]
