"""Item content in the blend: title words, the title-similarity model, its reader, tuning and rebuild."""

from __future__ import annotations

import numpy as np
import pytest

from aisys.models.context_blend import ContextBlend
from aisys.models.item_features import TitleSimilarity, title_similarity, title_tokens
from aisys.quality.protocol import EvalTask
from tests.unit.test_context_blend import Fixed, tiny_movielens_for_blends

# Index 0 is the padding. Three franchises (1-2, 3-4, 5-6); 7-12 share no word with anything.
TITLES = [
    "", "Star Trek", "Star Trek II", "Alien", "Alien: Resurrection", "Die Hard", "Die Hard With a Vengeance",
    "Casablanca", "Vertigo", "Fargo", "Heat", "Ran", "Psycho",
]
UNRELATED = ["", *(f"Word{chr(97 + i)}" for i in range(12))]


def test_title_tokens_keep_the_words_that_can_name_a_franchise():
    assert title_tokens("Star Trek III: The Search for Spock") == {"star", "trek", "iii", "search", "spock"}
    assert title_tokens("Die Hard: With a Vengeance") == {"die", "hard", "vengeance"}
    assert title_tokens("Postino, Le") == {"postino"}
    assert title_tokens("") == frozenset()


def test_title_similarity_links_franchises_and_weighs_rare_words_more():
    sim = title_similarity(TITLES)
    assert sim.shape == (13, 13)
    assert np.allclose(np.diag(sim), 0.0) and np.allclose(sim[0], 0.0)
    assert sim[1, 2] == pytest.approx(1.0)  # "ii" is in one title only: it links nothing, so the rest match fully
    assert sim[3, 4] == pytest.approx(1.0) and sim[5, 6] == pytest.approx(1.0)
    assert np.allclose(sim[1, 3:], 0.0) and np.allclose(sim[7:, :], 0.0)
    assert np.allclose(sim, sim.T)
    # One common word ("night", in 4 titles) and one rare one ("moon", in 2): the rare link is stronger.
    titles = ["", "Night Moon", "Moon Fall", "Night Shift", "Night Train", "Night Owl"]
    sim = title_similarity(titles)
    assert sim[1, 2] > sim[1, 3] > 0


def test_title_similarity_model_scores_the_recent_items_franchises_first():
    model = TitleSimilarity(TITLES, window=2, decay=0.5).fit({"u": [1]}, 12)
    scores = model.score(["a", "b", "c"], [[3, 1], [1, 3], [5, 7, 8]])
    assert np.all(scores[:, 0] == -np.inf)
    assert np.argmax(scores[0, 1:]) + 1 == 2  # newest is Star Trek: Star Trek II first
    assert scores[0, 2] > scores[0, 4] > 0  # the older Alien counts half
    assert np.argmax(scores[1, 1:]) + 1 == 4
    assert np.allclose(scores[2, 1:], 0.0)  # Die Hard is outside the 2-item window: nothing is similar
    wide = TitleSimilarity(TITLES, window=3, decay=0.5).fit({}, 12).score(["c"], [[5, 7, 8]])
    assert np.argmax(wide[0, 1:]) + 1 == 6


def test_title_similarity_refuses_titles_that_do_not_cover_the_catalogue():
    with pytest.raises(ValueError, match="13 titles for 14 items"):
        TitleSimilarity(TITLES).fit({}, 14)
    with pytest.raises(RuntimeError, match="not fitted"):
        TitleSimilarity(TITLES).score(["a"], [[1]])
    with pytest.raises(ValueError, match="decay"):
        TitleSimilarity(TITLES, decay=0.0)


def test_read_item_titles_from_grouplens_and_recbole_files(tmp_path):
    from aisys.data.movielens import read_item_titles

    grouplens = tmp_path / "gl"
    grouplens.mkdir()
    flags = "|".join(["0"] * 19)
    (grouplens / "u.item").write_text(
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n2|Se7en (1995)|01-Jan-1995||http://x|{flags}\n"
        f"3|unknown||||{flags}\n",
        encoding="latin-1",
    )
    assert read_item_titles(grouplens) == {"1": "Toy Story", "2": "Se7en", "3": "unknown"}
    recbole = tmp_path / "rb"
    recbole.mkdir()
    (recbole / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Comedy\n7\tAlien: Resurrection\t1997\tSci-Fi\n"
    )
    assert read_item_titles(recbole) == {"1": "Toy Story", "7": "Alien: Resurrection"}
    with pytest.raises(FileNotFoundError, match="neither u.item"):
        read_item_titles(tmp_path)


def test_load_item_titles_aligns_titles_with_the_item_indices(tmp_path):
    from aisys.config import load_config
    from aisys.evaluation.runner import load_item_titles
    from tests.unit.test_evaluate_cli import write_grouplens

    folder = write_grouplens(tmp_path / "ml")
    cfg = load_config(None, [f"data.movielens.path={folder}", f"paths.cache_dir={tmp_path / 'cache'}"])
    assert load_item_titles(cfg, ["", "102", "999", "101"]) == ["", "Movie 102", "", "Movie 101"]


CONTEXT = {
    "ease_l2": 30.0, "ease_input_decay": 1.0, "ease_half_life_days": None, "blend_weight": 0.0,
    "recent_half_life_days": 1.0, "recent_weight": 0.0, "sasrec_weight": 1.0, "slit_weight": 0.0,
}
CAME_BACK = {
    "ctx_gap_seconds": 3_600.0, "ctx_sasrec_weight": 1.0, "ctx_ease_weight": 0.0, "ctx_slit_weight": 0.0,
    "ctx_recent_half_life_days": 3.0, "ctx_recent_weight": 0.0,
}


def _task() -> tuple[EvalTask, dict[str, list[int]], np.ndarray]:
    # a, b, c just rated a franchise's first film and go on to its sequel; d came back (gap 2 h) for item 12.
    train = {"a": [7, 1], "b": [8, 3], "c": [9, 5], "d": [10, 1]}
    task = EvalTask("valid", 12, train, ["a", "b", "c", "d"], [[2], [4], [6], [12]])
    times = {user: [100, 200] for user in train}
    return task, times, np.array([0.0, 0.0, 0.0, 7_200.0])


def test_title_weights_are_tuned_per_gap_bucket_and_dropped_when_they_do_not_help():
    from aisys.evaluation.runner import TITLE_WEIGHTS, _tune_title_weights

    task, times, gaps = _task()
    sasrec = Fixed([0.0] * 11 + [1.0])  # item 12 on top for everyone: right for d only
    chosen, metrics, _ = _tune_title_weights(sasrec, {**CONTEXT, **CAME_BACK}, TITLES, task, times, gaps, print)
    assert chosen["title_weight"] in TITLE_WEIGHTS[1:]  # a, b, c: the sequel moves up to second
    assert chosen["ctx_title_weight"] == 0.0  # d: the title only pulls the wrong item up
    assert metrics["hr@10"] == 1.0 and metrics["ndcg@10"] == pytest.approx((3 / np.log2(3) + 1) / 4)
    chosen, metrics, _ = _tune_title_weights(sasrec, {**CONTEXT, **CAME_BACK}, UNRELATED, task, times, gaps, print)
    assert chosen["title_weight"] == 0.0 and chosen["ctx_title_weight"] == 0.0
    one_bucket, _, _ = _tune_title_weights(
        sasrec, {**CONTEXT, "ctx_gap_seconds": None}, TITLES, task, times, gaps, print
    )
    assert one_bucket["title_weight"] > 0 and "ctx_title_weight" not in one_bucket


def test_title_settings_rebuild_the_context_blend_with_the_title_model_last():
    from aisys.evaluation.runner import _sequential_model

    base = {"max_seq_len": 8, "embedding_dim": 8, "n_layers": 1, "n_heads": 1, "epochs": 1}
    title = {"title_window": 5, "title_decay": 0.8, "title_weight": 0.1, "ctx_title_weight": 0.25}
    blend = _sequential_model({**base, **CONTEXT, **CAME_BACK, **title}, titles=TITLES)
    assert isinstance(blend, ContextBlend) and blend.gap_thresholds == [3_600.0]
    assert isinstance(blend.models[-1], TitleSimilarity) and len(blend.models) == 6
    assert (blend.models[-1].window, blend.models[-1].decay) == (5, 0.8)
    assert [weights[-1] for weights in blend.bucket_weights] == [0.1, 0.25]
    single = _sequential_model({**base, **CONTEXT, "ctx_gap_seconds": None, "title_window": 5, "title_decay": 0.8,
                                "title_weight": 0.1}, titles=TITLES)
    assert single.bucket_weights == [[1.0, 0.0, 0.0, 0.0, 0.1]]
    with pytest.raises(ValueError, match="item titles"):
        _sequential_model({**base, **CONTEXT, **CAME_BACK, **title})


def test_title_blend_is_tuned_on_valid_refit_and_rebuilt(tmp_path, monkeypatch):
    from aisys.evaluation import runner

    folder, data, cfg = tiny_movielens_for_blends(tmp_path, monkeypatch)
    result = runner.evaluate_model("sasrec+ctx-blend+title", data, "loo", cfg, seed=0)  # titles from u.item
    assert {"title_window", "title_decay", "title_weight", "ctx_title_weight"} <= set(result.settings)
    assert result.settings["title_window"] == runner.TITLE_WINDOW
    assert result.component is not None and "title_weight" not in result.component.settings
    assert 0.0 <= result.test_metrics["ndcg@10"] <= 1.0
    again = runner.evaluate_model(
        "sasrec+ctx-blend+title", data, "loo", cfg, seed=0, settings=result.settings,
        item_titles=runner.load_item_titles(cfg, data.item_ids),
    )
    assert again.test_metrics == result.test_metrics  # the settings rebuild the same model
