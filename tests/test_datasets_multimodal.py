"""Tests for mvae_sc.datasets._multimodal: synthetic Patch-seq and wearable-sensor sets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from mvae_sc.datasets import heldout, synthetic_patchseq, synthetic_sensors

PATCHSEQ_MODS = ("rna", "ephys", "morph")
SMALL_PATCHSEQ = {"n_genes": 300, "n_ephys": 26, "n_morph": 15}


@pytest.fixture(autouse=True)
def _single_blas_thread() -> Iterator[None]:
    """One BLAS thread: the small classifiers here are many times slower when BLAS
    threads compete with other processes for the cores."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def patchseq() -> mudata.MuData:
    """Default fractions and feature numbers, 2000 cells."""
    return synthetic_patchseq(2000, seed=0)


@pytest.fixture(scope="module")
def sensors() -> mudata.MuData:
    return synthetic_sensors(2000, seed=0)


def _presence(mdata: mudata.MuData, mod: str) -> np.ndarray:
    return np.asarray(mdata.obsmap[mod]).ravel() > 0


def _dense(x: Any) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _cv_correct(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-observation correctness of a 5-fold cross-validated linear discriminant."""
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    predicted = cross_val_predict(LinearDiscriminantAnalysis(), x, labels, cv=folds)
    return predicted == labels


# --- Patch-seq: structure -----------------------------------------------------------------


def test_patchseq_shapes_presence_and_labels(patchseq: mudata.MuData) -> None:
    assert patchseq.n_obs == 2000 and list(patchseq.mod) == list(PATCHSEQ_MODS)
    assert patchseq.obs_names.is_unique
    # Exact presence rates: 5% lack RNA, 10% ephys, 30% morph.
    assert patchseq.mod["rna"].shape == (1900, 1000)
    assert patchseq.mod["ephys"].shape == (1800, 40)
    assert patchseq.mod["morph"].shape == (1400, 20)
    presence = np.column_stack([_presence(patchseq, m) for m in PATCHSEQ_MODS])
    assert presence.any(axis=1).all(), "a cell has no modality"
    for j, mod in enumerate(PATCHSEQ_MODS):
        assert patchseq.mod[mod].n_obs == presence[:, j].sum()  # no zero-row padding
        assert patchseq.mod[mod].var_names.is_unique
        rows = np.asarray(patchseq.obsmap[mod]).ravel()[presence[:, j]] - 1
        np.testing.assert_array_equal(
            patchseq.mod[mod].obs_names[rows], patchseq.obs_names[presence[:, j]]
        )
    expected = [
        "+".join(m for m, p in zip(PATCHSEQ_MODS, row, strict=True) if p) for row in presence
    ]
    np.testing.assert_array_equal(patchseq.obs["modality"].astype(str).to_numpy(), expected)
    counts = patchseq.obs["modality"].value_counts()
    assert counts["rna+ephys+morph"] > 1000
    # Single-modality cells of every kind exist with the default fractions.
    assert counts["rna"] > 0 and counts["ephys"] > 0 and counts["morph"] > 0
    for column in ("cell_type", "modality"):
        assert isinstance(patchseq.obs[column].dtype, pd.CategoricalDtype)
    assert set(patchseq.obs["cell_type"]) == {f"type_{t}" for t in range(6)}
    assert patchseq.obsm["true_latent"].shape[0] == 2000
    assert patchseq.obsm["true_latent"].dtype == np.float32
    assert patchseq.uns["synthetic_patchseq"]["params"]["frac_missing_morph"] == 0.3


def test_patchseq_maximal_missingness_keeps_one_modality() -> None:
    mdata = synthetic_patchseq(
        300,
        **SMALL_PATCHSEQ,
        frac_missing_rna=0.7,
        frac_missing_ephys=0.7,
        frac_missing_morph=0.6,
        seed=1,
    )
    presence = np.column_stack([_presence(mdata, m) for m in PATCHSEQ_MODS])
    np.testing.assert_array_equal(presence.sum(axis=0), [90, 90, 120])
    np.testing.assert_array_equal(presence.sum(axis=1), 1)  # fractions sum to 2
    with pytest.raises(ValueError, match="must be <= 2 so that every cell keeps a modality"):
        synthetic_patchseq(
            100, frac_missing_rna=0.8, frac_missing_ephys=0.8, frac_missing_morph=0.8
        )


def test_patchseq_rna_integer_counts_at_low_depth(patchseq: mudata.MuData) -> None:
    x = patchseq.mod["rna"].X
    assert sp.isspmatrix_csr(x) and x.dtype == np.float32
    np.testing.assert_array_equal(x.data, np.round(x.data))
    assert (x.data > 0).all()
    library = np.asarray(x.sum(axis=1)).ravel()
    assert 1000 < np.median(library) < 5000
    assert 0.8 < np.mean((library > 1000) & (library < 5500))


def test_patchseq_continuous_features_on_physical_scales(patchseq: mudata.MuData) -> None:
    for mod in ("ephys", "morph"):
        x = patchseq.mod[mod].X
        assert isinstance(x, np.ndarray) and x.dtype == np.float32
        assert np.isfinite(x).all()
    ephys = patchseq.mod["ephys"]
    sd = ephys.X.std(axis=0)
    mean = ephys.X.mean(axis=0)
    assert sd.max() / sd.min() > 100  # e.g. input resistance (MOhm) vs AP width (ms)
    assert np.abs(mean).max() > 50 and not np.allclose(sd, 1.0, atol=0.3)
    assert {"mV", "Hz", "ms"} <= set(ephys.var["unit"])
    resting = ephys.X[:, ephys.var_names.get_loc("resting_potential")]
    assert -80 < resting.mean() < -60
    positive = (ephys.var["transform"] == "log").to_numpy()
    assert (ephys.X[:, positive] > 0).all()


def test_patchseq_cell_type_signal_in_each_modality(patchseq: mudata.MuData) -> None:
    majority = patchseq.obs["cell_type"].value_counts(normalize=True).max()
    accuracy = {}
    for mod in PATCHSEQ_MODS:
        adata = patchseq.mod[mod]
        x = _dense(adata.X)
        if mod == "rna":
            x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
            x = PCA(20, svd_solver="randomized", random_state=0).fit_transform(x)
        accuracy[mod] = _cv_correct(x, adata.obs["cell_type"].to_numpy()).mean()
    # Measured (seed 0): rna 0.998, ephys 0.90, morph 0.47; majority class 0.24.
    assert accuracy["rna"] > 0.9
    assert accuracy["ephys"] > 0.75
    assert accuracy["morph"] > majority + 0.1
    assert accuracy["morph"] < accuracy["ephys"] - 0.2


def test_patchseq_heldout_truth_aligned(patchseq: mudata.MuData) -> None:
    complete = synthetic_patchseq(
        2000, frac_missing_rna=0.0, frac_missing_ephys=0.0, frac_missing_morph=0.0, seed=0
    )
    assert "heldout" not in complete.uns
    for mod in PATCHSEQ_MODS:
        entry = patchseq.uns["heldout"][mod]
        absent = ~_presence(patchseq, mod)
        np.testing.assert_array_equal(entry["obs_names"], patchseq.obs_names[absent])
        assert sp.issparse(entry["X"]) == (mod == "rna")
        # Missingness is drawn after the measurements: same seed, same values.
        full = _dense(complete.mod[mod][entry["obs_names"]].X)
        np.testing.assert_array_equal(_dense(entry["X"]), full)
        kept = patchseq.mod[mod]
        np.testing.assert_array_equal(_dense(kept.X), _dense(complete.mod[mod][kept.obs_names].X))
        truth = heldout(patchseq, mod)
        assert truth.shape == (absent.sum(), patchseq.mod[mod].n_vars)
        np.testing.assert_array_equal(truth.obs_names, patchseq.obs_names[absent])
        np.testing.assert_allclose(_dense(truth.X), full)
        assert not truth.obs["modality"].astype(str).str.contains(mod).any()


# --- sensors --------------------------------------------------------------------------------


def test_sensors_shapes_and_columns(sensors: mudata.MuData) -> None:
    assert list(sensors.mod) == ["accel", "ppg"]
    assert sensors.mod["accel"].shape == (2000, 30) and sensors.mod["ppg"].shape == (2000, 20)
    for mod in ("accel", "ppg"):
        x = sensors.mod[mod].X
        assert isinstance(x, np.ndarray) and x.dtype == np.float32
        assert sensors.mod[mod].var_names.is_unique
    assert isinstance(sensors.obs["state"].dtype, pd.CategoricalDtype)
    assert set(sensors.obs["state"]) == {f"state_{s}" for s in range(5)}
    noise = sensors.obs["ppg_noise"].to_numpy()
    assert noise.min() >= 0.1 and noise.max() <= 3.0 and noise.std() > 0.7  # ~uniform
    assert (sensors.obs["modality"] == "accel+ppg").all()
    assert "heldout" not in sensors.uns
    assert sensors.obsm["true_latent"].shape == (2000, 3)
    assert sensors.uns["synthetic_sensors"]["params"]["noise_range"] == [0.1, 3.0]


def test_sensors_ppg_information_falls_with_noise(sensors: mudata.MuData) -> None:
    state = sensors.obs["state"].to_numpy()
    noise = sensors.obs["ppg_noise"].to_numpy()
    low, high = noise < 0.8, noise > 2.3
    ppg = _cv_correct(sensors.mod["ppg"].X, state)
    accel = _cv_correct(sensors.mod["accel"].X, state)
    # Measured (seed 0): PPG 0.74 (low noise) vs 0.32 (high noise), chance 0.2; accel
    # 0.70 vs 0.68.
    assert ppg[low].mean() > ppg[high].mean() + 0.25
    assert ppg[high].mean() < 0.45
    assert abs(accel[low].mean() - accel[high].mean()) < 0.08
    assert accel.mean() > 0.55
    # accel correctness is unrelated to the PPG noise.
    assert abs(np.corrcoef(accel, noise)[0, 1]) < 0.1


def test_sensors_missing_windows_and_heldout() -> None:
    mdata = synthetic_sensors(400, frac_missing=0.1, seed=2)
    complete = synthetic_sensors(400, frac_missing=0.0, seed=2)
    has_accel, has_ppg = _presence(mdata, "accel"), _presence(mdata, "ppg")
    assert (has_accel | has_ppg).all()
    assert (~has_accel).sum() == 20 and (~has_ppg).sum() == 20
    counts = mdata.obs["modality"].value_counts()
    assert counts["accel+ppg"] == 360 and counts["accel"] == 20 and counts["ppg"] == 20
    for mod, present in (("accel", has_accel), ("ppg", has_ppg)):
        entry = mdata.uns["heldout"][mod]
        np.testing.assert_array_equal(entry["obs_names"], mdata.obs_names[~present])
        np.testing.assert_array_equal(entry["X"], complete.mod[mod][entry["obs_names"]].X)
        assert heldout(mdata, mod).shape == ((~present).sum(), mdata.mod[mod].n_vars)
    # ppg_noise is known for every window, also those without PPG.
    assert mdata.mod["accel"].obs["ppg_noise"].notna().all()


def test_sensors_validation() -> None:
    with pytest.raises(ValueError, match="low <= high"):
        synthetic_sensors(10, noise_range=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"`noise_range` must be a \(low, high\) pair"):
        synthetic_sensors(10, noise_range=(1.0, 2.0, 3.0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`noise_range\[0\]` must be >= 0"):
        synthetic_sensors(10, noise_range=(-1.0, 2.0))
    with pytest.raises(ValueError, match="`frac_missing` must be in"):
        synthetic_sensors(10, frac_missing=1.5)
    with pytest.raises(TypeError, match="`n_states` must be an integer"):
        synthetic_sensors(10, n_states=2.5)  # type: ignore[arg-type]


# --- both -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "kwargs"),
    [
        (synthetic_patchseq, SMALL_PATCHSEQ),
        (synthetic_sensors, {"frac_missing": 0.2}),
    ],
)
def test_deterministic_by_seed(make: Any, kwargs: dict[str, Any]) -> None:
    first, second, other = (make(300, seed=s, **kwargs) for s in (5, 5, 6))
    for mod in first.mod:
        np.testing.assert_array_equal(_dense(first.mod[mod].X), _dense(second.mod[mod].X))
        assert not np.array_equal(_dense(first.mod[mod].X)[:10], _dense(other.mod[mod].X)[:10])
    pd.testing.assert_frame_equal(first.obs, second.obs)
    np.testing.assert_array_equal(first.obsm["true_latent"], second.obsm["true_latent"])


@pytest.mark.parametrize(
    ("make", "kwargs"),
    [
        (synthetic_patchseq, SMALL_PATCHSEQ),
        (synthetic_sensors, {"frac_missing": 0.2}),
    ],
)
def test_h5mu_round_trip(make: Any, kwargs: dict[str, Any], tmp_path: Path) -> None:
    mdata = make(300, seed=0, **kwargs)
    path = tmp_path / "synthetic.h5mu"
    mdata.write(path)
    back = mudata.read_h5mu(path)
    assert list(back.mod) == list(mdata.mod)
    pd.testing.assert_frame_equal(back.obs, mdata.obs)
    for mod in mdata.mod:
        np.testing.assert_array_equal(_dense(back.mod[mod].X), _dense(mdata.mod[mod].X))
        np.testing.assert_array_equal(np.asarray(back.obsmap[mod]), np.asarray(mdata.obsmap[mod]))
        pd.testing.assert_frame_equal(back.mod[mod].var, mdata.mod[mod].var)
        truth, truth_back = heldout(mdata, mod), heldout(back, mod)
        np.testing.assert_array_equal(truth_back.obs_names, truth.obs_names)
        np.testing.assert_array_equal(_dense(truth_back.X), _dense(truth.X))
    name = make.__name__
    assert back.uns[name]["params"]["seed"] == 0
    np.testing.assert_array_equal(back.obsm["true_latent"], mdata.obsm["true_latent"])
