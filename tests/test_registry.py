"""setup_mudata: what it records, what it refuses, and that it changes nothing else."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mvae_sc
from mvae_sc.data.registry import Registry


def _mudata(n_rna: int = 8, n_atac: int = 8, n_shared: int = 4, *, seed: int = 0) -> md.MuData:
    """Cells 0..n_rna-1 have RNA; cells n_rna-n_shared.. have ATAC (n_shared paired)."""
    rng = np.random.default_rng(seed)
    names = [f"cell{i}" for i in range(n_rna + n_atac - n_shared)]
    rna = ad.AnnData(
        sp.csr_matrix(rng.poisson(2.0, (n_rna, 5)).astype(np.float32)),
        obs=pd.DataFrame(index=names[:n_rna]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(5)]),
    )
    atac = ad.AnnData(
        sp.csr_matrix((rng.random((n_atac, 7)) < 0.3).astype(np.float32)),
        obs=pd.DataFrame(index=names[n_rna - n_shared :]),
        var=pd.DataFrame(index=[f"p{i}" for i in range(7)]),
    )
    mdata = md.MuData({"rna": rna, "atac": atac})
    mdata.obs["batch"] = pd.Categorical(["a", "b"] * (mdata.n_obs // 2) + ["a"] * (mdata.n_obs % 2))
    return mdata


def test_defaults_register_rna_nb_and_atac_bernoulli():
    mdata = _mudata()
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    registry = Registry.from_mudata(mdata)
    assert {n: s.likelihood for n, s in registry.modalities.items()} == {
        "rna": "nb",
        "atac": "bernoulli",
    }
    assert registry.batch_categories == ["a", "b"]


def test_setup_writes_only_uns_entry():
    mdata = _mudata()
    before_obs, before_uns = mdata.obs.copy(), set(mdata.uns)
    before_x = {k: mdata.mod[k].X.copy() for k in mdata.mod}
    mvae_sc.MVAE.setup_mudata(
        mdata, modalities={"rna": "zinb", "atac": "bernoulli"}, batch_key="batch"
    )
    assert set(mdata.uns) - before_uns == {"mvae_sc"}
    pd.testing.assert_frame_equal(mdata.obs, before_obs)
    for k, x in before_x.items():
        assert (mdata.mod[k].X != x).nnz == 0


def test_registry_survives_h5mu_round_trip(tmp_path):
    mdata = _mudata()
    mvae_sc.MVAE.setup_mudata(mdata, rna_layer=None, batch_key="batch")
    mdata.write(tmp_path / "x.h5mu")
    again = md.read_h5mu(tmp_path / "x.h5mu")
    assert Registry.from_mudata(again) == Registry.from_mudata(mdata)


def test_layer_is_used_and_must_exist():
    mdata = _mudata()
    mdata.mod["rna"].layers["counts"] = mdata.mod["rna"].X.copy()
    mvae_sc.MVAE.setup_mudata(mdata, rna_layer="counts")
    assert Registry.from_mudata(mdata).modalities["rna"].layer == "counts"
    with pytest.raises(
        ValueError, match=r"Layer 'raw' does not exist in modality 'atac'.*counts|Layer 'raw'"
    ):
        mvae_sc.MVAE.setup_mudata(mdata, atac_layer="raw")


def test_non_integer_counts_are_refused():
    mdata = _mudata()
    mdata.mod["rna"].X = mdata.mod["rna"].X * 0.5 + sp.csr_matrix(
        np.full((8, 5), 0.25, dtype=np.float32)
    )
    with pytest.raises(ValueError, match=r"modality 'rna'.*non-integer.*raw counts"):
        mvae_sc.MVAE.setup_mudata(mdata)
    assert "mvae_sc" not in mdata.uns


def test_negative_counts_are_refused():
    mdata = _mudata()
    x = mdata.mod["rna"].X.toarray()
    x[0, 0] = -1
    mdata.mod["rna"].X = x
    with pytest.raises(ValueError, match=r"modality 'rna'.*negative"):
        mvae_sc.MVAE.setup_mudata(mdata)


def test_nan_is_refused_and_named():
    mdata = _mudata()
    x = mdata.mod["atac"].X.toarray()
    x[1, 2] = np.nan
    mdata.mod["atac"].X = x
    with pytest.raises(ValueError, match=r"modality 'atac'.*1 NaN or infinite"):
        mvae_sc.MVAE.setup_mudata(mdata)


def test_unknown_modality_and_likelihood():
    mdata = _mudata()
    with pytest.raises(ValueError, match=r"Modality 'prot' is not in this MuData"):
        mvae_sc.MVAE.setup_mudata(mdata, modalities={"rna": "nb", "prot": "nb"})
    with pytest.raises(ValueError, match=r"Likelihood 'negbin'.*not known"):
        mvae_sc.MVAE.setup_mudata(mdata, modalities={"rna": "negbin"})


def test_cells_without_any_registered_modality_are_refused():
    mdata = _mudata()
    with pytest.raises(
        ValueError, match=r"4 cells have none of the registered modalities \['rna'\]"
    ):
        mvae_sc.MVAE.setup_mudata(mdata, modalities={"rna": "nb"})


def test_batch_key_must_exist_and_be_complete():
    mdata = _mudata()
    with pytest.raises(ValueError, match=r"batch_key 'sample' is not a column of mdata.obs"):
        mvae_sc.MVAE.setup_mudata(mdata, batch_key="sample")
    mdata.obs["sample"] = pd.Series(
        ["x"] * (mdata.n_obs - 1) + [None], index=mdata.obs_names, dtype=object
    )
    with pytest.raises(ValueError, match=r"batch_key 'sample' has 1 missing"):
        mvae_sc.MVAE.setup_mudata(mdata, batch_key="sample")


def test_single_cell_batch_warns():
    mdata = _mudata()
    mdata.obs["sample"] = ["x"] * (mdata.n_obs - 1) + ["lonely"]
    with pytest.warns(UserWarning, match=r"categories \['lonely'\] have a single cell"):
        mvae_sc.MVAE.setup_mudata(mdata, batch_key="sample")


def test_not_a_mudata():
    with pytest.raises(TypeError, match=r"Expected a mudata.MuData, got AnnData"):
        mvae_sc.MVAE.setup_mudata(ad.AnnData(np.ones((2, 2))))


def test_model_requires_registration():
    with pytest.raises(ValueError, match=r"has not been registered.*setup_mudata"):
        mvae_sc.MVAE(_mudata())


def test_duplicated_names_are_refused():
    mdata = _mudata()
    mdata.mod["rna"].var_names = ["g0", "g0", "g1", "g2", "g3"]
    with pytest.raises(ValueError, match=r"'rna' var has duplicated names.*var_names_make_unique"):
        mvae_sc.MVAE.setup_mudata(mdata)


def test_modality_without_features_is_refused():
    mdata = _mudata()
    mdata.mod["atac"] = mdata.mod["atac"][:, []].copy()
    with pytest.raises(ValueError, match=r"'atac' has 8 cells and 0 features"):
        mvae_sc.MVAE.setup_mudata(mdata)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float32, np.float64])
@pytest.mark.parametrize("sparse", [True, False])
def test_dense_sparse_int_float_are_accepted(dtype, sparse):
    mdata = _mudata()
    for name in ("rna", "atac"):
        x = mdata.mod[name].X.toarray().astype(dtype)
        mdata.mod[name].X = sp.csr_matrix(x) if sparse else x
    mvae_sc.MVAE.setup_mudata(mdata)
    model = mvae_sc.MVAE(mdata, n_latent=2, n_hidden=4)
    assert np.isfinite(model.get_latent_representation()).all()
