"""Property-based checks (hypothesis) over small random MuData: shapes, sparsity, dtypes,
missing-modality patterns and likelihoods. Setup + one epoch + latent + impute either
work, with the documented shapes and no NaN, or fail with a documented error."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mvae_sc

pytestmark = pytest.mark.slow

LIKELIHOODS = ["nb", "zinb", "poisson", "bernoulli", "gaussian"]


@st.composite
def specs(draw):
    """The recipe of a random MuData (built in the test, outside the strategy)."""
    n_mods = draw(st.integers(1, 3))
    mods = [
        {
            "likelihood": draw(st.sampled_from(LIKELIHOODS)),
            "n_features": draw(st.integers(1, 12)),
            "density": draw(st.floats(0.0, 1.0)),
            "dtype": draw(st.sampled_from(["float32", "float64", "int64"])),
            "sparse": draw(st.booleans()),
            "loc": draw(st.floats(-1e3, 1e3)),
            "scale": draw(st.floats(1e-3, 1e3)),
        }
        for _ in range(n_mods)
    ]
    return {
        "n_cells": draw(st.integers(4, 40)),
        "presence": draw(st.floats(0.3, 1.0)),
        "seed": draw(st.integers(0, 2**16)),
        "mods": mods,
    }


def _build(spec):
    rng = np.random.default_rng(spec["seed"])
    n_cells, n_mods = spec["n_cells"], len(spec["mods"])
    presence = rng.random((n_cells, n_mods)) < spec["presence"]
    presence[~presence.any(1), 0] = True  # every cell keeps at least one modality
    names = [f"c{i}" for i in range(n_cells)]
    mods, likelihoods = {}, {}
    for m, mod in enumerate(spec["mods"]):
        cells = np.flatnonzero(presence[:, m])
        if len(cells) == 0:  # a modality nobody has is not registered
            continue
        shape = (len(cells), mod["n_features"])
        if mod["likelihood"] == "gaussian":
            values = rng.normal(mod["loc"], mod["scale"], shape)
            dtype = "float64" if mod["dtype"] == "int64" else mod["dtype"]
        else:
            values = rng.poisson(3.0, shape) * (rng.random(shape) < mod["density"])
            dtype = mod["dtype"]
        values = values.astype(dtype)
        sparse = mod["sparse"] and mod["likelihood"] != "gaussian"
        mods[f"m{m}"] = ad.AnnData(
            sp.csr_matrix(values) if sparse else values,
            obs=pd.DataFrame(index=[names[i] for i in cells]),
            var=pd.DataFrame(index=[f"m{m}_f{j}" for j in range(mod["n_features"])]),
        )
        likelihoods[f"m{m}"] = mod["likelihood"]
    mdata = md.MuData(mods)
    mdata.obs["batch"] = pd.Categorical(rng.choice(["a", "b"], size=mdata.n_obs))
    return mdata, likelihoods


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=specs(), fusion=st.sampled_from(["poe", "moe", "mopoe"]))
def test_setup_train_latent_impute_never_crash(spec, fusion):
    mdata, likelihoods = _build(spec)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. a batch with a single cell
        mvae_sc.MVAE.setup_mudata(mdata, modalities=likelihoods, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=3, n_hidden=8, n_layers=1, fusion=fusion)
    model.train(max_epochs=1, batch_size=8, enable_progress_bar=False, train_size=1.0)
    z = model.get_latent_representation()
    assert z.shape == (mdata.n_obs, 3) and np.isfinite(z).all()
    for name, adata in mdata.mod.items():
        imputed = model.impute(name)
        assert imputed.shape == (mdata.n_obs, adata.n_vars)
        assert np.isfinite(imputed).all()
        if likelihoods[name] == "bernoulli":
            assert ((imputed >= 0) & (imputed <= 1)).all()
        elif likelihoods[name] != "gaussian":
            assert (imputed >= 0).all()
    if len(likelihoods) > 1:
        score = model.consistency()
        n_present = sum((np.asarray(mdata.obsmap[m]) > 0).astype(int) for m in likelihoods)
        assert np.isfinite(score[n_present >= 2]).all() and np.isnan(score[n_present < 2]).all()
