"""`aisys evaluate` end to end on a tiny GroupLens-format dataset written here (no Ray, no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from aisys.cli import main

N_ITEMS = 30  # items 101..130; 121..130 are never rated (catalogue = the item file)


def write_grouplens(folder: Path, n_users: int = 12, seed: int = 0) -> Path:
    """u.data (user, item, rating, time), u.item (30 items), u.user: two taste clusters of users."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        base = 101 if u % 2 else 111
        items = rng.choice(np.arange(base, base + 10), size=7, replace=False)
        for t, item in enumerate(items):
            rows.append(f"{u}\t{item}\t{rng.integers(1, 6)}\t{1000 + 10 * t + u}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    flags = "|".join(["0"] * 18 + ["1"])
    (folder / "u.item").write_text(
        "".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}\n" for i in range(101, 101 + N_ITEMS)),
        encoding="latin-1",
    )
    (folder / "u.user").write_text(
        "".join(f"{u}|{20 + u}|{'MF'[u % 2]}|student|0000{u}\n" for u in range(1, n_users + 1))
    )
    return folder


def evaluate(tmp_path: Path, *extra: str) -> int:
    data = write_grouplens(tmp_path / "ml")
    return main([
        "evaluate", "--dataset", "ml-100k", *extra,
        "--set", f"data.movielens.path={data}", "--set", f"paths.workspace={tmp_path / 'ws'}",
    ])


@pytest.mark.parametrize("split", ["loo", "temporal"])
def test_export_holds_ranked_movielens_ids_for_every_evaluated_user(tmp_path, capsys, split):
    out = tmp_path / "out" / f"ease-{split}.parquet"
    assert evaluate(tmp_path, "--split", split, "--model", "ease", "--export", str(out)) == 0
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id"]
    rows = table.to_pylist()
    by_user: dict[str, list[dict]] = {}
    for row in rows:
        by_user.setdefault(row["user_id"], []).append(row)
    assert by_user, "no user exported"
    data = [line.split("\t") for line in (tmp_path / "ml" / "u.data").read_text().splitlines()]
    for user, user_rows in by_user.items():
        assert [r["rank"] for r in user_rows] == list(range(1, len(user_rows) + 1))
        items = [r["item_id"] for r in user_rows]
        assert len(set(items)) == len(items)
        assert all(101 <= int(i) <= 100 + N_ITEMS for i in items)  # MovieLens ids, not model indices
        # Every catalogue item the user has not rated is listed (fewer than 100 here), none that is known.
        rated = {i for u, i, *_ in data if u == user}
        if split == "loo":
            known = rated - {max(((int(t), n, i) for n, (u, i, _, t) in enumerate(data) if u == user))[2]}
            assert set(items) == {str(i) for i in range(101, 101 + N_ITEMS)} - known
        else:  # the user's earliest rating is always before the cut: known, never listed
            first = min((int(t), n, i) for n, (u, i, _, t) in enumerate(data) if u == user)[2]
            assert first not in items
    printed = capsys.readouterr().out
    assert "NDCG@10" in printed and "test" in printed and str(out) in printed.replace("\n", "")


def test_loo_evaluates_every_user_and_the_cluster_model_beats_popularity(tmp_path, capsys):
    ease_out, pop_out = tmp_path / "ease.parquet", tmp_path / "pop.parquet"
    assert evaluate(tmp_path, "--model", "ease", "--export", str(ease_out)) == 0
    assert evaluate(tmp_path, "--model", "pop", "--export", str(pop_out)) == 0
    assert set(pq.read_table(ease_out).column("user_id").to_pylist()) == {str(u) for u in range(1, 13)}
    # The top-1 of EASE stays inside the user's taste cluster far more often than popularity's.
    def in_cluster(path: Path) -> float:
        top = [r for r in pq.read_table(path).to_pylist() if r["rank"] == 1]
        return np.mean([(int(r["user_id"]) % 2 == 1) == (int(r["item_id"]) <= 110) for r in top])
    assert in_cluster(ease_out) >= 0.9
    assert in_cluster(pop_out) <= 0.75


def test_sasrec_trains_with_the_given_overrides_and_exports(tmp_path, capsys):
    out = tmp_path / "sasrec.parquet"
    code = evaluate(
        tmp_path, "--model", "sasrec", "--seed", "3", "--export", str(out),
        "--set", "features.max_seq_len=8", "--set", "model.embedding_dim=8", "--set", "model.n_layers=1",
        "--set", "train.epochs=2", "--set", "train.eval_every=1", "--set", "train.batch_size=8",
    )
    assert code == 0
    assert pq.read_table(out).num_rows > 0
    printed = capsys.readouterr().out
    assert "'max_seq_len': 8" in printed and "'seed': 3" in printed


def test_unknown_model_and_missing_data_are_messages_not_tracebacks(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "lightgcn", "--export", str(tmp_path / "x.parquet")])
    code = main([
        "evaluate", "--export", str(tmp_path / "x.parquet"), "--model", "pop",
        "--set", f"data.movielens.path={tmp_path / 'nowhere'}", "--set", f"paths.workspace={tmp_path}",
    ])
    assert code == 1
    assert "nowhere" in capsys.readouterr().err


def test_runner_reports_the_blends_sasrec_alone_and_refits_fixed_settings(tmp_path):
    from aisys.config import load_config
    from aisys.data.movielens import read_grouplens, read_item_ids
    from aisys.evaluation.runner import evaluate_model
    from aisys.quality.protocol import interactions_from_events

    folder = write_grouplens(tmp_path / "ml")
    data = interactions_from_events(read_grouplens(folder), read_item_ids(folder))
    cfg = load_config(None, [
        "features.max_seq_len=8", "model.embedding_dim=8", "model.n_layers=1", "train.epochs=2",
        "train.eval_every=1", "train.batch_size=8", f"paths.workspace={tmp_path / 'ws'}",
    ])
    tuned = evaluate_model("sasrec+ease", data, "loo", cfg, seed=1)
    assert {"ease_l2", "blend_weight"} <= set(tuned.settings) and tuned.settings["epochs"] in (1, 2)
    alone = tuned.component
    assert alone is not None and alone.model == "sasrec" and "ease_l2" not in alone.settings
    assert alone.valid_metrics["n_users"] == 12 and alone.train_seconds <= tuned.train_seconds
    assert data.n_items == N_ITEMS and tuned.top_items.shape == (12, N_ITEMS)

    again = evaluate_model("sasrec+ease", data, "loo", cfg, seed=2, settings=tuned.settings)
    assert again.valid_metrics == {} and again.settings == {**tuned.settings, "seed": 2}
