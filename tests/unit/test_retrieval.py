"""Retrieval indexes: exact top-k by inner product, and Faiss ANN behind the same interface."""

import numpy as np
import pytest

from aisys.retrieval import ExactIndex, FaissIndex, default_nlist, make_index
from aisys.retrieval import index as index_module

ANN_KINDS = ["ivf_flat", "hnsw", "ivf_pq"]


def clustered(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items from a small Gaussian mixture with varying norms, and 12 queries near items."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim)).astype(np.float32)
    items = centres[rng.integers(0, 8, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    items *= rng.lognormal(0, 0.3, (n, 1)).astype(np.float32)
    queries = items[rng.choice(n, 12, replace=False)] + 0.3 * rng.standard_normal((12, dim)).astype(np.float32)
    return items.astype(np.float32), queries.astype(np.float32)


def brute_force(items, queries, k, exclude=None):
    """Reference top-k ids per query by sorting every score (``-1`` pads)."""
    scores = queries.astype(np.float64) @ items.T.astype(np.float64)
    out = np.full((len(queries), k), -1)
    for row in range(len(queries)):
        banned = set(exclude[row]) if exclude else set()
        ranked = [int(i) for i in np.argsort(-scores[row], kind="stable") if int(i) not in banned][:k]
        out[row, : len(ranked)] = ranked
    return out


def exhaustive(kind: str, n: int):
    """An ANN index set to search everything, where it must equal exact."""
    return {
        "ivf_flat": dict(nprobe=10_000),
        "hnsw": dict(ef_search=n),
        "ivf_pq": dict(nprobe=10_000, refine_factor=n),
    }[kind]


def test_exact_index_matches_brute_force_ids_and_scores():
    items, queries = clustered(1500, 16)
    scores, ids = ExactIndex().build(items).search(queries, 20)
    assert ids.shape == scores.shape == (12, 20) and ids.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(ids, brute_force(items, queries, 20))
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", items[ids], queries), rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all(), "best first"


@pytest.mark.parametrize("kind", ANN_KINDS)
def test_ann_at_exhaustive_settings_equals_exact(kind):
    items, queries = clustered(1000, 16)
    exact_scores, exact_ids = ExactIndex().build(items).search(queries, 25)
    scores, ids = make_index(kind, **exhaustive(kind, 1000)).build(items).search(queries, 25)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", *ANN_KINDS])
def test_exclusions_are_never_returned_and_the_next_best_items_fill_in(kind):
    items, queries = clustered(1000, 16)
    near = brute_force(items, queries, 30)
    # Exclude every other of each query's 30 nearest: the ones a user already has.
    exclude = [row[::2].tolist() for row in near]
    params = {} if kind == "exact" else exhaustive(kind, 1000)
    _, ids = make_index(kind, **params).build(items).search(queries, 10, exclude)
    for row, banned in zip(ids, exclude):
        assert not set(row.tolist()) & set(banned)
    np.testing.assert_array_equal(ids, brute_force(items, queries, 10, exclude))


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq"])
def test_exclusions_that_swallow_the_approximate_list_fall_back_to_exact(kind):
    items, queries = clustered(2000, 16)
    # The 1900 nearest items are excluded (a user who has seen most of the catalogue): one
    # probed IVF list holds ~40 items, so after filtering the approximate list comes back
    # short and the exact scan must answer with the best of the 100 items left.
    exclude = [row.tolist() for row in brute_force(items, queries, 1900)]
    index = make_index(kind, nprobe=1).build(items)
    _, ids = index.search(queries, 10, exclude)
    np.testing.assert_array_equal(ids, brute_force(items, queries, 10, exclude))
    assert index.exact_fallbacks == len(queries)
    # Without exclusions the same cheap index answers approximately, with no fallback.
    index.search(queries, 10)
    assert index.exact_fallbacks == len(queries)


@pytest.mark.parametrize("kind", ["exact", *ANN_KINDS])
def test_when_exclusions_leave_fewer_than_k_items_the_rest_is_padding(kind):
    items, queries = clustered(200, 8)
    keep = [3, 50, 199]
    exclude = [[i for i in range(200) if i not in keep]] * len(queries)
    scores, ids = make_index(kind).build(items).search(queries, 5, exclude)
    assert ids.shape == (12, 5)
    for row_scores, row_ids, query in zip(scores, ids, queries):
        expected = sorted(keep, key=lambda i: -float(items[i] @ query))
        assert row_ids[:3].tolist() == expected
        assert row_ids[3:].tolist() == [-1, -1] and np.isneginf(row_scores[3:]).all()


@pytest.mark.parametrize("kind", ["exact", *ANN_KINDS])
def test_k_larger_than_the_catalogue_returns_every_item_then_padding(kind):
    items, queries = clustered(60, 8)
    scores, ids = make_index(kind).build(items).search(queries, 100)
    assert ids.shape == scores.shape == (12, 100)
    np.testing.assert_array_equal(ids[:, :60], brute_force(items, queries, 60))
    assert (ids[:, 60:] == -1).all() and np.isneginf(scores[:, 60:]).all()
    assert np.isfinite(scores[:, :60]).all()


def test_out_of_range_exclusions_are_ignored_not_wrapped_around():
    items, queries = clustered(100, 8)
    _, plain = ExactIndex().build(items).search(queries, 100)
    last = 99
    # -1 would silently exclude the last item under numpy's negative indexing.
    _, ids = ExactIndex().build(items).search(queries, 100, [[-1, 100, 10_000]] * len(queries))
    np.testing.assert_array_equal(ids, plain)
    assert (ids == last).any(axis=1).all()


def test_default_ivf_flat_reaches_high_recall_on_clustered_items():
    items, queries = clustered(20_000, 32)
    _, truth = ExactIndex().build(items).search(queries, 100)
    index = make_index("ivf_flat").build(items)
    _, ids = index.search(queries, 100)
    recall = np.mean([np.intersect1d(a, b).size / 100 for a, b in zip(ids, truth)])
    assert recall >= 0.95
    assert index.params() == {"nlist": default_nlist(20_000), "nprobe": index_module.DEFAULT_NPROBE}
    assert index.exact_fallbacks == 0


def test_exact_index_scores_big_batches_in_chunks_with_the_same_result(monkeypatch):
    items, queries = clustered(500, 8)
    expected = ExactIndex().build(items).search(queries, 7, [[1, 2]] * 12)
    monkeypatch.setattr(index_module, "_EXACT_CHUNK_SCORES", 1_000)  # two queries per chunk
    chunked = ExactIndex().build(items).search(queries, 7, [[1, 2]] * 12)
    np.testing.assert_array_equal(chunked[1], expected[1])
    np.testing.assert_allclose(chunked[0], expected[0], rtol=1e-5)


def test_an_empty_batch_gives_empty_results():
    items, _ = clustered(50, 8)
    scores, ids = make_index("ivf_flat").build(items).search(np.zeros((0, 8), np.float32), 5)
    assert scores.shape == ids.shape == (0, 5)


def test_default_nlist_grows_with_the_catalogue_and_keeps_39_items_per_list():
    assert default_nlist(1_000_000) == 1024
    assert default_nlist(100_000) == 256
    assert default_nlist(1000) == 1000 // 39
    assert default_nlist(10) == 1
    for n in (50, 5000, 123_456):
        assert n // default_nlist(n) >= 39


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ix: ix.search(np.zeros((2, 5), np.float32), 3), "dimension 5"),
        (lambda ix: ix.search(np.zeros(8, np.float32), 3), "queries must be a 2-D"),
        (lambda ix: ix.search(np.zeros((2, 8), np.float32), 0), "k must be a positive integer"),
        (lambda ix: ix.search(np.zeros((2, 8), np.float32), 3, [[1]]), "exclude has 1 lists for 2 queries"),
        (lambda ix: ix.search(np.full((1, 8), np.nan, np.float32), 3), "queries contains NaN"),
    ],
)
def test_bad_search_calls_name_what_is_wrong(call, message):
    index = ExactIndex().build(clustered(50, 8)[0])
    with pytest.raises(ValueError, match=message):
        call(index)


def test_bad_builds_and_names_are_refused():
    with pytest.raises(RuntimeError, match="before build"):
        FaissIndex().search(np.zeros((1, 8), np.float32), 3)
    with pytest.raises(ValueError, match="item_vectors is empty"):
        ExactIndex().build(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="item_vectors contains NaN"):
        ExactIndex().build(np.array([[1.0, np.inf]], np.float32))
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        make_index("annoy")
    with pytest.raises(ValueError, match="nprobe must be >= 1"):
        make_index("ivf_flat", nprobe=0)
    with pytest.raises(ValueError, match=r"pq_m \(5\) must divide"):
        make_index("ivf_pq", pq_m=5).build(clustered(300, 8)[0])
