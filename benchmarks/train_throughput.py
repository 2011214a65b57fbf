"""Ray Train's epoch throughput vs the same loop in plain torch, in the same run.

Both sides train SASRec on MovieLens-100K (the leave-last-one-out valid task's
train sequences, the ML-100K settings of ``aisys.evaluation.runner.ML100K_PRESET``)
with one worker and ``train.torch_threads`` threads:

- **Ray Train**: ``aisys.training.ray_train.train_with_ray`` (the production
  path: a TorchTrainer running ``train_loop_per_worker``), which reports each
  epoch's training seconds (``epoch_s``, validation excluded);
- **plain torch**: the same fit in this process: ``aisys.training.fit.fit_sasrec``
  (what each Ray Train worker runs) with the worker's rows (``_epoch_rows``) and
  no validation.

The first epoch of each side is a warm-up and is not counted. Plain torch runs half
its epochs before Ray Train and half after (the box is shared: load drifts), the
second half resumed from the first half's state (the fit's ``resume``, as Ray
Train's fault tolerance uses it). It prints
windows/s per side and the ratio (Ray / plain; the target is >= 0.9), plus
Ray Train's whole ``fit()`` wall time (setup included).

    python benchmarks/train_throughput.py --epochs 4 --cache-dir /tmp/mlcache
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per side (the first is warm-up)")
    parser.add_argument("--cache-dir", default=None, help="MovieLens download cache (paths.cache_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is a warm-up)")

    from dataclasses import replace

    from aisys.config import load_config
    from aisys.evaluation.runner import ML100K_PRESET, load_movielens_interactions
    from aisys.features.sequences import Vocabulary
    from aisys.models.sasrec import SASRecConfig
    from aisys.quality.protocol import EvalSet, leave_one_out_tasks
    from aisys.runtime import init_ray
    from aisys.training.fit import FitSettings, fit_sasrec
    from aisys.training.loop import training_examples
    from aisys.training.ray_train import _epoch_rows, train_with_ray

    workspace = tempfile.mkdtemp(prefix="aisys-throughput-")
    overrides = [*ML100K_PRESET, f"train.epochs={args.epochs}", f"paths.workspace={workspace}", *args.overrides]
    if args.cache_dir:
        overrides.append(f"paths.cache_dir={args.cache_dir}")
    cfg = load_config(None, overrides)
    data, _ = load_movielens_interactions(cfg)
    valid, _ = leave_one_out_tasks(data)
    eval_set = EvalSet(valid.users, valid.histories(), np.asarray([t[0] for t in valid.targets], dtype=np.int64))
    vocab = Vocabulary(data.item_ids, [None] * len(data.item_ids), [0.0] * len(data.item_ids))
    inputs, targets = training_examples(valid.train, cfg.features.max_seq_len)
    t = cfg.train

    # Plain torch: the worker's fit, in this process. Half its epochs run before Ray Train
    # and half after (resumed), so a change in the shared box's load hits both sides alike.
    settings = FitSettings.from_config(cfg)
    model_config = SASRecConfig.from_app(cfg, vocab.n_items)
    plain: list[float] = []
    saved = []

    def plain_epochs(epochs: int, resume=None) -> None:
        def keep(end) -> None:
            plain.append(end.row["epoch_s"])
            saved[:] = [end.checkpoint()]

        fit_sasrec(model_config, replace(settings, epochs=epochs), inputs, targets, on_epoch=keep, resume=resume,
                   epoch_rows=lambda epoch: _epoch_rows(len(inputs), 0, 1, settings.seed + epoch))

    before = (t.epochs + 1) // 2
    plain_epochs(before)
    init_ray(cfg)
    started = time.perf_counter()
    result = train_with_ray(cfg, valid.train, eval_set, vocab, str(Path(workspace) / "ray_results"), "throughput")
    fit_seconds = time.perf_counter() - started
    ray_epochs = [row["epoch_s"] for row in result.history]
    plain_epochs(t.epochs, resume=saved[0])

    windows = len(inputs)
    plain_rate = windows / float(np.mean(plain[1:]))
    ray_rate = windows / float(np.mean(ray_epochs[1:]))
    report = {
        "windows_per_epoch": windows, "epochs": t.epochs, "torch_threads": t.torch_threads,
        "max_seq_len": cfg.features.max_seq_len, "batch_size": t.batch_size,
        "plain_epoch_s": plain, "plain_epochs_before_ray": before, "ray_epoch_s": ray_epochs,
        "plain_windows_per_s": plain_rate,
        "ray_windows_per_s": ray_rate, "ratio": ray_rate / plain_rate, "ray_fit_wall_s": fit_seconds,
    }
    print(f"{'side':<12}{'epoch s (mean, warm)':>22}{'windows/s':>12}")
    print(f"{'plain torch':<12}{np.mean(plain[1:]):>22.2f}{plain_rate:>12.1f}")
    print(f"{'Ray Train':<12}{np.mean(ray_epochs[1:]):>22.2f}{ray_rate:>12.1f}")
    print(f"ratio Ray/plain = {report['ratio']:.3f} (target >= 0.9); Ray fit() wall {fit_seconds:.1f}s "
          f"for {t.epochs} epochs incl. setup and validation every {t.eval_every}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_throughput.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
