"""The runner's outputs and inputs on disk: top-100 lists as Parquet, MovieLens interactions and titles."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa

from aisys.config import AppConfig
from aisys.evaluation.runner_settings import EXPORT_DEPTH
from aisys.quality.protocol import Interactions, interactions_from_events

if TYPE_CHECKING:
    from aisys.evaluation.runner import EvaluationResult


def top_items(scores: np.ndarray, histories: list[list[int]], depth: int = EXPORT_DEPTH) -> np.ndarray:
    """Each user's ``depth`` best item indices, best first (ties: lower index first).

    Known-history items and padding are never listed; a user with fewer than
    ``depth`` candidates gets 0 (no item) in the remaining columns.
    """
    from aisys.quality.ranking import masked_scores

    masked = masked_scores(scores, histories)
    depth = min(depth, masked.shape[1] - 1)
    order = np.argsort(-masked, axis=1, kind="stable")[:, :depth]
    return np.where(np.isfinite(np.take_along_axis(masked, order, axis=1)), order, 0)


EXPORT_SCHEMA = pa.schema([("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string())])


def export_table(users: list[str], top: np.ndarray, item_ids: list[str]) -> pa.Table:
    """Top lists as rows ``user_id, rank (1-based), item_id`` with the catalogue's own ids (0 = no item: dropped)."""
    top = np.asarray(top, dtype=np.int64).reshape(len(users), -1)
    user_col, rank_col, item_col = [], [], []
    ids = np.asarray(item_ids, dtype=object)
    for user, row in zip(users, top):
        row = row[row > 0]
        user_col += [user] * row.size
        rank_col += range(1, row.size + 1)
        item_col += ids[row].tolist()
    return pa.Table.from_arrays(
        [pa.array(user_col, pa.string()), pa.array(rank_col, pa.int32()), pa.array(item_col, pa.string())],
        schema=EXPORT_SCHEMA,
    )


def write_export(result: "EvaluationResult", item_ids: list[str], path: str | Path) -> Path:
    """Write the test task's top-100 lists of ``result`` as Parquet (parent folders created)."""
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(export_table(result.test_task.users, result.top_items, item_ids), path)
    return path


def load_movielens_interactions(cfg: AppConfig) -> tuple[Interactions, pa.Table]:
    """MovieLens-100K as protocol interactions over the whole catalogue, and the users' demographics."""
    from aisys.data.movielens import load_movielens, movielens_folder, read_item_ids, read_users

    folder = movielens_folder(cfg.data.movielens, cfg.paths.cache_dir)
    ml_cfg = cfg.data.movielens.model_copy(update={"path": str(folder)})
    events = load_movielens(ml_cfg, cfg.paths.cache_dir)
    return interactions_from_events(events, read_item_ids(folder)), read_users(folder)


def load_item_titles(cfg: AppConfig, item_ids: Sequence[str]) -> list[str]:
    """Titles aligned with the item indices: ``[title of item_ids[0] ("" for the padding), ...]``.

    Read from the MovieLens folder of ``cfg`` (``u.item`` or ``ml-100k.item``); an
    item without a title gets "" (similar to nothing).
    """
    from aisys.data.movielens import movielens_folder, read_item_titles

    titles = read_item_titles(movielens_folder(cfg.data.movielens, cfg.paths.cache_dir))
    return [titles.get(item, "") if item else "" for item in item_ids]
