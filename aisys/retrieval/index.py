"""Maximum-inner-product retrieval over item vectors: exact, or approximate with Faiss.

Every index answers the same question: for each query vector, the ``k`` items
with the highest inner product ``query . item``, best first, never returning an
excluded item. Item ids are row positions in the matrix given to
:meth:`ItemIndex.build` (``0 .. N-1``); map them to catalogue ids outside.

Conventions every implementation keeps (tests hold them to it):

- ``search`` always returns arrays of shape ``(B, k)``: ``scores`` float32 and
  ``ids`` int64. When fewer than ``k`` items are left (``k > N``, or exclusions
  remove items), the tail slots hold id ``-1`` and score ``-inf``, as Faiss does.
- ``exclude[b]`` lists the ids query ``b`` must never get back; ids outside
  ``0 .. N-1`` are ignored (an item that left the catalogue cannot come back).
- Ties between equal scores come back in any order.

:class:`ExactIndex` scores every item (torch matmul + ``topk``; ``topk`` was
measured 6x faster than ``np.argpartition`` on 1M scores). :class:`FaissIndex`
wraps a Faiss index (IVF-Flat by default, chosen by ``benchmarks/retrieval.py``;
HNSW and IVF-PQ with exact re-ranking are there to compare). It handles
exclusions by over-fetching ``k + len(exclude)`` candidates and filtering them;
a query whose list comes back short after filtering (exclusions swallowed it, or
the probed clusters held too few items) is answered again by an exact scan of
the index's own full-precision vectors, so the caller always gets ``k`` items
when the catalogue has them. See docs/retrieval.md for the measurements.

Faiss is imported when a :class:`FaissIndex` is built, not at import.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
import torch

KINDS = ("exact", "ivf_flat", "hnsw", "ivf_pq")

# Largest (B, N) float32 score matrix ExactIndex holds at once: bounds its memory
# for big batches (32 queries x 1M items = 128 MiB).
_EXACT_CHUNK_SCORES = 32 * 1_048_576

# Defaults chosen with benchmarks/retrieval.py on 1M x 64 clustered items, top-100,
# one thread (docs/retrieval.md has the table). nprobe 32 was the fastest to reach
# recall@100 0.95 (0.975, 0.6 ms); 64 gave 0.995 at ~1 ms: margin for real embeddings.
DEFAULT_NPROBE = 64
DEFAULT_EF_SEARCH = 256  # HNSW's recall plateaued near 0.75 at any ef (see docs)
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 64
DEFAULT_REFINE_FACTOR = 4
# k-means on 64 points per list instead of Faiss's 256: 4x faster training, and
# the recall at a given nprobe was measured the same.
DEFAULT_TRAIN_POINTS_PER_LIST = 64


def default_nlist(n_items: int) -> int:
    """IVF lists for ``n_items``: ``sqrt(N)`` rounded to a power of two (1024 at 1M),
    and at least 39 items per list so k-means has enough points to place each centroid."""
    if n_items < 1:
        raise ValueError(f"n_items must be positive, got {n_items}")
    target = 2 ** round(math.log2(max(1.0, math.sqrt(n_items))))
    return max(1, min(target, n_items // 39))


class ItemIndex(ABC):
    """Top-k maximum-inner-product search over a fixed matrix of item vectors."""

    kind: str = ""

    def __init__(self) -> None:
        self._n_items = 0
        self._dim = 0

    @property
    def n_items(self) -> int:
        """Items in the index (0 before :meth:`build`)."""
        return self._n_items

    @property
    def dim(self) -> int:
        """Vector dimension (0 before :meth:`build`)."""
        return self._dim

    def build(self, item_vectors: np.ndarray) -> "ItemIndex":
        """Index ``item_vectors`` ``(N, D)`` (made float32, finite); returns ``self``."""
        vectors = _as_matrix(item_vectors, "item_vectors")
        if vectors.shape[0] == 0:
            raise ValueError("item_vectors is empty: an index needs at least one item")
        self._n_items, self._dim = vectors.shape
        self._build(vectors)
        return self

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query: ``(scores (B, k) float32, ids (B, k) int64)``.

        ``queries`` is ``(B, D)``. ``exclude``, when given, has one list of item
        ids per query. See the module docstring for padding and exclusion rules.
        """
        if self._n_items == 0:
            raise RuntimeError(f"{type(self).__name__}.search called before build()")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self._dim:
            raise ValueError(f"queries have dimension {q.shape[1]}; the index was built with {self._dim}")
        excluded = self._exclusions(exclude, q.shape[0])
        scores = np.full((q.shape[0], int(k)), -np.inf, dtype=np.float32)
        ids = np.full((q.shape[0], int(k)), -1, dtype=np.int64)
        if q.shape[0]:
            self._search(q, int(k), excluded, scores, ids)
        return scores, ids

    def _exclusions(self, exclude: Sequence[Sequence[int]] | None, n_queries: int) -> list[np.ndarray]:
        """One sorted array of in-range excluded ids per query."""
        if exclude is None:
            return [np.empty(0, dtype=np.int64)] * n_queries
        if len(exclude) != n_queries:
            raise ValueError(f"exclude has {len(exclude)} lists for {n_queries} queries: give one list per query")
        out = []
        for row in exclude:
            arr = np.unique(np.asarray(row, dtype=np.int64).reshape(-1))
            out.append(arr[(arr >= 0) & (arr < self._n_items)])
        return out

    @abstractmethod
    def _build(self, vectors: np.ndarray) -> None:
        """Index the validated float32 ``(N, D)`` matrix."""

    @abstractmethod
    def _search(
        self, queries: np.ndarray, k: int, excluded: list[np.ndarray], scores: np.ndarray, ids: np.ndarray
    ) -> None:
        """Fill ``scores``/``ids`` ``(B, k)`` (pre-filled with padding) for validated queries."""


class ExactIndex(ItemIndex):
    """Scores every item: exact, ``O(N * D)`` per query (~12 ms at 1M x 64 on one core).

    Keeps a reference to the item matrix (no copy when it is already float32 and
    C-contiguous). ``threads`` is applied with ``torch.set_num_threads`` on each
    search, because torch's thread count is per process and the measured best on
    a small shared box is 1 (STACK.md).
    """

    kind = "exact"

    def __init__(self, threads: int = 1) -> None:
        super().__init__()
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.threads = threads
        self._items: torch.Tensor | None = None

    def _build(self, vectors: np.ndarray) -> None:
        self._items = torch.from_numpy(vectors)  # (N, D), shares memory

    def _search(self, queries, k, excluded, scores, ids) -> None:
        torch.set_num_threads(self.threads)
        top = min(k, self._n_items)
        chunk = max(1, _EXACT_CHUNK_SCORES // self._n_items)
        with torch.inference_mode():
            for start in range(0, queries.shape[0], chunk):
                stop = min(start + chunk, queries.shape[0])
                block = torch.from_numpy(queries[start:stop]) @ self._items.T  # (b, N)
                for row in range(start, stop):
                    if excluded[row].size:
                        block[row - start, torch.from_numpy(excluded[row])] = -math.inf
                values, indices = torch.topk(block, top, dim=1)  # (b, top), best first
                values_np, indices_np = values.numpy(), indices.numpy()
                keep = np.isfinite(values_np)  # -inf marks an excluded item: never returned
                scores[start:stop, :top] = np.where(keep, values_np, -np.inf)
                ids[start:stop, :top] = np.where(keep, indices_np, -1)


class FaissIndex(ItemIndex):
    """Approximate inner-product search with Faiss; see the module docstring.

    ``method``:

    - ``"ivf_flat"`` (default): k-means into ``nlist`` lists, scan ``nprobe`` of
      them with exact inner products. Fast to build, and the exact scan of every
      list is the fallback.
    - ``"hnsw"``: a graph on inner products (``hnsw_m`` links, ``ef_construction``,
      ``ef_search``). On items whose norms vary its recall plateaued near 0.75
      whatever ``ef_search`` (docs/retrieval.md); kept for comparison.
    - ``"ivf_pq"``: IVF with product-quantised codes (``pq_m`` sub-vectors of 8
      bits), re-ranked exactly over ``refine_factor * k`` candidates.

    ``threads`` sets Faiss's OpenMP threads (process-wide) before build and search.
    """

    def __init__(
        self,
        method: str = "ivf_flat",
        *,
        nlist: int | None = None,
        nprobe: int = DEFAULT_NPROBE,
        hnsw_m: int = DEFAULT_HNSW_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
        pq_m: int | None = None,
        refine_factor: int = DEFAULT_REFINE_FACTOR,
        train_points_per_list: int = DEFAULT_TRAIN_POINTS_PER_LIST,
        threads: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if method not in ("ivf_flat", "hnsw", "ivf_pq"):
            raise ValueError(f"FaissIndex method must be 'ivf_flat', 'hnsw' or 'ivf_pq', got {method!r}")
        for name, value in [("nprobe", nprobe), ("hnsw_m", hnsw_m), ("ef_construction", ef_construction),
                            ("ef_search", ef_search), ("refine_factor", refine_factor),
                            ("train_points_per_list", train_points_per_list), ("threads", threads)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if nlist is not None and nlist < 1:
            raise ValueError(f"nlist must be >= 1, got {nlist}")
        self.kind = method
        self.method = method
        self.nlist = nlist
        self.nprobe = nprobe
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.pq_m = pq_m
        self.refine_factor = refine_factor
        self.train_points_per_list = train_points_per_list
        self.threads = threads
        self.seed = seed
        self.index: Any = None  # the Faiss index, for inspection and serialisation
        self.exact_fallbacks = 0  # queries answered by the exact scan since build (a serving metric)

    def params(self) -> dict[str, Any]:
        """The settings that shape results (after build, ``nlist``/``pq_m`` are resolved)."""
        keys = {"ivf_flat": ("nlist", "nprobe"), "hnsw": ("hnsw_m", "ef_construction", "ef_search"),
                "ivf_pq": ("nlist", "nprobe", "pq_m", "refine_factor")}[self.method]
        params = {key: getattr(self, key) for key in keys}
        if "nprobe" in params and self.nlist:
            params["nprobe"] = min(self.nprobe, self.nlist)  # what the search really probes
        return params

    def _build(self, vectors: np.ndarray) -> None:
        import faiss

        faiss.omp_set_num_threads(self.threads)
        n, d = vectors.shape
        if self.method == "hnsw":
            index = faiss.index_factory(d, f"HNSW{self.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
        else:
            self.nlist = min(self.nlist or default_nlist(n), n)
            if self.method == "ivf_flat":
                spec = f"IVF{self.nlist},Flat"
            else:
                self.pq_m = self.pq_m or _default_pq_m(d)
                if d % self.pq_m:
                    raise ValueError(f"pq_m ({self.pq_m}) must divide the vector dimension ({d})")
                # 8-bit codes need 256 training points; tiny catalogues get fewer bits.
                bits = min(8, int(math.log2(n))) if n > 1 else 1
                # "np": skip polysemous training, which took seconds and serves only Hamming filtering.
                spec = f"IVF{self.nlist},PQ{self.pq_m}x{bits}np,RFlat"
            index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = self.seed
            # PQ needs 256 points per codebook whatever nlist is, or it cannot train.
            sample_size = min(n, max(self.train_points_per_list * self.nlist,
                                     256 if self.method == "ivf_pq" else 0))
            ivf.cp.max_points_per_centroid = max(1, sample_size // self.nlist)
            sample = vectors
            if sample_size < n:
                rows = np.random.default_rng(self.seed).choice(n, sample_size, replace=False)
                sample = vectors[np.sort(rows)]
            index.train(sample)
        index.add(vectors)
        self.index = index
        self.exact_fallbacks = 0

    def _search(self, queries, k, excluded, scores, ids) -> None:
        import faiss

        faiss.omp_set_num_threads(self.threads)
        # Over-fetch by the longest exclusion list, so filtering still leaves k.
        fetch = min(k + max(e.size for e in excluded), self._n_items)
        found_scores, found_ids = self._raw_search(queries, fetch, exact=False)
        short = [row for row in range(queries.shape[0])
                 if not _fill_row(found_scores[row], found_ids[row], excluded[row], k, self._n_items,
                                  scores[row], ids[row])]
        if short:
            self.exact_fallbacks += len(short)
            fetch = min(k + max(excluded[row].size for row in short), self._n_items)
            found_scores, found_ids = self._raw_search(queries[short], fetch, exact=True)
            for n, row in enumerate(short):
                scores[row], ids[row] = -np.inf, -1  # drop the short approximate list
                _fill_row(found_scores[n], found_ids[n], excluded[row], k, self._n_items, scores[row], ids[row])

    def _raw_search(self, queries: np.ndarray, fetch: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        """Faiss's top-``fetch`` (inner products, ids; id -1 pads), approximate or by an exact
        scan of the index's full-precision vectors (the fallback)."""
        import faiss

        if self.method == "hnsw":
            if exact:
                return faiss.downcast_index(self.index.storage).search(queries, fetch)
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, fetch))
            return self.index.search(queries, fetch, params=params)
        if exact and self.method == "ivf_flat":
            # Probing every list is an exhaustive exact scan of the stored vectors.
            return self.index.search(queries, fetch, params=faiss.SearchParametersIVF(nprobe=self.nlist))
        if exact:
            return faiss.downcast_index(self.index.refine_index).search(queries, fetch)
        ivf = faiss.SearchParametersIVF(nprobe=min(self.nprobe, self.nlist))
        if self.method == "ivf_flat":
            return self.index.search(queries, fetch, params=ivf)
        params = faiss.IndexRefineSearchParameters(k_factor=float(self.refine_factor), base_index_params=ivf)
        return self.index.search(queries, fetch, params=params)


def _default_pq_m(dim: int) -> int:
    """Sub-quantisers for IVF-PQ: 4 dimensions each (16 bytes a 64-d vector), dividing ``dim``."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1


def make_index(kind: str = "ivf_flat", **params: Any) -> ItemIndex:
    """An unbuilt index by name: ``"exact"``, ``"ivf_flat"`` (the measured default ANN),
    ``"hnsw"`` or ``"ivf_pq"``; ``params`` go to :class:`ExactIndex` or :class:`FaissIndex`."""
    if kind == "exact":
        return ExactIndex(**params)
    if kind in KINDS:
        return FaissIndex(kind, **params)
    raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")


def _fill_row(found_scores: np.ndarray, found_ids: np.ndarray, banned: np.ndarray, k: int, n_items: int,
              scores: np.ndarray, ids: np.ndarray) -> bool:
    """Copy the best ``k`` non-excluded candidates into one output row; ``False`` when they
    are fewer than the catalogue can give (the row then needs the exact fallback)."""
    keep = found_ids >= 0
    if banned.size:
        keep &= ~np.isin(found_ids, banned)
    row_ids, row_scores = found_ids[keep][:k], found_scores[keep][:k]
    ids[: row_ids.size], scores[: row_ids.size] = row_ids, row_scores
    return row_ids.size >= min(k, n_items - banned.size)


def _as_matrix(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as a C-contiguous finite float32 ``(rows, D)`` matrix, or an error naming it."""
    matrix = np.ascontiguousarray(array, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) array, got shape {matrix.shape}")
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix
