"""Integration and imputation metrics on plain arrays.

Every function here takes numpy arrays (cells in rows) and returns plain Python floats
(or a dict of floats, or a numpy array where documented). Nothing here knows about models,
AnnData slots or MuData: pass ``model.get_latent_representation()`` or
``mdata.obsm["X_mvae"]`` and a label column as arrays.

Bio-conservation (higher is better)
    :func:`leiden_ari_nmi`, :func:`silhouette_label`, :func:`knn_label_agreement`,
    :func:`linear_r2` (continuous variables such as a known trajectory or score).
Clustering
    :func:`leiden_clusters` (what :func:`leiden_ari_nmi` scores).
Batch removal (higher is better, except :func:`batch_predictability`)
    :func:`batch_entropy`, :func:`ilisi`, :func:`batch_predictability`.
Modality alignment (lower is better)
    :func:`foscttm`.
Imputation (higher is better)
    :func:`imputation_auroc`, :func:`imputation_auroc_per_feature`,
    :func:`imputation_pearson`.
Bundle
    :func:`integration_report`.

All inputs are checked at the door: mismatched lengths, empty input and NaN / infinite
values raise :class:`ValueError` naming the argument.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse, stats
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    roc_auc_score,
    silhouette_score,
)
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "LEIDEN_RESOLUTIONS",
    "batch_entropy",
    "batch_predictability",
    "foscttm",
    "ilisi",
    "imputation_auroc",
    "imputation_auroc_per_feature",
    "imputation_pearson",
    "integration_report",
    "knn_label_agreement",
    "leiden_ari_nmi",
    "linear_r2",
    "silhouette_label",
]

#: Resolutions scanned by :func:`leiden_ari_nmi` when ``resolution=None``: a coarse
#: version of scIB's 0.1..2.0 grid (20 values), 8 values to keep the scan cheap.
LEIDEN_RESOLUTIONS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0)

# Largest number of float64 entries held in one block of a cells x cells (or cells x
# features) computation: 2**24 entries = 128 MiB.
_BLOCK_ENTRIES = 2**24


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------


def _check_embedding(embedding: np.ndarray, name: str = "embedding") -> np.ndarray:
    """Return ``embedding`` as a finite, non-empty 2-D float64 array or raise ValueError."""
    if sparse.issparse(embedding):
        raise TypeError(f"{name} must be a dense array (cells x dimensions), got a sparse matrix")
    array = np.asarray(embedding, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (cells x dimensions), got an array of shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {array.shape}); pass at least one cell")
    if not np.isfinite(array).all():
        n_bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(
            f"{name} contains NaN or infinite values in {n_bad} rows; "
            "drop or fix those cells before computing metrics"
        )
    return array


def _check_categories(
    values: Sequence | np.ndarray, n_obs: int, name: str, embedding_name: str = "embedding"
) -> tuple[np.ndarray, int]:
    """Factorize a label/batch vector to integer codes, checking length and missing values.

    Returns the codes (0..n_categories-1, in order of first appearance) and the number of
    categories.
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per cell), got shape {array.shape}")
    if array.shape[0] != n_obs:
        raise ValueError(
            f"{embedding_name} has {n_obs} rows but {name} has {array.shape[0]} entries; "
            f"pass one {name} entry per row of {embedding_name}"
        )
    codes, uniques = pd.factorize(array)
    if (codes < 0).any():
        raise ValueError(
            f"{name} contains {int((codes < 0).sum())} missing values (NaN/None); "
            f"drop those cells or fill {name}"
        )
    return codes, len(uniques)


def _check_matrix(
    matrix: np.ndarray | sparse.spmatrix, name: str
) -> np.ndarray | sparse.csr_matrix:
    """Return a dense 2-D float array or a CSR matrix; reject empty or non-finite input."""
    if sparse.issparse(matrix):
        matrix = sparse.csr_matrix(matrix)
        values = matrix.data
    else:
        matrix = np.asarray(matrix)
        if not np.issubdtype(matrix.dtype, np.number) and matrix.dtype != bool:
            raise TypeError(f"{name} must be numeric, got dtype {matrix.dtype}")
        values = matrix
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (cells x features), got shape {matrix.shape}")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {matrix.shape})")
    # A float64 sum is NaN/inf exactly when some entry is (for any data that does not
    # overflow 1e308), and it allocates nothing the size of the matrix.
    if not np.isfinite(np.sum(values, dtype=np.float64)):
        raise ValueError(f"{name} contains NaN or infinite values; fix or drop them first")
    return matrix


def _check_same_shape(truth: np.ndarray, predicted: np.ndarray) -> None:
    if truth.shape != predicted.shape:
        raise ValueError(
            f"truth has shape {truth.shape} but predicted has shape {predicted.shape}; "
            "pass matrices over the same cells and features in the same order"
        )


def _dense_block(matrix: np.ndarray | sparse.spmatrix, rows: slice, cols: slice) -> np.ndarray:
    block = matrix[rows, cols]
    if sparse.issparse(block):
        block = block.toarray()
    # np.array copies: callers transform the block in place and must not touch the input.
    return np.array(block, dtype=np.float64)


# ----------------------------------------------------------------------------------------
# bio-conservation
# ----------------------------------------------------------------------------------------


def _resolutions(resolution: float | Sequence[float]) -> tuple[float, ...]:
    """One Leiden resolution or several, as a tuple of positive floats."""
    if np.ndim(resolution) == 0:
        resolutions: tuple[float, ...] = (float(resolution),)  # type: ignore[arg-type]
    else:
        resolutions = tuple(float(r) for r in resolution)  # type: ignore[union-attr]
    if len(resolutions) == 0 or any(not r > 0 for r in resolutions):
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    return resolutions


def leiden_clusters(
    embedding: np.ndarray,
    resolution: float | Sequence[float] = 1.0,
    *,
    n_neighbors: int = 15,
    seed: int = 0,
) -> list[np.ndarray]:
    """Leiden clusters of the rows of ``embedding``, one clustering per resolution.

    One kNN graph (:func:`scanpy.pp.neighbors`, UMAP connectivities, Euclidean, on a
    temporary AnnData), clustered by :func:`scanpy.tl.leiden` (igraph flavor, 2
    iterations, undirected) at each resolution. Torch's thread count, which scanpy's
    neighbor search resets through OpenMP, is restored afterwards.

    Parameters
    ----------
    embedding
        Cells x dimensions.
    resolution
        A Leiden resolution or a sequence of them.
    n_neighbors
        Neighbors for the kNN graph, clipped to the number of cells (scanpy counts the
        cell itself among its neighbors).
    seed
        Random state for the neighbor search and Leiden.

    Returns
    -------
    list of ``(n_obs,)`` int64 arrays of cluster numbers ``0..K-1``, one per resolution
    in the order given; every cell in cluster 0 when there are fewer than 3 cells.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> embedding = np.concatenate([rng.normal(10 * k, 1, (100, 5)) for k in range(3)])
    >>> (clusters,) = leiden_clusters(embedding, 0.5)
    >>> np.unique(clusters[:100]).size, np.unique(clusters).size
    (1, 3)
    """
    embedding = _check_embedding(embedding)
    resolutions = _resolutions(resolution)
    if n_neighbors < 2:
        raise ValueError(f"n_neighbors must be at least 2, got {n_neighbors}")
    n_obs = len(embedding)
    if n_obs < 3:
        return [np.zeros(n_obs, dtype=np.int64) for _ in resolutions]
    import torch

    adata = ad.AnnData(obs=pd.DataFrame(index=np.arange(n_obs).astype(str)))
    adata.obsm["X_emb"] = embedding
    # scanpy's neighbours reset the OpenMP thread count that torch shares (to every
    # core): mid-training, that would change torch's threads for the rest of the run
    threads = torch.get_num_threads()
    try:
        sc.pp.neighbors(
            adata, n_neighbors=min(n_neighbors, n_obs), use_rep="X_emb", random_state=seed
        )
    finally:
        torch.set_num_threads(threads)
    clusterings = []
    for resolution in resolutions:
        sc.tl.leiden(
            adata,
            resolution=resolution,
            key_added="_leiden",
            flavor="igraph",
            n_iterations=2,
            directed=False,
            random_state=seed,
        )
        clusterings.append(adata.obs["_leiden"].cat.codes.to_numpy().astype(np.int64))
    return clusterings


def leiden_ari_nmi(
    embedding: np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    n_neighbors: int = 15,
    resolution: float | Sequence[float] | None = None,
    select_by: Literal["ari", "nmi"] = "ari",
    seed: int = 0,
) -> dict[str, float]:
    """Adjusted Rand index and normalized mutual information of Leiden clusters vs labels.

    Builds a kNN graph on ``embedding`` with :func:`scanpy.pp.neighbors` (UMAP
    connectivities, Euclidean) on a temporary AnnData, clusters it with
    :func:`scanpy.tl.leiden` (igraph flavor, 2 iterations, undirected) and compares the
    clusters with ``labels`` using :func:`sklearn.metrics.adjusted_rand_score` and
    :func:`sklearn.metrics.normalized_mutual_info_score` (arithmetic mean normalization,
    as scIB).

    When several resolutions are given (the default scans :data:`LEIDEN_RESOLUTIONS`),
    the clustering with the best ``select_by`` score is kept and both scores are reported
    for that one clustering. scIB's ``opt_louvain`` selects by NMI; here the default selects
    by ARI, pass ``select_by="nmi"`` to follow scIB.

    Parameters
    ----------
    embedding
        Cells x dimensions latent representation.
    labels
        One cell-type label per row of ``embedding``.
    n_neighbors
        Neighbors for the kNN graph (scanpy's default, 15). Clipped to the number of cells.
    resolution
        A Leiden resolution, a sequence of resolutions to scan, or ``None`` to scan
        :data:`LEIDEN_RESOLUTIONS`.
    select_by
        Score used to pick the resolution: ``"ari"`` or ``"nmi"``.
    seed
        Random state for the neighbor search and Leiden.

    Returns
    -------
    dict
        ``{"ari": float, "nmi": float, "resolution": float, "n_clusters": int}`` for the
        selected clustering.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> embedding = np.concatenate([rng.normal(10 * k, 1, (100, 5)) for k in range(3)])
    >>> labels = np.repeat(["a", "b", "c"], 100)
    >>> scores = leiden_ari_nmi(embedding, labels)
    >>> round(scores["ari"], 2), round(scores["nmi"], 2)
    (1.0, 1.0)
    """
    embedding = _check_embedding(embedding)
    codes, _ = _check_categories(labels, embedding.shape[0], "labels")
    n_obs = embedding.shape[0]
    if n_obs < 3:
        raise ValueError(f"leiden_ari_nmi needs at least 3 cells, got {n_obs}")
    if select_by not in ("ari", "nmi"):
        raise ValueError(f"select_by must be 'ari' or 'nmi', got {select_by!r}")
    resolutions = _resolutions(LEIDEN_RESOLUTIONS if resolution is None else resolution)
    clusterings = leiden_clusters(embedding, resolutions, n_neighbors=n_neighbors, seed=seed)
    best: dict[str, float] | None = None
    for res, clusters in zip(resolutions, clusterings, strict=True):
        scores = {
            "ari": float(adjusted_rand_score(codes, clusters)),
            "nmi": float(normalized_mutual_info_score(codes, clusters)),
            "resolution": res,
            "n_clusters": len(np.unique(clusters)),
        }
        if best is None or scores[select_by] > best[select_by]:
            best = scores
    assert best is not None
    return best


def silhouette_label(
    embedding: np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    max_cells: int = 20_000,
    seed: int = 0,
) -> float:
    """Cell-type average silhouette width rescaled to [0, 1] (scIB's ``ASW_label``).

    Computes :func:`sklearn.metrics.silhouette_score` (Euclidean) of ``labels`` on
    ``embedding`` and returns ``(s + 1) / 2``: 1 means compact, well separated cell types,
    0.5 overlapping ones, 0 cells closer to other types than to their own.

    Parameters
    ----------
    embedding
        Cells x dimensions latent representation.
    labels
        One cell-type label per row of ``embedding``; at least 2 and at most
        ``n_cells - 1`` distinct labels.
    max_cells
        Above this many cells, the score is computed on a random subsample of this size
        (the exact score is quadratic in memory and time).
    seed
        Random state for the subsample.

    Returns
    -------
    float
        Rescaled silhouette in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> embedding = np.concatenate([rng.normal(10 * k, 1, (50, 5)) for k in range(2)])
    >>> silhouette_label(embedding, np.repeat([0, 1], 50)) > 0.9
    True
    """
    embedding = _check_embedding(embedding)
    codes, n_labels = _check_categories(labels, embedding.shape[0], "labels")
    n_obs = embedding.shape[0]
    if not 2 <= n_labels <= n_obs - 1:
        raise ValueError(
            f"silhouette needs between 2 and n_cells - 1 = {n_obs - 1} distinct labels, "
            f"got {n_labels}"
        )
    sample_size = max_cells if n_obs > max_cells else None
    score = silhouette_score(
        embedding, codes, metric="euclidean", sample_size=sample_size, random_state=seed
    )
    return float((score + 1.0) / 2.0)


def knn_label_agreement(
    query_embedding: np.ndarray,
    query_labels: Sequence | np.ndarray,
    reference_embedding: np.ndarray,
    reference_labels: Sequence | np.ndarray,
    *,
    n_neighbors: int = 15,
) -> float:
    """Fraction of query cells whose kNN majority label in the reference equals their own.

    For each query cell, the ``n_neighbors`` nearest reference cells (Euclidean, via
    :class:`sklearn.neighbors.KNeighborsClassifier` with uniform weights) vote on a label;
    the score is the fraction of query cells whose vote equals their own label. Ties are
    broken towards the label that appears first in ``reference_labels``. A query label that
    never occurs in the reference always counts as a disagreement. Use it to check, e.g.,
    that RNA-only cells land among ATAC-only cells of the same type in a shared latent
    space; chance level is about ``sum_k p_query(k) * p_reference(k)``.

    Parameters
    ----------
    query_embedding
        Query cells x dimensions.
    query_labels
        One label per query cell.
    reference_embedding
        Reference cells x dimensions (same dimensions as the query).
    reference_labels
        One label per reference cell.
    n_neighbors
        Number of reference neighbors voting (clipped to the number of reference cells).

    Returns
    -------
    float
        Agreement in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> reference = np.array([[0.0], [0.1], [5.0], [5.1]])
    >>> query = np.array([[0.05], [5.05]])
    >>> knn_label_agreement(query, ["a", "b"], reference, ["a", "a", "b", "b"], n_neighbors=2)
    1.0
    """
    query = _check_embedding(query_embedding, "query_embedding")
    reference = _check_embedding(reference_embedding, "reference_embedding")
    if query.shape[1] != reference.shape[1]:
        raise ValueError(
            f"query_embedding has {query.shape[1]} dimensions but reference_embedding has "
            f"{reference.shape[1]}; both must live in the same latent space"
        )
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors}")
    # Factorize both label vectors together so that labels of different dtypes compare
    # by value without numpy's elementwise-comparison pitfalls.
    _check_categories(query_labels, query.shape[0], "query_labels", "query_embedding")
    _check_categories(
        reference_labels, reference.shape[0], "reference_labels", "reference_embedding"
    )
    combined = np.concatenate(
        [np.asarray(reference_labels, dtype=object), np.asarray(query_labels, dtype=object)]
    )
    codes, _ = pd.factorize(combined)
    reference_codes = codes[: reference.shape[0]]
    query_codes = codes[reference.shape[0] :]
    classifier = KNeighborsClassifier(n_neighbors=min(n_neighbors, reference.shape[0]))
    classifier.fit(reference, reference_codes)
    predicted = classifier.predict(query)
    return float(np.mean(predicted == query_codes))


def linear_r2(
    embedding: np.ndarray,
    targets: np.ndarray,
    *,
    n_folds: int = 5,
    max_cells: int = 20_000,
    seed: int = 0,
) -> np.ndarray:
    """How much of known continuous variables an embedding holds, read out linearly.

    For each target (a pseudotime, a cell-cycle score, a simulator's true factor), the
    ``n_folds``-fold cross-validated R² of a ridge regression
    (:class:`sklearn.linear_model.RidgeCV`, its penalty chosen inside each training fold)
    from ``embedding``. The folds are shuffled, so cells stored in blocks (by sample or
    batch) do not become folds of their own. 1: the target is a linear function of the
    embedding; 0: no better than its mean; below 0: worse.

    Parameters
    ----------
    embedding
        Cells x dimensions latent representation.
    targets
        One value per cell (1-D) or one column per target (cells x targets).
    n_folds
        Cross-validation folds (at least 2).
    max_cells
        Above this many cells, the score is computed on a random subsample of this size.
    seed
        Random state of the subsample and of the folds.

    Returns
    -------
    numpy.ndarray
        R² per target, shape ``(n_targets,)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> embedding = rng.normal(size=(200, 3))
    >>> targets = np.column_stack([embedding @ [1.0, 2.0, 0.0], rng.normal(size=200)])
    >>> r2 = linear_r2(embedding, targets)
    >>> bool(r2[0] > 0.99 and abs(r2[1]) < 0.1)
    True
    """
    embedding = _check_embedding(embedding)
    values = np.asarray(targets, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != embedding.shape[0] or values.shape[1] == 0:
        raise ValueError(
            f"targets must have one row per row of embedding ({embedding.shape[0]}) and at "
            f"least one column, got shape {np.shape(targets)}"
        )
    if not np.isfinite(values).all():
        raise ValueError("targets contain NaN or infinite values; drop those cells first")
    if not isinstance(n_folds, int) or not 2 <= n_folds <= embedding.shape[0]:
        raise ValueError(
            f"n_folds must be an integer between 2 and the number of cells, got {n_folds!r}"
        )
    rng = np.random.default_rng(seed)
    rows = np.arange(embedding.shape[0])
    if len(rows) > max_cells:
        rows = np.sort(rng.choice(rows, max_cells, replace=False))
    folds = KFold(n_folds, shuffle=True, random_state=seed)
    return np.array(
        [
            cross_val_score(RidgeCV(), embedding[rows], column[rows], cv=folds, scoring="r2").mean()
            for column in values.T
        ]
    )


# ----------------------------------------------------------------------------------------
# batch removal
# ----------------------------------------------------------------------------------------


def _neighbor_batch_fractions(
    embedding: np.ndarray, batches: Sequence | np.ndarray, n_neighbors: int
) -> tuple[np.ndarray, int]:
    """Fractions (cells x batches) of each batch among each cell's kNN, self excluded."""
    embedding = _check_embedding(embedding)
    codes, n_batches = _check_categories(batches, embedding.shape[0], "batches")
    n_obs = embedding.shape[0]
    if n_batches < 2:
        raise ValueError(
            f"batches has {n_batches} distinct value; batch mixing needs at least 2 batches"
        )
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be at least 1, got {n_neighbors}")
    n_neighbors = min(n_neighbors, n_obs - 1)
    # kneighbors() without a query returns each fitted point's neighbors without itself.
    neighbors = (
        NearestNeighbors(n_neighbors=n_neighbors).fit(embedding).kneighbors(return_distance=False)
    )  # (n_obs, n_neighbors)
    flat = (np.arange(n_obs)[:, None] * n_batches + codes[neighbors]).ravel()
    counts = np.bincount(flat, minlength=n_obs * n_batches).reshape(n_obs, n_batches)
    return counts / n_neighbors, n_batches


def batch_entropy(
    embedding: np.ndarray,
    batches: Sequence | np.ndarray,
    *,
    n_neighbors: int = 50,
) -> float:
    """Mean normalized entropy of the batch distribution in each cell's neighborhood.

    For each cell, takes its ``n_neighbors`` nearest other cells (Euclidean,
    :class:`sklearn.neighbors.NearestNeighbors`), computes the Shannon entropy of their
    batch proportions and divides by ``log(n_batches)``; returns the mean over cells.
    1 means every neighborhood holds all batches in equal parts (perfect mixing of
    balanced batches), 0 means every neighborhood is a single batch. With unbalanced
    batches the best reachable value is below 1.

    Parameters
    ----------
    embedding
        Cells x dimensions latent representation.
    batches
        One batch label per row of ``embedding``; at least 2 distinct batches.
    n_neighbors
        Neighborhood size (clipped to ``n_cells - 1``); 50 as in the batch-entropy score
        of Xiong et al. (SCALE / SCALEX) and similar benchmarks.

    Returns
    -------
    float
        Normalized batch entropy in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> embedding = rng.normal(size=(400, 5))
    >>> batches = rng.integers(0, 2, 400)
    >>> batch_entropy(embedding, batches) > 0.9
    True
    """
    fractions, n_batches = _neighbor_batch_fractions(embedding, batches, n_neighbors)
    log_fractions = np.log(fractions, out=np.zeros_like(fractions), where=fractions > 0)
    entropy = -(fractions * log_fractions).sum(axis=1)
    return float(np.mean(entropy) / math.log(n_batches))


def ilisi(
    embedding: np.ndarray,
    batches: Sequence | np.ndarray,
    *,
    n_neighbors: int = 90,
) -> float:
    """Integration LISI from a plain kNN graph, rescaled to [0, 1].

    For each cell, takes its ``n_neighbors`` nearest other cells (Euclidean) and computes
    the inverse Simpson index of their batch proportions, ``1 / sum_b p_b**2`` (the
    effective number of batches around the cell, between 1 and ``n_batches``). The mean
    over cells is rescaled as ``(lisi - 1) / (n_batches - 1)`` as scIB does, so 1 is
    perfect mixing of balanced batches and 0 no mixing.

    Unlike the original LISI (Korsunsky et al., 2019) and scIB's ``ilisi_graph``, neighbors
    get uniform weights instead of perplexity-calibrated Gaussian weights, and the mean,
    not the median, is taken over cells; values are close but not identical.

    Parameters
    ----------
    embedding
        Cells x dimensions latent representation.
    batches
        One batch label per row of ``embedding``; at least 2 distinct batches.
    n_neighbors
        Neighborhood size (clipped to ``n_cells - 1``); 90 = 3 x perplexity 30, the
        neighborhood LISI uses by default.

    Returns
    -------
    float
        Rescaled iLISI in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> embedding = np.concatenate([np.zeros((20, 2)), np.full((20, 2), 100.0)])
    >>> ilisi(embedding, np.repeat(["a", "b"], 20), n_neighbors=10)
    0.0
    """
    fractions, n_batches = _neighbor_batch_fractions(embedding, batches, n_neighbors)
    inverse_simpson = 1.0 / (fractions**2).sum(axis=1)
    return float((np.mean(inverse_simpson) - 1.0) / (n_batches - 1))


def batch_predictability(
    embedding: np.ndarray,
    batches: Sequence | np.ndarray,
    *,
    n_splits: int = 5,
    seed: int = 0,
) -> float:
    """Cross-validated balanced accuracy of predicting the batch from the embedding.

    Fits :class:`sklearn.linear_model.LogisticRegression` (L2, ``C=1``) on the
    standardized embedding and reports the mean balanced accuracy over a shuffled
    ``n_splits``-fold :class:`sklearn.model_selection.StratifiedKFold`. A linear model on
    standardized inputs is cheap, deterministic and reads "batch is linearly decodable";
    a kNN classifier would also catch local, non-linear batch structure.

    Lower is better. Chance level for balanced accuracy is ``1 / n_batches`` whatever the
    batch sizes (:func:`integration_report` reports it as ``batch_predictability_chance``);
    1 means the batch is perfectly recoverable from the embedding.

    Parameters
    ----------
    embedding
        Cells x dimensions latent representation.
    batches
        One batch label per row of ``embedding``; at least 2 distinct batches, each with
        at least ``n_splits`` cells.
    n_splits
        Number of cross-validation folds.
    seed
        Random state of the fold shuffle.

    Returns
    -------
    float
        Mean balanced accuracy in [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> embedding = np.concatenate([rng.normal(0, 1, (50, 3)), rng.normal(10, 1, (50, 3))])
    >>> batch_predictability(embedding, np.repeat(["a", "b"], 50))
    1.0
    """
    embedding = _check_embedding(embedding)
    codes, n_batches = _check_categories(batches, embedding.shape[0], "batches")
    if n_batches < 2:
        raise ValueError(
            f"batches has {n_batches} distinct value; batch prediction needs at least 2 batches"
        )
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    smallest = int(np.bincount(codes).min())
    if smallest < n_splits:
        raise ValueError(
            f"the smallest batch has {smallest} cells, fewer than n_splits={n_splits}; "
            "lower n_splits or drop that batch"
        )
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = cross_val_score(classifier, embedding, codes, cv=folds, scoring="balanced_accuracy")
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------
# modality alignment
# ----------------------------------------------------------------------------------------


def _closer_than_true_match(
    x: np.ndarray, y: np.ndarray, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count, for each cell i, the other cells closer than its true match, both directions.

    Returns ``(x_to_y, y_to_x)``: ``x_to_y[i]`` counts j != i with
    ``|x_i - y_j| < |x_i - y_i|``, ``y_to_x[i]`` counts j != i with
    ``|y_i - x_j| < |y_i - x_i|``. Both come from the same row blocks of the x-to-y
    squared-distance matrix: its rows give x -> y, its columns y -> x.
    """
    n_obs = x.shape[0]
    x_sq = np.einsum("ij,ij->i", x, x)
    y_sq = np.einsum("ij,ij->i", y, y)
    difference = x - y
    true_match = np.einsum("ij,ij->i", difference, difference)  # exact |x_i - y_i|^2
    x_to_y = np.zeros(n_obs, dtype=np.int64)
    y_to_x = np.zeros(n_obs, dtype=np.int64)
    for start in range(0, n_obs, chunk_size):
        stop = min(start + chunk_size, n_obs)
        rows = np.arange(stop - start)
        # squared distances |x_i - y_j|^2 for i in the block, (stop - start, n_obs)
        sq_dist = x[start:stop] @ y.T
        sq_dist *= -2.0
        sq_dist += x_sq[start:stop, None]
        sq_dist += y_sq[None, :]
        sq_dist[rows, rows + start] = np.inf  # a cell's true match is not "closer" than itself
        x_to_y[start:stop] = np.count_nonzero(sq_dist < true_match[start:stop, None], axis=1)
        y_to_x += np.count_nonzero(sq_dist < true_match[None, :], axis=0)
    return x_to_y, y_to_x


def foscttm(
    x: np.ndarray,
    y: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    chunk_size: int | None = None,
) -> float:
    """Fraction Of Samples Closer Than the True Match, averaged over both directions.

    ``x[i]`` and ``y[i]`` are the same cell embedded from two modalities. For each cell
    ``i``, the x -> y fraction is the share of the other ``n - 1`` cells ``j`` with
    ``|x_i - y_j| < |x_i - y_i|`` (Euclidean, strict, so ties do not count); the y -> x
    fraction swaps the roles. The result is the mean over cells and both directions (as
    in SCOT's domain-averaged FOSCTTM): 0 means every cell's true match is its nearest
    neighbor across modalities, about 0.5 means the pairing is random.

    With ``groups`` (e.g. each cell's batch), a cell's true match competes only with the
    cells of its own group, and the fractions are averaged over all cells. Pooled over
    batches, FOSCTTM also scores batch correction: batches left apart add cells that
    count in each fraction's denominator but never compete with the true match (the
    score falls towards 1/n_batches of the within-batch one), mixed batches add cells of
    the same state that do compete.

    Only ``chunk_size`` rows of the cells x cells distance matrix exist at a time (about
    128 MiB by default, whatever the number of cells), and each block serves both
    directions; 50k cells take about half a minute on two CPU cores. Distances use the
    float64 expansion ``|a|^2 + |b|^2 - 2 a.b`` and are compared with the exact true-match
    distance, so only near-ties within rounding (~1e-16 relative) can fall either way.

    Parameters
    ----------
    x
        Cells x dimensions embedding from the first modality.
    y
        Cells x dimensions embedding of the same cells, in the same order, from the
        second modality.
    groups
        Optional group of each cell (length ``n_cells``), e.g. its batch: score within
        each group. Every group needs at least 2 cells.
    chunk_size
        Rows of the distance matrix computed at once. ``None`` picks
        ``2**24 // n_cells`` rows (all rows up to 4096 cells).

    Returns
    -------
    float
        FOSCTTM in [0, 1]; lower is better.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0], [1.0], [3.0]])
    >>> foscttm(x, x)
    0.0
    >>> round(foscttm(x, x[::-1]), 4)  # 2 of 2 other cells closer for cells 0 and 2
    0.6667
    >>> x = np.array([[0.0], [1.0], [3.0], [4.0]])
    >>> round(foscttm(x, x[::-1]), 4)
    0.8333
    >>> foscttm(x, x[::-1], groups=np.array(["a", "a", "b", "b"]))  # 1 of 1 for half the cells
    0.5
    """
    x = _check_embedding(x, "x")
    y = _check_embedding(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"x has shape {x.shape} but y has shape {y.shape}; pass the same cells, in the "
            "same order, embedded in the same number of dimensions"
        )
    n_obs = x.shape[0]
    if n_obs < 2:
        raise ValueError(f"foscttm needs at least 2 paired cells, got {n_obs}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if groups is None:
        members = [np.arange(n_obs)]
    else:
        codes, n_groups = _check_categories(groups, n_obs, "groups", "x")
        names = pd.unique(np.asarray(groups))  # in the order of the codes
        members = [np.flatnonzero(codes == k) for k in range(n_groups)]
        for name, cells in zip(names, members, strict=True):
            if len(cells) < 2:
                raise ValueError(
                    f"foscttm needs at least 2 paired cells in each group; group '{name}' has "
                    f"{len(cells)}. Drop the cells of groups that small, or pass groups=None "
                    "to score all cells together"
                )
    total = 0.0
    for cells in members:
        n = len(cells)
        rows = chunk_size if chunk_size is not None else max(1, _BLOCK_ENTRIES // n)
        x_to_y, y_to_x = _closer_than_true_match(x[cells], y[cells], rows)
        total += (x_to_y.sum() + y_to_x.sum()) / (2.0 * (n - 1))
    return float(total / n_obs)


# ----------------------------------------------------------------------------------------
# imputation
# ----------------------------------------------------------------------------------------


def imputation_auroc(
    truth: np.ndarray | sparse.spmatrix,
    predicted: np.ndarray | sparse.spmatrix,
    *,
    max_entries: int = 50_000_000,
    seed: int = 0,
) -> float:
    """AUROC of predicted probabilities against binarized truth, over all matrix entries.

    ``truth > 0`` is the positive class (e.g. an accessible peak); every (cell, feature)
    entry is one sample for :func:`sklearn.metrics.roc_auc_score`. Above ``max_entries``
    entries, a uniform random subset of ``max_entries`` entries (without replacement) is
    scored instead, so memory stays bounded.

    Parameters
    ----------
    truth
        Cells x features observed values (counts or binary), dense or scipy sparse.
    predicted
        Cells x features predicted probabilities (or any score where higher means more
        likely positive), same shape as ``truth``.
    max_entries
        Largest number of entries scored; 5e7 keeps the sort under a few seconds.
    seed
        Random state for the entry subsample.

    Returns
    -------
    float
        AUROC in [0, 1]: 1 perfect ranking, 0.5 random.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.array([[0, 1], [1, 0]])
    >>> imputation_auroc(truth, np.array([[0.1, 0.9], [0.8, 0.2]]))
    1.0
    """
    truth = _check_matrix(truth, "truth")
    predicted = _check_matrix(predicted, "predicted")
    _check_same_shape(truth, predicted)
    if max_entries < 1:
        raise ValueError(f"max_entries must be positive, got {max_entries}")
    n_rows, n_cols = truth.shape
    n_entries = n_rows * n_cols
    if n_entries > max_entries:
        rng = np.random.default_rng(seed)
        flat_index = np.sort(rng.choice(n_entries, size=max_entries, replace=False))
        rows, cols = np.divmod(flat_index, n_cols)
        truth_values = np.asarray(truth[rows, cols]).ravel() > 0
        predicted_values = np.asarray(predicted[rows, cols], dtype=np.float64).ravel()
    else:
        positive = truth > 0
        truth_values = (positive.toarray() if sparse.issparse(positive) else positive).ravel()
        if sparse.issparse(predicted):
            predicted = predicted.toarray()
        predicted_values = np.asarray(predicted, dtype=np.float64).ravel()
    n_positive = int(truth_values.sum())
    if n_positive == 0 or n_positive == truth_values.size:
        raise ValueError(
            "truth has only one class (all entries zero or all positive) among the scored "
            "entries; AUROC needs both"
        )
    return float(roc_auc_score(truth_values, predicted_values))


def imputation_auroc_per_feature(
    truth: np.ndarray | sparse.spmatrix,
    predicted: np.ndarray | sparse.spmatrix,
) -> np.ndarray:
    """AUROC of predicted probabilities against binarized truth, one per feature (column).

    For each feature, ranks cells by ``predicted`` and scores how well that ranking
    separates cells with ``truth > 0`` from the others (Mann-Whitney U / (n_pos * n_neg),
    ties counted half, equal to :func:`sklearn.metrics.roc_auc_score` per column).
    Computed blockwise on columns, so it is fast for 100k peaks.

    Parameters
    ----------
    truth
        Cells x features observed values, dense or scipy sparse.
    predicted
        Cells x features predicted probabilities, same shape as ``truth``.

    Returns
    -------
    numpy.ndarray
        ``(n_features,)`` float array; NaN for features where ``truth`` has a single class
        (never or always positive). Summarize with :func:`numpy.nanmean`.

    Examples
    --------
    >>> import numpy as np
    >>> truth = np.array([[0, 1, 1], [1, 0, 1]])
    >>> imputation_auroc_per_feature(truth, np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.5]]))
    array([ 1.,  1., nan])
    """
    truth = _check_matrix(truth, "truth")
    predicted = _check_matrix(predicted, "predicted")
    _check_same_shape(truth, predicted)
    if sparse.issparse(truth):
        truth = truth.tocsc()
    if sparse.issparse(predicted):
        predicted = predicted.tocsc()
    n_rows, n_cols = truth.shape
    block_cols = max(1, _BLOCK_ENTRIES // 4 // n_rows)
    auroc = np.full(n_cols, np.nan)
    all_rows = slice(None)
    for start in range(0, n_cols, block_cols):
        cols = slice(start, min(start + block_cols, n_cols))
        positive = _dense_block(truth, all_rows, cols) > 0
        ranks = stats.rankdata(_dense_block(predicted, all_rows, cols), axis=0)
        n_positive = positive.sum(axis=0).astype(np.float64)
        n_negative = n_rows - n_positive
        rank_sum = np.where(positive, ranks, 0.0).sum(axis=0)
        u_statistic = rank_sum - n_positive * (n_positive + 1) / 2
        denominator = n_positive * n_negative
        auroc[cols] = np.divide(
            u_statistic,
            denominator,
            out=np.full_like(u_statistic, np.nan),
            where=denominator > 0,
        )
    return auroc


def _log_normalize_scale(
    matrix: np.ndarray | sparse.spmatrix, log1p: bool, target_sum: float
) -> np.ndarray | None:
    """Per-row factors that bring row totals to ``target_sum`` (0 for empty rows)."""
    if not log1p:
        return None
    totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    return np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)


def _transform_block(
    matrix: np.ndarray | sparse.spmatrix,
    rows: slice,
    cols: slice,
    row_scale: np.ndarray | None,
) -> np.ndarray:
    block = _dense_block(matrix, rows, cols)
    if row_scale is not None:
        block *= row_scale[rows, None]
        np.log1p(block, out=block)
    return block


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise Pearson r of two equally shaped blocks and a mask of defined columns."""
    a_centered = a - a.mean(axis=0)
    b_centered = b - b.mean(axis=0)
    a_norm = np.sqrt((a_centered**2).sum(axis=0))
    b_norm = np.sqrt((b_centered**2).sum(axis=0))
    # A constant column has zero spread up to rounding: compare with its magnitude.
    scale = np.sqrt(a.shape[0])
    defined = (a_norm > 1e-10 * scale * np.abs(a).max(axis=0)) & (
        b_norm > 1e-10 * scale * np.abs(b).max(axis=0)
    )
    covariance = (a_centered * b_centered).sum(axis=0)
    denominator = a_norm * b_norm
    r = np.divide(covariance, denominator, out=np.zeros_like(covariance), where=defined)
    return r, defined


def imputation_pearson(
    truth: np.ndarray | sparse.spmatrix,
    predicted: np.ndarray | sparse.spmatrix,
    *,
    log1p: bool = True,
    axis: Literal["gene", "cell"] = "gene",
    target_sum: float = 1e4,
) -> float:
    """Mean Pearson correlation between observed and imputed expression.

    With ``log1p=True`` (the default), both matrices are brought to the same scale before
    correlating: each cell (row) of ``truth`` and of ``predicted`` is scaled to total
    ``target_sum`` and then ``log1p``-transformed, as ``scanpy.pp.normalize_total`` +
    ``scanpy.pp.log1p`` would. ``predicted`` can therefore be expected counts or per-cell
    normalized expression (rows summing to 1, such as a decoder's ``px_scale``): both give
    the same result. With ``log1p=False`` the values are correlated as given.

    ``axis="gene"``: one correlation per gene (column) across cells, averaged over genes;
    genes constant in ``truth`` or in ``predicted`` (correlation undefined) are skipped.
    ``axis="cell"``: one correlation per cell (row) across genes, averaged over cells,
    skipping constant cells likewise.

    Parameters
    ----------
    truth
        Cells x genes observed counts, dense or scipy sparse.
    predicted
        Cells x genes imputed expression, same shape as ``truth``.
    log1p
        Normalize each row to ``target_sum`` and apply ``log1p`` to both matrices.
    axis
        ``"gene"`` (per gene across cells) or ``"cell"`` (per cell across genes).
    target_sum
        Row total after normalization when ``log1p=True``; 1e4 as is common for RNA.

    Returns
    -------
    float
        Mean Pearson correlation in [-1, 1].

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> counts = rng.poisson(3.0, size=(100, 20))
    >>> round(imputation_pearson(counts, counts / counts.sum(axis=1, keepdims=True)), 6)
    1.0
    """
    truth = _check_matrix(truth, "truth")
    predicted = _check_matrix(predicted, "predicted")
    _check_same_shape(truth, predicted)
    if axis not in ("gene", "cell"):
        raise ValueError(f"axis must be 'gene' or 'cell', got {axis!r}")
    if log1p and target_sum <= 0:
        raise ValueError(f"target_sum must be positive, got {target_sum}")
    if log1p:
        for name, matrix in (("truth", truth), ("predicted", predicted)):
            values = matrix.data if sparse.issparse(matrix) else matrix
            if values.size and values.min() < 0:
                raise ValueError(
                    f"{name} has negative values, which log1p normalization cannot take; "
                    "pass counts / non-negative expression or set log1p=False"
                )
    truth_scale = _log_normalize_scale(truth, log1p, target_sum)
    predicted_scale = _log_normalize_scale(predicted, log1p, target_sum)

    n_rows, n_cols = truth.shape
    total = 0.0
    n_defined = 0
    if axis == "gene":
        if sparse.issparse(truth):
            truth = truth.tocsc()
        if sparse.issparse(predicted):
            predicted = predicted.tocsc()
        step = max(1, _BLOCK_ENTRIES // 8 // n_rows)
        for start in range(0, n_cols, step):
            rows, cols = slice(None), slice(start, min(start + step, n_cols))
            r, defined = _pearson_columns(
                _transform_block(truth, rows, cols, truth_scale),
                _transform_block(predicted, rows, cols, predicted_scale),
            )
            total += float(r[defined].sum())
            n_defined += int(defined.sum())
    else:
        step = max(1, _BLOCK_ENTRIES // 8 // n_cols)
        for start in range(0, n_rows, step):
            rows, cols = slice(start, min(start + step, n_rows)), slice(None)
            r, defined = _pearson_columns(
                _transform_block(truth, rows, cols, truth_scale).T,
                _transform_block(predicted, rows, cols, predicted_scale).T,
            )
            total += float(r[defined].sum())
            n_defined += int(defined.sum())
    if n_defined == 0:
        unit = "gene" if axis == "gene" else "cell"
        raise ValueError(
            f"every {unit} is constant in truth or predicted; Pearson correlation is undefined"
        )
    return total / n_defined


# ----------------------------------------------------------------------------------------
# bundle
# ----------------------------------------------------------------------------------------


def integration_report(
    embedding: np.ndarray,
    labels: Sequence | np.ndarray,
    *,
    batches: Sequence | np.ndarray | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
) -> dict[str, float]:
    """Bio-conservation and (when ``batches`` is given) batch-removal metrics in one dict.

    Keys: ``"ari"``, ``"nmi"``, ``"leiden_resolution"`` (from :func:`leiden_ari_nmi` with
    the default resolution scan), ``"silhouette_label"`` (:func:`silhouette_label`); with
    ``batches`` also ``"batch_entropy"`` (:func:`batch_entropy`), ``"ilisi"``
    (:func:`ilisi`), ``"batch_predictability"`` (:func:`batch_predictability`) and
    ``"batch_predictability_chance"`` (``1 / n_batches``). Each metric uses its own
    documented defaults except ``n_neighbors``, which sets the Leiden kNN graph.

    Parameters
    ----------
    embedding
        Cells x dimensions latent representation.
    labels
        One cell-type label per row.
    batches
        One batch label per row, or ``None`` to skip batch metrics.
    n_neighbors
        Neighbors of the kNN graph used for Leiden clustering.
    seed
        Random state passed to every metric that has one.

    Returns
    -------
    dict
        Metric name to float.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> embedding = np.concatenate([rng.normal(10 * k, 1, (100, 5)) for k in range(2)])
    >>> report = integration_report(
    ...     embedding, np.repeat(["a", "b"], 100), batches=rng.integers(0, 2, 200)
    ... )
    >>> sorted(report)  # doctest: +NORMALIZE_WHITESPACE
    ['ari', 'batch_entropy', 'batch_predictability', 'batch_predictability_chance',
     'ilisi', 'leiden_resolution', 'nmi', 'silhouette_label']
    """
    clustering = leiden_ari_nmi(embedding, labels, n_neighbors=n_neighbors, seed=seed)
    report = {
        "ari": clustering["ari"],
        "nmi": clustering["nmi"],
        "leiden_resolution": clustering["resolution"],
        "silhouette_label": silhouette_label(embedding, labels, seed=seed),
    }
    if batches is not None:
        _, n_batches = _check_categories(batches, np.shape(embedding)[0], "batches")
        report["batch_entropy"] = batch_entropy(embedding, batches)
        report["ilisi"] = ilisi(embedding, batches)
        report["batch_predictability"] = batch_predictability(embedding, batches, seed=seed)
        report["batch_predictability_chance"] = 1.0 / n_batches
    return report
