"""Tests for mvae_sc.metrics against known values on toy embeddings."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from scipy import sparse
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from mvae_sc import metrics

N_PER_BLOB = 100
N_BLOBS = 3


def _blobs(seed: int = 0, n_per_blob: int = N_PER_BLOB, n_dims: int = 10):
    """Three well separated Gaussian blobs and their labels."""
    rng = np.random.default_rng(seed)
    centers = 20.0 * np.eye(N_BLOBS, n_dims)
    embedding = np.concatenate(
        [rng.normal(center, 1.0, (n_per_blob, n_dims)) for center in centers]
    )
    labels = np.repeat(np.array(["t_cell", "b_cell", "monocyte"]), n_per_blob)
    return embedding, labels


@pytest.fixture(scope="module")
def blobs():
    return _blobs()


# ----------------------------------------------------------------------------------------
# bio-conservation
# ----------------------------------------------------------------------------------------


def test_leiden_ari_nmi_perfect_clusters(blobs):
    embedding, labels = blobs
    scores = metrics.leiden_ari_nmi(embedding, labels, seed=0)
    assert set(scores) == {"ari", "nmi", "resolution", "n_clusters"}
    assert scores["ari"] == pytest.approx(1.0, abs=1e-6)
    assert scores["nmi"] == pytest.approx(1.0, abs=1e-6)
    assert scores["resolution"] in metrics.LEIDEN_RESOLUTIONS
    assert scores["n_clusters"] == N_BLOBS


def test_leiden_ari_nmi_shuffled_labels_near_zero(blobs):
    embedding, labels = blobs
    shuffled = np.random.default_rng(1).permutation(labels)
    scores = metrics.leiden_ari_nmi(embedding, shuffled, resolution=0.4, seed=0)
    assert abs(scores["ari"]) < 0.05
    assert scores["nmi"] < 0.05
    assert scores["resolution"] == 0.4


def test_leiden_ari_nmi_selection_and_grid(blobs):
    embedding, labels = blobs
    by_nmi = metrics.leiden_ari_nmi(
        embedding, labels, resolution=[0.2, 2.0], select_by="nmi", seed=0
    )
    assert by_nmi["resolution"] in (0.2, 2.0)
    assert by_nmi["nmi"] > 0.9
    with pytest.raises(ValueError, match="select_by must be 'ari' or 'nmi'"):
        metrics.leiden_ari_nmi(embedding, labels, select_by="f1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resolution must be positive"):
        metrics.leiden_ari_nmi(embedding, labels, resolution=0.0)


def test_leiden_clusters_one_graph_for_several_resolutions(blobs):
    import torch

    embedding, labels = blobs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        coarse, fine = metrics.leiden_clusters(embedding, [0.2, 5.0], seed=0)
        # scanpy's neighbour search resets OpenMP's threads; torch's are given back
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert coarse.dtype == np.int64 and coarse.shape == (len(labels),)
    assert coarse.min() == 0 and len(np.unique(coarse)) == coarse.max() + 1
    # what leiden_ari_nmi scores at that resolution
    scores = metrics.leiden_ari_nmi(embedding, labels, resolution=0.2, seed=0)
    assert adjusted_rand_score(labels, coarse) == pytest.approx(scores["ari"])
    assert len(np.unique(fine)) > len(np.unique(coarse)) == scores["n_clusters"]
    (single,) = metrics.leiden_clusters(embedding, 0.2, seed=0)
    np.testing.assert_array_equal(single, coarse)
    np.testing.assert_array_equal(metrics.leiden_clusters(embedding[:2])[0], [0, 0])
    with pytest.raises(ValueError, match="resolution must be positive"):
        metrics.leiden_clusters(embedding, [1.0, -1.0])
    bad = embedding.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values in 1 rows"):
        metrics.leiden_clusters(bad)


@pytest.mark.slow
def test_leiden_ari_nmi_above_scanpys_approximate_neighbour_threshold():
    # From 8,192 cells scanpy's neighbours go through pynndescent; with pynndescent 0.7
    # (excluded in pyproject.toml) scanpy 1.11 fails there with an AttributeError, so
    # every clustering metric and sc.pp.neighbors on an atlas would break.
    embedding, labels = _blobs(n_per_blob=2800)
    assert len(labels) >= 8192
    scores = metrics.leiden_ari_nmi(embedding, labels, resolution=0.2, seed=0)
    assert scores["ari"] > 0.99, scores


def test_silhouette_label_separated_and_shuffled(blobs):
    embedding, labels = blobs
    assert metrics.silhouette_label(embedding, labels) > 0.9
    shuffled = np.random.default_rng(2).permutation(labels)
    assert metrics.silhouette_label(embedding, shuffled) == pytest.approx(0.5, abs=0.05)


def test_silhouette_label_subsample_close_to_full(blobs):
    embedding, labels = blobs
    full = metrics.silhouette_label(embedding, labels)
    subsampled = metrics.silhouette_label(embedding, labels, max_cells=150, seed=3)
    assert subsampled == pytest.approx(full, abs=0.02)
    with pytest.raises(ValueError, match="distinct labels"):
        metrics.silhouette_label(embedding, np.zeros(len(labels)))


def test_knn_label_agreement_same_types_and_chance():
    reference, reference_labels = _blobs(seed=0)
    query, query_labels = _blobs(seed=1)
    assert metrics.knn_label_agreement(query, query_labels, reference, reference_labels) == 1.0
    # random labels on uniform 2-D points (no hub cells shared by many queries)
    rng = np.random.default_rng(4)
    agreement = metrics.knn_label_agreement(
        rng.random((600, 2)),
        rng.integers(0, 3, 600),
        rng.random((1500, 2)),
        rng.integers(0, 3, 1500),
    )
    assert agreement == pytest.approx(1.0 / 3, abs=0.07)


def test_knn_label_agreement_unknown_labels_and_mixed_types():
    reference = np.array([[0.0], [0.1], [5.0], [5.1]])
    query = np.array([[0.05], [5.05]])
    # a query label absent from the reference never agrees
    agreement = metrics.knn_label_agreement(
        query, ["a", "z"], reference, ["a", "a", "b", "b"], n_neighbors=2
    )
    assert agreement == 0.5
    # integer and string labels compare by value, without numpy comparison warnings
    assert (
        metrics.knn_label_agreement(query, [1, 2], reference, ["1", "1", "2", "2"], n_neighbors=2)
        == 0.0
    )
    assert metrics.knn_label_agreement(query, [1, 2], reference, [1, 1, 2, 2], n_neighbors=2) == 1.0
    # a 2-2 tie among 4 neighbors goes to the label seen first in the reference
    assert metrics.knn_label_agreement(query, [1, 1], reference, [1, 1, 2, 2], n_neighbors=4) == 1.0
    with pytest.raises(ValueError, match="query_embedding has 1 dimensions but reference"):
        metrics.knn_label_agreement(query, [1, 2], np.zeros((4, 2)), [1, 1, 2, 2])


def test_linear_r2_known_values_and_cell_order():
    rng = np.random.default_rng(21)
    n_cells = 2000
    embedding = rng.normal(size=(n_cells, 4))
    signal = embedding @ np.array([1.0, -0.5, 0.0, 0.0])  # variance 1.25
    noise = rng.normal(0.0, np.sqrt(1.25), n_cells)  # as much noise as signal
    targets = np.column_stack([signal, signal + noise, rng.normal(size=n_cells)])
    r2 = metrics.linear_r2(embedding, targets)
    assert r2.shape == (3,)
    assert r2[0] > 0.999  # a linear function of the embedding
    # the share of the noisy target's variance that is signal, on these cells (about 0.5)
    explained = 1.0 - noise.var() / targets[:, 1].var()
    assert abs(r2[1] - explained) < 0.03, (r2, explained)
    assert abs(r2[2]) < 0.02, r2  # unrelated
    # cells stored sorted by the target (as they are when stored by sample) must not turn
    # the folds into ranges of the target: the score does not depend on the cell order
    order = np.argsort(targets[:, 1])
    sorted_r2 = metrics.linear_r2(embedding[order], targets[order, 1])
    assert abs(sorted_r2[0] - r2[1]) < 0.05, (sorted_r2, r2)
    # a 1-D target and a subsample
    assert metrics.linear_r2(embedding, signal, max_cells=200)[0] > 0.999
    with pytest.raises(ValueError, match="one row per row of embedding"):
        metrics.linear_r2(embedding, signal[:-1])
    with pytest.raises(ValueError, match="targets contain NaN"):
        metrics.linear_r2(embedding, np.where(np.arange(n_cells) == 3, np.nan, signal))
    with pytest.raises(ValueError, match="n_folds must be"):
        metrics.linear_r2(embedding, signal, n_folds=1)


# ----------------------------------------------------------------------------------------
# batch removal
# ----------------------------------------------------------------------------------------


def test_batch_metrics_perfect_mixing():
    embedding, _ = _blobs(seed=5, n_per_blob=200)
    batches = np.random.default_rng(6).choice(["batch_a", "batch_b"], size=len(embedding))
    assert metrics.batch_entropy(embedding, batches) > 0.95
    assert metrics.ilisi(embedding, batches) > 0.9
    accuracy = metrics.batch_predictability(embedding, batches, seed=0)
    assert accuracy == pytest.approx(0.5, abs=0.08)


def test_batch_metrics_no_mixing(blobs):
    embedding, labels = blobs
    batches = labels  # each batch is its own blob
    assert metrics.batch_entropy(embedding, batches) == pytest.approx(0.0, abs=1e-12)
    assert metrics.ilisi(embedding, batches) == pytest.approx(0.0, abs=1e-12)
    assert metrics.batch_predictability(embedding, batches, seed=0) == 1.0


def test_batch_metrics_need_two_batches_and_enough_cells(blobs):
    embedding, _ = blobs
    with pytest.raises(ValueError, match="at least 2 batches"):
        metrics.batch_entropy(embedding, np.zeros(len(embedding)))
    with pytest.raises(ValueError, match="at least 2 batches"):
        metrics.ilisi(embedding, np.zeros(len(embedding)))
    batches = np.zeros(len(embedding), dtype=int)
    batches[:3] = 1
    with pytest.raises(ValueError, match="smallest batch has 3 cells, fewer than n_splits=5"):
        metrics.batch_predictability(embedding, batches)


def test_ilisi_small_neighborhood_is_clipped():
    embedding = np.array([[0.0], [0.1], [0.2], [0.3]])
    # 2 batches alternating; neighbors clipped to the 3 other cells
    score = metrics.ilisi(embedding, [0, 1, 0, 1], n_neighbors=90)
    # each cell sees 1 of its own batch and 2 of the other: 1 / (1/9 + 4/9) = 1.8
    assert score == pytest.approx(0.8)


# ----------------------------------------------------------------------------------------
# modality alignment
# ----------------------------------------------------------------------------------------


def test_foscttm_identical_is_zero(blobs):
    embedding, _ = blobs
    assert metrics.foscttm(embedding, embedding) == 0.0


def test_foscttm_independent_is_half():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 8))
    y = rng.normal(size=(600, 8))
    assert metrics.foscttm(x, y) == pytest.approx(0.5, abs=0.03)


def test_foscttm_hand_computed():
    x = np.array([[0.0], [1.0], [2.0], [10.0]])
    y = np.array([[1.5], [0.0], [2.0], [10.0]])
    # x -> y: cells 0 and 1 each have 1 of 3 closer (the tie at cell 1 does not count),
    #         cells 2 and 3 none: (1/3 + 1/3) / 4 = 1/6
    # y -> x: cell 0 has 2 of 3 closer, cell 1 has 1 of 3: (2/3 + 1/3) / 4 = 1/4
    assert metrics.foscttm(x, y) == pytest.approx((1 / 6 + 1 / 4) / 2, abs=1e-12)


def test_foscttm_chunked_matches_unchunked(monkeypatch):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(300, 6))
    y = x + rng.normal(scale=0.8, size=x.shape)
    whole = metrics.foscttm(x, y, chunk_size=300)
    assert metrics.foscttm(x, y, chunk_size=7) == pytest.approx(whole, abs=1e-12)
    # the default block size chunks once the matrix is larger than the block
    monkeypatch.setattr(metrics, "_BLOCK_ENTRIES", 300 * 11)
    assert metrics.foscttm(x, y) == pytest.approx(whole, abs=1e-12)
    assert 0.0 < whole < 0.5


def test_foscttm_groups_score_each_cell_within_its_group():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(250, 5))
    y = x + rng.normal(scale=0.7, size=x.shape)
    groups = np.where(rng.random(250) < 0.3, "b", "a")
    a, b = groups == "a", groups == "b"
    expected = (metrics.foscttm(x[a], y[a]) * a.sum() + metrics.foscttm(x[b], y[b]) * b.sum()) / 250
    assert metrics.foscttm(x, y, groups=groups) == pytest.approx(expected, abs=1e-12)
    assert metrics.foscttm(x, y, groups=np.zeros(250)) == pytest.approx(metrics.foscttm(x, y))


def test_foscttm_groups_leave_out_other_batches_twins():
    # two batches measure the same 200 states; batch correction puts each cell's twin of
    # the other batch next to it, which pooled FOSCTTM counts as a miss
    rng = np.random.default_rng(10)
    states = rng.normal(size=(200, 4))
    x = np.vstack([states, states + rng.normal(scale=0.001, size=states.shape)])
    y = x + rng.normal(scale=0.05, size=x.shape)
    batches = np.repeat(["b0", "b1"], 200)
    # the twin is closer than the true match about half the time: 1 / (2 * 399)
    assert metrics.foscttm(x, y) > 0.001
    assert metrics.foscttm(x, y, groups=batches) < 0.0002


def test_foscttm_groups_need_two_cells_each():
    x = np.zeros((5, 2))
    with pytest.raises(ValueError, match="group 'c' has 1. Drop the cells"):
        metrics.foscttm(x, x, groups=["a", "a", "b", "b", "c"])
    with pytest.raises(ValueError, match="groups contains 1 missing"):
        metrics.foscttm(x, x, groups=["a", "a", "b", "b", None])
    with pytest.raises(ValueError, match="x has 5 rows but groups has 4"):
        metrics.foscttm(x, x, groups=["a", "a", "b", "b"])


def test_foscttm_shape_mismatch():
    with pytest.raises(ValueError, match=r"x has shape \(3, 2\) but y has shape \(4, 2\)"):
        metrics.foscttm(np.zeros((3, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 2 paired cells"):
        metrics.foscttm(np.zeros((1, 2)), np.zeros((1, 2)))


# ----------------------------------------------------------------------------------------
# imputation
# ----------------------------------------------------------------------------------------


def _binary_truth(seed: int = 9, shape=(200, 50)) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < 0.2).astype(np.float32)


def test_imputation_auroc_perfect_random_and_sparse():
    truth = _binary_truth()
    rng = np.random.default_rng(10)
    perfect = 0.1 + 0.8 * truth + 0.05 * rng.random(truth.shape)
    assert metrics.imputation_auroc(truth, perfect) == 1.0
    random = rng.random(truth.shape)
    assert metrics.imputation_auroc(truth, random) == pytest.approx(0.5, abs=0.03)
    counts = truth * 3.0  # counts > 0 are the positive class
    dense = metrics.imputation_auroc(counts, random)
    assert metrics.imputation_auroc(sparse.csr_matrix(counts), random) == dense
    assert metrics.imputation_auroc(sparse.csc_matrix(counts), random) == dense


def test_imputation_auroc_subsampled_entries():
    truth = _binary_truth()
    predicted = 0.3 * truth + np.random.default_rng(11).random(truth.shape)
    full = metrics.imputation_auroc(truth, predicted)
    subsampled = metrics.imputation_auroc(truth, predicted, max_entries=5_000, seed=1)
    subsampled_sparse = metrics.imputation_auroc(
        sparse.csr_matrix(truth), predicted, max_entries=5_000, seed=1
    )
    assert subsampled == subsampled_sparse
    assert subsampled == pytest.approx(full, abs=0.03)


def test_imputation_auroc_errors():
    truth = _binary_truth()
    with pytest.raises(ValueError, match="only one class"):
        metrics.imputation_auroc(np.zeros((5, 4)), np.random.default_rng(0).random((5, 4)))
    with pytest.raises(ValueError, match=r"truth has shape \(200, 50\) but predicted"):
        metrics.imputation_auroc(truth, truth[:, :10])
    predicted = np.full(truth.shape, 0.5)
    predicted[3, 4] = np.nan
    with pytest.raises(ValueError, match="predicted contains NaN"):
        metrics.imputation_auroc(truth, predicted)


def test_imputation_auroc_per_feature_matches_sklearn():
    truth = _binary_truth(shape=(120, 12))
    truth[:, 0] = 0.0  # never positive -> NaN
    rng = np.random.default_rng(12)
    predicted = np.round(0.3 * truth + rng.random(truth.shape), 1)  # rounding makes ties
    per_feature = metrics.imputation_auroc_per_feature(sparse.csr_matrix(truth), predicted)
    assert per_feature.shape == (12,)
    assert np.isnan(per_feature[0])
    expected = [roc_auc_score(truth[:, j], predicted[:, j]) for j in range(1, 12)]
    np.testing.assert_allclose(per_feature[1:], expected, rtol=1e-12)


def _counts(seed: int = 13, shape=(150, 40)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 2.0, size=shape)
    return rng.poisson(rates).astype(np.float64)


@pytest.mark.parametrize("axis", ["gene", "cell"])
def test_imputation_pearson_perfect(axis):
    counts = _counts()
    frequencies = counts / counts.sum(axis=1, keepdims=True)
    assert metrics.imputation_pearson(counts, counts, axis=axis) == pytest.approx(1.0)
    # per-cell normalized predictions give the same result as expected counts
    assert metrics.imputation_pearson(counts, frequencies, axis=axis) == pytest.approx(1.0)
    assert metrics.imputation_pearson(
        sparse.csr_matrix(counts), frequencies, axis=axis
    ) == pytest.approx(1.0)
    assert metrics.imputation_pearson(counts, counts, axis=axis, log1p=False) == pytest.approx(1.0)


@pytest.mark.parametrize("axis", ["gene", "cell"])
def test_imputation_pearson_independent_near_zero(axis):
    truth = _counts(seed=14, shape=(400, 200))
    predicted = _counts(seed=15, shape=(400, 200))
    assert abs(metrics.imputation_pearson(truth, predicted, axis=axis)) < 0.05


def test_imputation_pearson_sparse_and_constant_genes():
    counts = _counts(seed=16)
    predicted = counts + np.random.default_rng(17).poisson(2.0, size=counts.shape)
    counts[:, 5] = 0.0  # a gene never observed: skipped, no warning
    dense = metrics.imputation_pearson(counts, predicted)
    assert metrics.imputation_pearson(sparse.csr_matrix(counts), predicted) == pytest.approx(dense)
    assert 0.5 < dense < 1.0


def test_imputation_pearson_errors():
    counts = _counts()
    with pytest.raises(ValueError, match="every gene is constant"):
        metrics.imputation_pearson(np.ones((10, 3)), np.ones((10, 3)), log1p=False)
    with pytest.raises(ValueError, match="axis must be 'gene' or 'cell'"):
        metrics.imputation_pearson(counts, counts, axis="feature")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="predicted has negative values"):
        metrics.imputation_pearson(counts, counts - 1.0)
    truth = sparse.csr_matrix(counts)
    truth.data[0] = np.nan
    with pytest.raises(ValueError, match="truth contains NaN"):
        metrics.imputation_pearson(truth, counts)


def test_imputation_pearson_leaves_inputs_unchanged():
    counts = _counts()
    predicted = counts + 1.0
    counts_before, predicted_before = counts.copy(), predicted.copy()
    metrics.imputation_pearson(counts, predicted)
    metrics.imputation_pearson(counts, predicted, axis="cell")
    np.testing.assert_array_equal(counts, counts_before)
    np.testing.assert_array_equal(predicted, predicted_before)


# ----------------------------------------------------------------------------------------
# input validation and bundle
# ----------------------------------------------------------------------------------------


def test_length_mismatch_nan_and_empty_errors(blobs):
    embedding, labels = blobs
    with pytest.raises(ValueError, match="embedding has 300 rows but labels has 299 entries"):
        metrics.silhouette_label(embedding, labels[:-1])
    with pytest.raises(ValueError, match="embedding has 300 rows but batches has 10 entries"):
        metrics.batch_entropy(embedding, labels[:10])
    with_nan = embedding.copy()
    with_nan[7, 2] = np.nan
    with pytest.raises(ValueError, match="embedding contains NaN or infinite values in 1 rows"):
        metrics.leiden_ari_nmi(with_nan, labels)
    missing = labels.astype(object)
    missing[0] = None
    with pytest.raises(ValueError, match="labels contains 1 missing values"):
        metrics.silhouette_label(embedding, missing)
    with pytest.raises(ValueError, match="embedding is empty"):
        metrics.ilisi(np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match="must be 2-D"):
        metrics.batch_predictability(np.zeros(10), np.arange(10) % 2)


def test_integration_report_keys(blobs):
    embedding, labels = blobs
    report = metrics.integration_report(embedding, labels, seed=0)
    assert set(report) == {"ari", "nmi", "leiden_resolution", "silhouette_label"}
    batches = np.random.default_rng(18).integers(0, 3, len(labels))
    report = metrics.integration_report(embedding, labels, batches=batches, seed=0)
    assert report["ari"] == pytest.approx(1.0)
    assert report["batch_predictability_chance"] == pytest.approx(1 / 3)
    assert report["batch_entropy"] > 0.9
    assert all(isinstance(value, float) for value in report.values())


@pytest.mark.parametrize("name", metrics.__all__)
def test_public_api_conventions(name):
    function = getattr(metrics, name)
    if not callable(function):
        return
    assert "Examples\n    --------" in (function.__doc__ or "")
    for parameter in inspect.signature(function).parameters.values():
        if parameter.default is not inspect.Parameter.empty:
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, parameter.name
