"""Dense top-k search over normalised embeddings (inner product).

Backends, in the order ``index_type="auto"`` considers them:

* ``flat``: exact inner product with FAISS (``IndexFlatIP``), moved to the GPU when the installed
  FAISS has GPU support and a GPU is visible;
* ``torch``: exact inner product as chunked matrix products + ``topk`` in torch; used instead of
  FAISS on a CUDA machine whose FAISS is CPU-only (the ``faiss-cpu`` wheel), or when FAISS is
  not installed at all;
* ``hnsw`` / ``ivf``: approximate FAISS indexes (``IndexHNSWFlat``, ``IndexIVFFlat``). ``auto``
  switches to ``ivf`` once the corpus has more than ``approximate_threshold`` vectors (default
  2,000,000: BEIR corpora up to that size and a MIRACL language of that size stay exact; MS MARCO's
  8.8M passages go approximate). IVF trains quickly (k-means on a sample), which matters on a
  few CPU cores; HNSW gives higher recall per query-time but takes long to build on a CPU.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

log = logging.getLogger(__name__)

APPROXIMATE_THRESHOLD = 2_000_000
INDEX_TYPES = ("auto", "flat", "torch", "hnsw", "ivf")


def faiss_or_none():
    try:
        import faiss  # noqa: PLC0415
    except ImportError:
        return None
    return faiss


def faiss_gpu_count() -> int:
    faiss = faiss_or_none()
    if faiss is None or not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken GPU runtime means no GPU
        return 0


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto": CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class DenseIndex:
    """Top-k inner-product search over ``embeddings`` (``(n, dim)`` float32).

    ``device``: "auto" (GPU when there is one), "cpu" or "cuda[:i]"."""

    def __init__(
        self,
        embeddings: np.ndarray,
        index_type: str = "auto",
        device: str | None = "auto",
        approximate_threshold: int = APPROXIMATE_THRESHOLD,
        hnsw_m: int = 32,
        ef_search: int = 256,
        ivf_nlist: int | None = None,
        ivf_nprobe: int = 64,
        chunk_rows: int = 1 << 16,
    ):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        emb = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be 2-D, got shape {emb.shape}")
        self.n, self.dim = emb.shape
        self.device = resolve_device(device)
        self.chunk_rows = chunk_rows
        faiss = faiss_or_none()
        if index_type == "auto":
            if self.n > approximate_threshold and faiss is not None:
                index_type = "ivf"
            elif faiss is None or (self.device.type == "cuda" and faiss_gpu_count() == 0):
                index_type = "torch"
            else:
                index_type = "flat"
        if index_type in ("flat", "hnsw", "ivf") and faiss is None:
            raise ImportError(f"index_type={index_type!r} needs FAISS: pip install 'hybrid-dist[eval]' "
                              "(faiss-cpu; 'hybrid-dist[gpu]' for faiss-gpu), or use index_type='torch'")
        self.index_type = index_type
        self.on_gpu = False
        if index_type == "torch":
            self._emb = torch.from_numpy(emb).to(self.device)
            self._index = None
            return
        self._emb = None
        if index_type == "flat":
            index = faiss.IndexFlatIP(self.dim)
        elif index_type == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        else:
            nlist = ivf_nlist or max(1, min(self.n // 39, int(4 * math.sqrt(max(self.n, 1)))))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = emb if self.n <= nlist * 256 else emb[rng.choice(self.n, nlist * 256, replace=False)]
            index.train(sample)
            index.nprobe = min(ivf_nprobe, nlist)
        if self.device.type == "cuda" and faiss_gpu_count() > 0 and index_type != "hnsw":
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, self.device.index or 0, index)
            self.on_gpu = True
        for start in range(0, self.n, chunk_rows):
            index.add(emb[start : start + chunk_rows])
        self._index = index
        log.info("dense index: %s over %d x %d (%s)", index_type, self.n, self.dim, "gpu" if self.on_gpu else "cpu")

    def search(self, queries: np.ndarray, k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, each ``(len(queries), min(k, n))``, best first."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        if q.ndim != 2 or (len(q) and q.shape[1] != self.dim):
            raise ValueError(f"queries must be (n, {self.dim}), got shape {q.shape}")
        k = min(k, self.n)
        scores = np.empty((len(q), k), dtype=np.float32)
        ids = np.empty((len(q), k), dtype=np.int64)
        if k == 0:
            return scores, ids
        for start in range(0, len(q), batch_size):
            batch = q[start : start + batch_size]
            if self._index is not None:
                s, i = self._index.search(batch, k)
            else:
                s, i = self._torch_search(batch, k)
            scores[start : start + len(batch)] = s
            ids[start : start + len(batch)] = i
        return scores, ids

    @torch.no_grad()
    def _torch_search(self, batch: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        qt = torch.from_numpy(batch).to(self.device)
        best_s = best_i = None
        for start in range(0, self.n, self.chunk_rows * 16):
            block = self._emb[start : start + self.chunk_rows * 16]
            s = qt @ block.T
            kk = min(k, block.shape[0])
            s, i = torch.topk(s, kk, dim=1)
            i = i + start
            if best_s is not None:
                s = torch.cat([best_s, s], 1)
                i = torch.cat([best_i, i], 1)
                s, pos = torch.topk(s, min(k, s.shape[1]), dim=1)
                i = torch.gather(i, 1, pos)
            best_s, best_i = s, i
        return best_s.cpu().numpy(), best_i.cpu().numpy()
