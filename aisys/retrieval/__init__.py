"""Top-k maximum-inner-product retrieval over item vectors: exact or approximate (Faiss).

``make_index("exact" | "ivf_flat" | "hnsw" | "ivf_pq").build(vectors).search(queries, k, exclude)``;
see :mod:`aisys.retrieval.index` and docs/retrieval.md.
"""

from aisys.retrieval.index import KINDS, ExactIndex, FaissIndex, ItemIndex, default_nlist, make_index

__all__ = ["KINDS", "ExactIndex", "FaissIndex", "ItemIndex", "default_nlist", "make_index"]
