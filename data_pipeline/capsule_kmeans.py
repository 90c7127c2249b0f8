"""Seeded k-means (k-means++ init + Lloyd iterations) in NumPy: the capsule concept codebook.

``fit_kmeans(x, K, seed)`` -> centroids float32 [K, D]; ``nearest_centroid(x, centroids)`` ->
int32 ids. Assignments use exact float64 squared distances, so anyone can recompute a
dataset's concept ids from the saved centroids; the Lloyd loop itself uses float32 GEMMs.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

_CHUNK = 4096  # rows per distance block: [chunk, K] stays small for K = 2048


def _sq_dists(x: np.ndarray, centroids: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    """Squared distances [n, K] up to the per-row constant |x|^2 (enough for an argmin)."""
    return c_sq[None, :] - 2.0 * (x @ centroids.T)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean, float64, first on ties): x [n, D], centroids
    [K, D] -> int32 [n]."""
    x64 = np.asarray(x, dtype=np.float64)
    c64 = np.asarray(centroids, dtype=np.float64)
    c_sq = (c64 ** 2).sum(axis=1)
    out = np.empty(len(x64), dtype=np.int32)
    for start in range(0, len(x64), _CHUNK):
        out[start:start + _CHUNK] = _sq_dists(x64[start:start + _CHUNK], c64, c_sq).argmin(axis=1)
    return out


def kmeans_plus_plus(x: np.ndarray, num_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: indices [K] of distinct rows of x [n, D], each drawn with probability
    proportional to its squared distance to the nearest row already chosen."""
    first = int(rng.integers(len(x)))
    chosen = [first]
    closest = ((x - x[first]) ** 2).sum(axis=1)
    x_sq = (x ** 2).sum(axis=1)
    for _ in range(1, num_clusters):
        total = closest.sum()
        if total <= 0:
            raise ValueError(f"only {len(chosen)} distinct points for {num_clusters} clusters")
        pick = int(np.searchsorted(np.cumsum(closest), rng.random() * total, side="right"))
        pick = min(pick, len(x) - 1)
        chosen.append(pick)
        closest = np.minimum(closest, np.maximum(x_sq - 2.0 * (x @ x[pick]) + x_sq[pick], 0.0))
        closest[pick] = 0.0
    return np.asarray(chosen)


def fit_kmeans(x: np.ndarray, num_clusters: int, seed: int, iterations: int = 25,
               progress: bool = False) -> np.ndarray:
    """Centroids float32 [K, D] of x [n, D] (needs at least K distinct rows).

    Lloyd iterations stop early when no assignment changes; a cluster that empties is moved
    to the point farthest from its centroid, so every code is used by the training data.
    """
    x = np.asarray(x, dtype=np.float32)
    if len(np.unique(x, axis=0)) < num_clusters:
        raise ValueError(f"k-means: {len(np.unique(x, axis=0))} distinct points for "
                         f"{num_clusters} clusters")
    rng = np.random.default_rng([seed, 0x6B6D])
    centroids = x[kmeans_plus_plus(x, num_clusters, rng)].copy()
    assign = np.full(len(x), -1, dtype=np.int64)
    for _ in tqdm(range(iterations), desc="k-means", unit="iter", disable=not progress, leave=False):
        c_sq = (centroids ** 2).sum(axis=1)
        new = np.concatenate([_sq_dists(x[s:s + _CHUNK], centroids, c_sq).argmin(axis=1)
                              for s in range(0, len(x), _CHUNK)])
        counts = np.bincount(new, minlength=num_clusters)
        _refill_empty(x, centroids, new, counts)
        if np.array_equal(new, assign):
            break
        assign = new
        order = np.argsort(assign, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sums = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
        centroids = (sums / counts[:, None]).astype(np.float32)
    return centroids


def _refill_empty(x: np.ndarray, centroids: np.ndarray, assign: np.ndarray, counts: np.ndarray) -> None:
    """Give each empty cluster the farthest point (from its centroid) of a cluster that has
    more than one point; updates ``assign`` and ``counts`` in place."""
    empty = np.flatnonzero(counts == 0)
    if not empty.size:
        return
    dist = ((x - centroids[assign]) ** 2).sum(axis=1)
    for cluster in empty:
        dist[counts[assign] <= 1] = -1.0
        far = int(dist.argmax())
        counts[assign[far]] -= 1
        assign[far] = cluster
        counts[cluster] = 1
        dist[far] = -1.0
