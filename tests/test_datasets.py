"""Tests for mvae_sc.datasets: the synthetic mosaic simulator, held-out truth, registry."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from mvae_sc.datasets import _registry, available, heldout, hide_modality, load, synthetic_multiome

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = {"n_genes": 200, "n_peaks": 600}


@pytest.fixture(autouse=True)
def _mudata_new_update_behaviour() -> Iterator[None]:
    """Adopt mudata's future `.update()` (no pulling of modality columns) in each test,
    silencing its FutureWarning; restored afterwards."""
    with mudata.set_options(pull_on_update=False):
        yield


@pytest.fixture(scope="module")
def default_features() -> mudata.MuData:
    """Default gene / peak numbers and fractions, 2000 cells."""
    with mudata.set_options(pull_on_update=False):
        return synthetic_multiome(2000, seed=0)


@pytest.fixture(scope="module")
def small() -> mudata.MuData:
    with mudata.set_options(pull_on_update=False):
        return synthetic_multiome(1000, seed=3, **SMALL)


def _presence(mdata: mudata.MuData, mod: str) -> np.ndarray:
    return np.asarray(mdata.obsmap[mod]).ravel() > 0


def _dense(x: Any) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


# --- simulator: structure ---------------------------------------------------------------


def test_shapes_and_mosaic_fractions(small: mudata.MuData) -> None:
    counts = small.obs["modality"].value_counts()
    assert counts["paired"] == 600 and counts["rna_only"] == 200 and counts["atac_only"] == 200
    assert small.n_obs == 1000
    assert small.mod["rna"].shape == (800, SMALL["n_genes"])
    assert small.mod["atac"].shape == (800, SMALL["n_peaks"])
    assert small.obs_names.is_unique and small.obs_names[0] == "cell_00000"
    for column in ("cell_type", "batch", "modality"):
        assert isinstance(small.obs[column].dtype, pd.CategoricalDtype)
    assert small.obsm["true_latent"].shape[0] == small.n_obs
    columns = list(small.uns["synthetic_multiome"]["true_latent_columns"])
    assert len(columns) == small.obsm["true_latent"].shape[1]
    assert columns[0] == "program_0" and columns[-3:] == ["factor_0", "factor_1", "factor_2"]


def test_obsmap_zero_exactly_for_absent_cells(small: mudata.MuData) -> None:
    modality = small.obs["modality"].to_numpy()
    for mod, absent_label in (("rna", "atac_only"), ("atac", "rna_only")):
        present = _presence(small, mod)
        np.testing.assert_array_equal(~present, modality == absent_label)
        rows = np.asarray(small.obsmap[mod]).ravel()[present] - 1
        np.testing.assert_array_equal(small.mod[mod].obs_names[rows], small.obs_names[present])
        # No zero-row padding: the modality holds exactly the present cells.
        assert small.mod[mod].n_obs == present.sum()


def test_cells_are_shuffled_not_sorted_by_presence(small: mudata.MuData) -> None:
    position = np.arange(small.n_obs)
    for label in ("paired", "rna_only", "atac_only"):
        where = position[small.obs["modality"].to_numpy() == label]
        assert where.min() < 50 and where.max() > small.n_obs - 50


def test_rna_counts_are_integer_csr(default_features: mudata.MuData) -> None:
    x = default_features.mod["rna"].X
    assert sp.issparse(x) and x.format == "csr" and x.dtype == np.float32
    assert (x.data >= 0).all()
    np.testing.assert_array_equal(x.data, np.round(x.data))
    library = np.asarray(x.sum(axis=1)).ravel()
    assert library.std() / library.mean() > 0.3
    assert 2000 <= np.median(library) <= 3000
    assert default_features.mod["rna"].var_names.is_unique


def test_atac_is_binary_and_sparse(default_features: mudata.MuData) -> None:
    atac = default_features.mod["atac"]
    x = atac.X
    assert sp.issparse(x) and x.format == "csr" and x.dtype == np.float32
    np.testing.assert_array_equal(np.unique(x.data), [1.0])
    density = x.nnz / (x.shape[0] * x.shape[1])
    assert 0.02 <= density <= 0.06
    per_cell = np.asarray(x.sum(axis=1)).ravel()
    assert per_cell.std() / per_cell.mean() > 0.2  # cell factor varies


def test_peaks_have_genes_and_coordinates(small: mudata.MuData) -> None:
    var = small.mod["atac"].var
    assert var.index.is_unique
    assert set(var["gene"]) <= set(small.mod["rna"].var_names)
    assert set(var["peak_kind"].cat.categories) == {"linked", "type_specific", "constitutive"}
    expected = (
        var["chrom"].astype(str) + ":" + var["start"].astype(str) + "-" + var["end"].astype(str)
    )
    assert (var.index == expected).all()
    assert all(re.fullmatch(r"chr\d+:\d+-\d+", name) for name in var.index[:50])
    assert (var["end"] > var["start"]).all()


def test_every_cell_type_in_every_batch(default_features: mudata.MuData) -> None:
    table = pd.crosstab(default_features.obs["cell_type"], default_features.obs["batch"])
    assert table.shape == (8, 2)
    assert (table.to_numpy() > 0).all()
    # Per-modality obs carries the labels too.
    rna_obs = default_features.mod["rna"].obs
    np.testing.assert_array_equal(
        rna_obs["cell_type"].to_numpy(),
        default_features.obs.loc[rna_obs.index, "cell_type"].to_numpy(),
    )


def test_every_cell_type_in_every_batch_small_data() -> None:
    mdata = synthetic_multiome(60, n_genes=20, n_peaks=40, n_cell_types=10, n_batches=3)
    assert (pd.crosstab(mdata.obs["cell_type"], mdata.obs["batch"]).to_numpy() > 0).all()


# --- simulator: held-out truth, reproducibility -----------------------------------------


def test_heldout_truth_aligns_with_the_simulated_cells(small: mudata.MuData) -> None:
    # The mosaic split is drawn last, so fractions 0 give the same cells fully paired.
    full = synthetic_multiome(1000, seed=3, frac_rna_only=0.0, frac_atac_only=0.0, **SMALL)
    assert full.mod["rna"].n_obs == full.mod["atac"].n_obs == 1000
    assert "heldout" not in full.uns

    for mod, lacking in (("atac", "rna_only"), ("rna", "atac_only")):
        truth = heldout(small, mod)
        expected_cells = small.obs_names[small.obs["modality"] == lacking]
        assert list(truth.obs_names) == list(expected_cells)
        assert list(truth.var_names) == list(small.mod[mod].var_names)
        assert (truth.obs["modality"] == lacking).all()
        np.testing.assert_array_equal(_dense(truth.X), _dense(full.mod[mod][truth.obs_names].X))
        # Measured rows are the same cells too.
        measured = small.mod[mod]
        np.testing.assert_array_equal(
            _dense(measured.X), _dense(full.mod[mod][measured.obs_names].X)
        )


def test_heldout_error_names_what_is_missing(small: mudata.MuData) -> None:
    paired_only = synthetic_multiome(100, frac_rna_only=0.0, frac_atac_only=0.0, **SMALL)
    with pytest.raises(ValueError, match="no held-out truth for modality 'rna'.*hide_modality"):
        heldout(paired_only, "rna")
    with pytest.raises(TypeError, match="must be a MuData"):
        heldout(small.mod["rna"], "rna")  # type: ignore[arg-type]


def test_same_seed_same_data_other_seed_differs() -> None:
    a = synthetic_multiome(300, seed=7, **SMALL)
    b = synthetic_multiome(300, seed=7, **SMALL)
    c = synthetic_multiome(300, seed=8, **SMALL)
    for mod in ("rna", "atac"):
        assert (a.mod[mod].X != b.mod[mod].X).nnz == 0
        assert list(a.mod[mod].obs_names) == list(b.mod[mod].obs_names)
    assert (a.obs["cell_type"] == b.obs["cell_type"]).all()
    assert a.mod["rna"].shape != c.mod["rna"].shape or (a.mod["rna"].X != c.mod["rna"].X).nnz > 0
    assert not np.array_equal(a.obsm["true_latent"], c.obsm["true_latent"])


def _batch_shift_by_type(mdata: mudata.MuData) -> np.ndarray:
    """Per cell type, batch 1's mean log-normalised expression minus batch 0's, per gene:
    (n_types, n_genes)."""
    rna = mdata.mod["rna"]
    x = rna.X.multiply(1e4 / rna.X.sum(axis=1)).log1p().tocsr()
    types, batches = rna.obs["cell_type"].to_numpy(), rna.obs["batch"].to_numpy()
    rows = []
    for t in np.unique(types):
        means = [
            np.asarray(x[(types == t) & (batches == b)].mean(0)).ravel()
            for b in ("batch_0", "batch_1")
        ]
        rows.append(means[1] - means[0])
    return np.array(rows)


def test_batch_type_specific_changes_only_the_batch_shift_of_each_type() -> None:
    """By default a batch shifts a gene alike in every cell type, so the shifts of two
    types correlate; ``batch_type_specific=1`` gives each type its own shift. Nothing
    else changes, and 0 gives the default data exactly."""
    params = {"n_cells": 3000, "n_genes": 300, "n_peaks": 300, "n_cell_types": 3}
    params |= {"batch_effect": 1.0, "frac_rna_only": 0.0, "frac_atac_only": 0.0, "seed": 5}
    default = synthetic_multiome(**params)
    zero = synthetic_multiome(**params, batch_type_specific=0.0)
    own = synthetic_multiome(**params, batch_type_specific=1.0)
    for mod in ("rna", "atac"):
        assert (default.mod[mod].X != zero.mod[mod].X).nnz == 0
    np.testing.assert_array_equal(default.obsm["true_latent"], own.obsm["true_latent"])
    assert (default.obs["cell_type"] == own.obs["cell_type"]).all()
    assert own.uns["synthetic_multiome"]["params"]["batch_type_specific"] == 1.0

    def mean_correlation(mdata: mudata.MuData) -> float:
        corr = np.corrcoef(_batch_shift_by_type(mdata))
        return float(corr[np.triu_indices_from(corr, k=1)].mean())

    assert mean_correlation(default) > 0.6, mean_correlation(default)
    assert abs(mean_correlation(own)) < 0.2, mean_correlation(own)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_cells": 0}, ValueError, "n_cells"),
        ({"batch_type_specific": 1.5}, ValueError, "batch_type_specific"),
        ({"n_cells": 10.5}, TypeError, "n_cells"),
        (
            {"frac_rna_only": 0.7, "frac_atac_only": 0.5},
            ValueError,
            "frac_rna_only \\+ frac_atac_only",
        ),
        ({"frac_rna_only": -0.1}, ValueError, "frac_rna_only"),
        ({"batch_effect": -1.0}, ValueError, "batch_effect"),
        ({"seed": "0"}, TypeError, "seed"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    params = {"n_cells": 50, "n_genes": 20, "n_peaks": 40} | kwargs
    with pytest.raises(error, match=match):
        synthetic_multiome(**params)


def test_update_and_h5mu_round_trip(small: mudata.MuData, tmp_path: Path) -> None:
    mdata = small.copy()
    mdata.update()
    for column in ("cell_type", "batch", "modality"):
        assert column in mdata.obs.columns
        assert (mdata.obs[column] == small.obs[column]).all()

    path = tmp_path / "synthetic.h5mu"
    mdata.write(path)
    back = mudata.read_h5mu(path)
    assert list(back.obs_names) == list(small.obs_names)
    for column in ("cell_type", "batch", "modality"):
        assert isinstance(back.obs[column].dtype, pd.CategoricalDtype)
        assert (back.obs[column] == small.obs[column]).all()
    for mod in ("rna", "atac"):
        np.testing.assert_array_equal(np.asarray(back.obsmap[mod]), np.asarray(small.obsmap[mod]))
        original, restored = heldout(small, mod), heldout(back, mod)
        assert list(restored.obs_names) == list(original.obs_names)
        assert (restored.X != original.X).nnz == 0
    np.testing.assert_array_equal(back.obsm["true_latent"], small.obsm["true_latent"])


# --- hide_modality ----------------------------------------------------------------------


def test_hide_modality_moves_rows_and_keeps_input(small: mudata.MuData) -> None:
    before_rna_x = small.mod["rna"].X.copy()
    before_modality = small.obs["modality"].copy()
    before_heldout = heldout(small, "rna")

    hidden = hide_modality(small, "rna", frac=0.5, seed=1)

    # Input unchanged.
    assert small.mod["rna"].n_obs == 800
    assert (small.mod["rna"].X != before_rna_x).nnz == 0
    assert (small.obs["modality"] == before_modality).all()
    assert heldout(small, "rna").n_obs == before_heldout.n_obs

    # 300 of the 600 paired cells lost RNA.
    newly_hidden = hidden.obs_names[_presence(small, "rna") & ~_presence(hidden, "rna")]
    assert len(newly_hidden) == 300
    assert (small.obs.loc[newly_hidden, "modality"] == "paired").all()
    assert (hidden.obs.loc[newly_hidden, "modality"] == "atac_only").all()
    assert hidden.mod["rna"].n_obs == 500
    assert hidden.mod["atac"].n_obs == small.mod["atac"].n_obs
    np.testing.assert_array_equal(
        ~_presence(hidden, "rna"), (hidden.obs["modality"] == "atac_only").to_numpy()
    )
    assert list(hidden.obs_names) == list(small.obs_names)
    np.testing.assert_array_equal(hidden.obsm["true_latent"], small.obsm["true_latent"])

    # Held-out truth appended after the existing one, rows equal the removed rows.
    truth = heldout(hidden, "rna")
    assert truth.n_obs == before_heldout.n_obs + 300
    assert list(truth.obs_names[: before_heldout.n_obs]) == list(before_heldout.obs_names)
    assert list(truth.obs_names[before_heldout.n_obs :]) == list(newly_hidden)
    np.testing.assert_array_equal(
        _dense(truth[newly_hidden].X), _dense(small.mod["rna"][newly_hidden].X)
    )
    # ATAC held-out truth untouched.
    assert heldout(hidden, "atac").n_obs == heldout(small, "atac").n_obs


def test_hide_modality_on_paired_data_creates_heldout(small: mudata.MuData) -> None:
    paired = synthetic_multiome(200, frac_rna_only=0.0, frac_atac_only=0.0, **SMALL)
    hidden = hide_modality(paired, "atac", frac=0.25, seed=0)
    truth = heldout(hidden, "atac")
    assert truth.n_obs == 50
    assert hidden.mod["atac"].n_obs == 150
    assert (hidden.obs.loc[truth.obs_names, "modality"] == "rna_only").all()
    assert set(hidden.obs["modality"].cat.categories) >= {"paired", "rna_only"}
    np.testing.assert_array_equal(_dense(truth.X), _dense(paired.mod["atac"][truth.obs_names].X))
    # Different seeds hide different cells; the same seed the same ones.
    again = hide_modality(paired, "atac", frac=0.25, seed=0)
    other = hide_modality(paired, "atac", frac=0.25, seed=1)
    assert list(heldout(again, "atac").obs_names) == list(truth.obs_names)
    assert list(heldout(other, "atac").obs_names) != list(truth.obs_names)


def test_hide_modality_errors(small: mudata.MuData) -> None:
    with pytest.raises(ValueError, match="'protein' is not in mdata.mod"):
        hide_modality(small, "protein", frac=0.5)
    with pytest.raises(ValueError, match="`frac` must be in \\[0, 1\\]"):
        hide_modality(small, "rna", frac=1.5)


# --- "not trivial but learnable" --------------------------------------------------------


def test_rna_only_clustering_is_informative_but_imperfect(default_features: mudata.MuData) -> None:
    sc = pytest.importorskip("scanpy")
    from sklearn.metrics import adjusted_rand_score

    rna = default_features.mod["rna"].copy()
    sc.pp.normalize_total(rna)
    sc.pp.log1p(rna)
    sc.pp.pca(rna, n_comps=20, random_state=0)
    sc.pp.neighbors(rna, random_state=0)
    sc.tl.leiden(rna, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    ari = adjusted_rand_score(rna.obs["cell_type"], rna.obs["leiden"])
    assert 0.2 < ari < 0.9, ari


# --- registry -------------------------------------------------------------------------


def _card(**overrides: Any) -> dict[str, Any]:
    card = {
        "name": "tiny_test",
        "title": "Tiny test data",
        "description": "A tiny synthetic file for tests.",
        "source": "https://example.org/tiny",
        "url": "https://example.org/files/tiny.h5mu",
        "filename": "tiny.h5mu",
        "sha256": None,
        "size_bytes": None,
        "license": "CC BY 4.0",
        "format": "h5mu",
        "modalities": ["rna", "atac"],
        "labels": None,
        "citation": "Nobody (2024).",
    }
    card.update(overrides)
    return card


@pytest.fixture
def tiny_h5mu(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "files" / "tiny.h5mu"
    path.parent.mkdir()
    synthetic_multiome(50, n_genes=20, n_peaks=40, seed=0).write(path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _use_registry(monkeypatch: pytest.MonkeyPatch, folder: Path, *cards: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for card in cards:
        (folder / f"{card['name']}.json").write_text(json.dumps(card))
    monkeypatch.setattr(_registry, "_registry_dir", lambda: folder)


def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_registry_cards_are_valid() -> None:
    folder = REPO_ROOT / "data_registry"
    cards = sorted(folder.glob("*.json"))
    assert cards, f"no cards in {folder}"
    for path in cards:
        card = json.loads(path.read_text())
        assert set(_registry.CARD_FIELDS) <= set(card), path.name
        _registry._validate_card(card, path.name)
        assert card["name"] == path.stem
        assert card["url"].startswith("https://") and card["source"].startswith("https://")
        assert card["url"].rsplit("/", 1)[-1] == card["filename"]
        assert card["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", card["sha256"])
        assert card.get("md5") is None or re.fullmatch(r"[0-9a-f]{32}", card["md5"])
    assert "pbmc10k_multiome" in available()
    assert available() == sorted(json.loads(p.read_text())["name"] for p in cards)


def test_invalid_card_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    card = _card()
    del card["license"]
    _use_registry(monkeypatch, tmp_path / "registry", card)
    with pytest.raises(ValueError, match="missing fields \\['license'\\]"):
        available()
    _use_registry(monkeypatch, tmp_path / "registry", _card(sha256="abc"))
    with pytest.raises(ValueError, match="'sha256' must be null or 64"):
        available()


def test_load_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="Unknown data set 'nope'.*pbmc10k_multiome"):
        load("nope")


def test_load_local_path_10x(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _block_network(monkeypatch)
    path = tmp_path / "pbmc_granulocyte_sorted_10k_filtered_feature_bc_matrix.h5"
    rng = np.random.default_rng(0)
    n_genes, n_peaks, n_barcodes = 6, 8, 5
    csc = sp.csc_matrix(rng.poisson(1.0, size=(n_genes + n_peaks, n_barcodes)).astype(np.int32))
    names = [f"G{i}" for i in range(n_genes)] + [
        f"chr1:{i * 1000}-{i * 1000 + 300}" for i in range(n_peaks)
    ]
    with h5py.File(path, "w") as f:
        matrix = f.create_group("matrix")
        matrix["barcodes"] = np.array([f"B{i}-1" for i in range(n_barcodes)], dtype="S")
        matrix["data"], matrix["indices"], matrix["indptr"] = csc.data, csc.indices, csc.indptr
        matrix["shape"] = np.array(csc.shape, dtype=np.int32)
        features = matrix.create_group("features")
        features["id"] = np.array(names, dtype="S")
        features["name"] = np.array(names, dtype="S")
        features["feature_type"] = np.array(
            ["Gene Expression"] * n_genes + ["Peaks"] * n_peaks, dtype="S"
        )
    # The real card has no checksum, so a local file is read unverified.
    mdata = load("pbmc10k_multiome", path=path)
    assert mdata.mod["rna"].shape == (n_barcodes, n_genes)
    assert mdata.mod["atac"].shape == (n_barcodes, n_peaks)


def test_load_local_path_verifies_checksum(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_h5mu: tuple[Path, str]
) -> None:
    path, digest = tiny_h5mu
    _use_registry(
        monkeypatch,
        tmp_path / "registry",
        _card(sha256=digest),
        _card(name="tiny_bad", sha256="0" * 64),
    )
    mdata = load("tiny_test", path=path)
    assert mdata.n_obs == 50 and set(mdata.mod) == {"rna", "atac"}
    with pytest.raises(ValueError, match="Checksum mismatch.*expected sha256 0{64}"):
        load("tiny_bad", path=path)
    with pytest.raises(ValueError, match="Checksum mismatch"):
        load("tiny_test", path=path, known_hash="md5:" + "f" * 32)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("tiny_test", path=tmp_path / "missing.h5mu")


def test_load_uses_cached_file_without_network(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_h5mu: tuple[Path, str]
) -> None:
    path, digest = tiny_h5mu
    _use_registry(monkeypatch, tmp_path / "registry", _card(sha256=digest))
    cache = tmp_path / "cache"
    (cache / "tiny_test").mkdir(parents=True)
    (cache / "tiny_test" / "tiny.h5mu").write_bytes(path.read_bytes())
    _block_network(monkeypatch)
    mdata = load("tiny_test", cache_dir=cache)
    assert mdata.n_obs == 50
    assert heldout(mdata, "atac").n_obs == 10


def test_load_without_checksum_refuses_to_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_h5mu: tuple[Path, str]
) -> None:
    path, digest = tiny_h5mu
    _use_registry(monkeypatch, tmp_path / "registry", _card())
    _block_network(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="has no checksum.*known_hash='sha256:<hex>'"):
        load("tiny_test", cache_dir=cache)
    # With an explicit known_hash the (cached) file is used.
    (cache / "tiny_test").mkdir(parents=True)
    (cache / "tiny_test" / "tiny.h5mu").write_bytes(path.read_bytes())
    assert load("tiny_test", cache_dir=cache, known_hash=f"sha256:{digest}").n_obs == 50
    with pytest.raises(ValueError, match="`known_hash` must look like"):
        load("tiny_test", cache_dir=cache, known_hash="sha256:xyz")


def test_real_cards_without_checksum_refuse_download(monkeypatch: pytest.MonkeyPatch) -> None:
    _block_network(monkeypatch)
    with pytest.raises(ValueError, match="'pbmc10k_multiome' has no checksum"):
        load("pbmc10k_multiome")
