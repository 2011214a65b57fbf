"""Per-segment metrics on hand-made users (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from aisys.quality.ranking import user_metrics
from aisys.quality.segments import (
    activity_bucket,
    age_band,
    demographics_from_table,
    popularity_buckets,
    segment_metrics,
    segments_as_dict,
)


def test_age_bands_and_activity_buckets_have_the_documented_edges():
    assert [age_band(a) for a in (7, 17, 18, 24, 25, 44, 45, 54, 55, 73, None)] == [
        "<18", "<18", "18-24", "18-24", "25-34", "35-44", "45-54", "45-54", "55+", "55+", "unknown",
    ]
    assert [activity_bucket(n) for n in (3, 20, 21, 50, 51, 150, 151)] == [
        "<=20", "<=20", "21-50", "21-50", "51-150", "51-150", ">150",
    ]


def test_popularity_buckets_split_the_catalogue_by_rank():
    pop = np.array([0.0] + list(range(10, 0, -1)))  # item 1 most popular ... item 10 least
    labels = popularity_buckets(pop)
    assert labels[0] == ""
    assert labels[1] == "head"  # top 10% of 10 items
    assert list(labels[2:6]) == ["torso"] * 4  # next 40%: the gate's shares (registry.holdout imports them)
    assert list(labels[6:]) == ["tail"] * 5


def test_segments_average_each_groups_own_users():
    # Three users: the model ranks the target first for u1 and u3, last for u2.
    scores = np.array([
        [0.0, 9, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [0.0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9],
        [0.0, 1, 9, 1, 1, 1, 1, 1, 1, 1, 1],
    ])
    targets = [[1], [1], [2]]
    histories = [[3], list(range(3, 10)) * 25, [4]]  # u2 is very active
    per_user = user_metrics(scores, targets, histories, k=1)
    demographics = demographics_from_table(pa.table({
        "user_id": ["u1", "u2", "u3"], "gender": ["F", "M", "F"], "age": [20, 60, 30], "occupation": ["a"] * 3,
    }))
    popularity = np.array([0.0, 50, 1, 40, 30, 20, 10, 9, 8, 7, 6])  # item 1 head, item 2 tail
    table = segment_metrics(per_user, ["u1", "u2", "u3"], histories, targets, demographics, popularity, k=1)
    seg = segments_as_dict(table)
    assert seg["gender=F"] == {"n": 2.0, "hr@1": 1.0, "ndcg@1": 1.0, "mrr@1": 1.0}
    assert seg["gender=M"]["ndcg@1"] == 0.0
    assert seg["age=55+"]["n"] == 1 and seg["age=18-24"]["hr@1"] == 1.0
    assert seg["activity=>150"]["hr@1"] == 0.0 and seg["activity=<=20"]["n"] == 2
    assert seg["item_popularity=head"] == pytest.approx({"n": 2.0, "hr@1": 0.5, "ndcg@1": 0.5, "mrr@1": 0.5})
    assert seg["item_popularity=tail"]["hr@1"] == 1.0
    assert set(table["dimension"]) == {"gender", "age", "activity", "item_popularity"}


def test_item_popularity_segment_counts_each_target_of_a_multi_target_user():
    scores = np.array([[0.0, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]])
    per_user = user_metrics(scores, [[1, 5]], [[]], k=2)
    popularity = np.array([0.0, 9] + [1] * 9)  # item 1 is the head (top 10% of 10 items)
    table = segment_metrics(per_user, ["u"], [[]], [[1, 5]], {}, popularity, k=2)
    seg = segments_as_dict(table)
    assert seg["gender=unknown"]["n"] == 1
    # Item 1 ranks first alone (a hit); item 5 (torso: items 2-5 are the next 40%) ranks after the 3 non-targets
    # (a miss).
    assert seg["item_popularity=head"]["hr@2"] == 1.0
    assert seg["item_popularity=torso"]["hr@2"] == 0.0


def test_misaligned_inputs_are_rejected():
    per_user = user_metrics(np.zeros((1, 3)), [[1]], [[]], k=1)
    with pytest.raises(ValueError, match="aligned"):
        segment_metrics(per_user, ["a", "b"], [[]], [[1]], {}, np.ones(3))


def test_read_users_and_item_ids_from_grouplens_and_recbole_files(tmp_path):
    from aisys.data.movielens import read_item_ids, read_users

    grouplens = tmp_path / "gl"
    grouplens.mkdir()
    (grouplens / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    (grouplens / "u.item").write_text("1|Toy Story (1995)|x||u|0\n2|GoldenEye (1995)|x||u|0\n", encoding="latin-1")
    recbole = tmp_path / "rb"
    recbole.mkdir()
    (recbole / "ml-100k.user").write_text(
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
        "1\t24\tM\ttechnician\t85711\n2\t53\tF\tother\t94043\n"
    )
    (recbole / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\n1\tToy Story\n2\tGoldenEye\n")
    expected = [
        {"user_id": "1", "gender": "M", "age": 24, "occupation": "technician"},
        {"user_id": "2", "gender": "F", "age": 53, "occupation": "other"},
    ]
    for folder in (grouplens, recbole):
        assert read_users(folder).to_pylist() == expected
        assert read_item_ids(folder) == ["1", "2"]
    with pytest.raises(FileNotFoundError, match="u.user"):
        read_users(tmp_path)
