"""The pure parts of the benchmarks docs/capacity.md rests on: index sizes without a copy, the chunked catalogue,
and the serving profile's stack summary (no Ray)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def retrieval_bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import retrieval

        yield retrieval
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("kind", ["ivf_flat", "ivf_pq"])
def test_index_bytes_match_the_serialised_index_without_making_it(retrieval_bench, kind):
    import faiss

    from aisys.retrieval import make_index

    items = np.random.default_rng(0).standard_normal((5000, 16)).astype(np.float32)
    index = make_index(kind, nlist=32).build(items)
    serialised = faiss.serialize_index(index.index).nbytes
    computed = retrieval_bench.index_bytes(index, items)
    assert serialised - 4096 <= computed <= serialised  # the payload; the file adds only headers


def test_the_catalogue_is_generated_in_chunks_into_one_float32_matrix(retrieval_bench, monkeypatch):
    monkeypatch.setattr(retrieval_bench, "GENERATE_CHUNK", 700)  # several chunks and a short last one
    items = retrieval_bench.clustered_catalogue(2000, 8, 5, np.random.default_rng(3))
    assert items.shape == (2000, 8) and items.dtype == np.float32 and np.isfinite(items).all()
    assert len({tuple(np.round(r, 4)) for r in items[:, :2]}) > 1900  # every chunk filled, none left empty
    norms = np.linalg.norm(items, axis=1)
    assert 0.3 < np.median(norms) < 3.0  # around unit-norm centres, not raw noise


def test_the_profile_summary_counts_self_and_inclusive_samples():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import serving_profile
    finally:
        sys.path.remove(str(BENCHMARKS))
    total, top_self, inclusive = serving_profile.summarise("main;handle;score 7\nmain;handle;json 3\nbad line\n", 5)
    assert total == 10
    assert top_self == [("score", 7), ("json", 3)]
    assert dict(inclusive)["handle"] == 10 and dict(inclusive)["score"] == 7
