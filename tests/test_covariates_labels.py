"""Covariates and labels at registration, in minibatches and in the model's heads:
what is recorded, what is refused, and that the heads' losses behave."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import mvae_sc
from mvae_sc.data.loader import CellData, densify_batch
from mvae_sc.data.registry import Registry


@pytest.fixture
def mdata():
    data = mvae_sc.datasets.synthetic_multiome(
        120, n_genes=30, n_peaks=60, n_cell_types=3, n_batches=2, seed=0
    )
    data.obs["donor"] = pd.Categorical(np.where(np.arange(data.n_obs) % 3 == 0, "d1", "d2"))
    data.obs["pct_mito"] = np.linspace(0.0, 10.0, data.n_obs)
    return data


def test_covariates_are_registered_and_encoded(mdata):
    mvae_sc.MVAE.setup_mudata(
        mdata,
        batch_key="batch",
        categorical_covariate_keys="donor",
        continuous_covariate_keys=["pct_mito"],
    )
    reg = Registry.from_mudata(mdata)
    assert reg.covariate_categories == {"donor": ["d1", "d2"]}
    assert reg.n_covariates == 2 + 2 + 1
    np.testing.assert_allclose(
        reg.covariate_moments["pct_mito"], [5.0, np.std(mdata.obs["pct_mito"])]
    )
    batch = CellData(mdata, reg).minibatch(np.arange(6))
    cov = batch["covariates"].numpy()
    assert cov.shape == (6, 5)
    # batch one-hot, donor one-hot, standardised pct_mito, in that order
    batch_codes = mdata.obs["batch"].cat.codes.to_numpy()[:6]
    np.testing.assert_array_equal(cov[:, :2].argmax(1), batch_codes)
    np.testing.assert_array_equal(cov[:, 2], (mdata.obs["donor"].to_numpy()[:6] == "d1"))
    expected = (mdata.obs["pct_mito"].to_numpy()[:6] - 5.0) / np.std(mdata.obs["pct_mito"])
    np.testing.assert_allclose(cov[:, 4], expected, rtol=1e-5)
    np.testing.assert_array_equal(batch["batch_index"].numpy(), batch_codes)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"categorical_covariate_keys": "nope"}, ValueError, "not a column"),
        ({"continuous_covariate_keys": "donor"}, TypeError, "must be numeric"),
        ({"batch_key": "batch", "categorical_covariate_keys": "batch"}, ValueError, "both"),
        ({"labels_key": "nope"}, ValueError, "not a column"),
        ({"labels_key": "response", "label_type": "ordinal"}, ValueError, "label_type"),
        ({"labels_key": "donor", "label_type": "continuous"}, TypeError, "must be numeric"),
    ],
)
def test_bad_covariates_and_labels_are_refused_before_writing(mdata, kwargs, error, words):
    with pytest.raises(error, match=words):
        mvae_sc.MVAE.setup_mudata(mdata, **kwargs)
    assert "mvae_sc" not in mdata.uns


def test_missing_covariate_values_are_refused(mdata):
    mdata.obs["pct_mito"] = mdata.obs["pct_mito"].where(np.arange(mdata.n_obs) != 3)
    with pytest.raises(ValueError, match="1 missing values"):
        mvae_sc.MVAE.setup_mudata(mdata, continuous_covariate_keys="pct_mito")
    mdata.obs["donor"] = mdata.obs["donor"].astype(object).where(np.arange(mdata.n_obs) != 3)
    with pytest.raises(ValueError, match="donor.*missing"):
        mvae_sc.MVAE.setup_mudata(mdata, categorical_covariate_keys="donor")


def test_single_class_label_is_refused(mdata):
    mdata.obs["one"] = pd.Categorical(["x"] * mdata.n_obs)
    with pytest.raises(ValueError, match="at least 2"):
        mvae_sc.MVAE.setup_mudata(mdata, labels_key="one")


def test_missing_labels_mean_unlabelled(mdata):
    response = mdata.obs["response"].astype(object)
    response[::2] = np.nan
    mdata.obs["partial"] = response
    mvae_sc.MVAE.setup_mudata(mdata, labels_key="partial")
    reg = Registry.from_mudata(mdata)
    assert reg.label_categories == ["non_responder", "responder"]
    data = CellData(mdata, reg)
    np.testing.assert_array_equal(data.labelled, mdata.obs["partial"].notna().to_numpy())
    codes = (mdata.obs["partial"] == "responder").to_numpy().astype(np.float32)
    np.testing.assert_array_equal(data.labels[data.labelled], codes[data.labelled])
    # continuous: standardised with the labelled cells' moments
    outcome = mdata.obs["outcome"].where(np.arange(mdata.n_obs) % 3 != 0)
    mdata.obs["partial_outcome"] = outcome
    mvae_sc.MVAE.setup_mudata(mdata, labels_key="partial_outcome", label_type="continuous")
    reg = Registry.from_mudata(mdata)
    data = CellData(mdata, reg)
    assert data.labelled.sum() == outcome.notna().sum()
    np.testing.assert_allclose(data.labels[data.labelled].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.labels[data.labelled].std(), 1.0, atol=1e-4)


def test_unseen_category_at_prediction_is_a_clear_error(mdata):
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch", categorical_covariate_keys="donor")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16)
    other = mdata.copy()
    other.obs["donor"] = pd.Categorical(["d3"] * other.n_obs)
    with pytest.raises(ValueError, match=r"donor.*not trained on.*d3"):
        model.get_latent_representation(other)
    assert "X_mvae" not in other.obsm


def test_adversary_is_on_by_default_only_with_batches(mdata):
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    assert mvae_sc.MVAE(mdata).module.discriminator is not None
    assert mvae_sc.MVAE(mdata, adversarial_batch=False).module.discriminator is None
    mvae_sc.MVAE.setup_mudata(mdata)
    model = mvae_sc.MVAE(mdata)
    assert model.module.discriminator is None and not model.init_params["adversarial_batch"]


def test_adversary_needs_two_batches(mdata):
    mvae_sc.MVAE.setup_mudata(mdata)
    with pytest.raises(ValueError, match="batch_key"):
        mvae_sc.MVAE(mdata, adversarial_batch=True)
    with pytest.raises(ValueError, match="adversary_weight"):
        mvae_sc.MVAE(mdata, adversary_weight=-1.0)


def test_adversary_gradients_train_each_side_only(mdata):
    """The discriminator's loss moves only the discriminator and the batch prior; the
    adversary loss moves only the encoders (it pushes the discriminator's guess towards
    the prior)."""
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16, adversarial_batch=True)
    module = model.module
    batch = densify_batch(model._data.minibatch(np.arange(32)))
    out = module.loss(batch, adversary_scale=1.0)
    assert {"discriminator_loss", "adversary_loss", "discriminator_accuracy"} <= set(out)

    def grads(loss):
        module.zero_grad()
        loss.backward(retain_graph=True)

        def total(params):
            return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)

        return (
            total(module.discriminator.parameters()),
            total(module.batch_prior.parameters()),
            total(module.encoders.parameters()),
        )

    disc, prior, enc = grads(out["discriminator_loss"])
    assert disc > 0 and prior > 0 and enc == 0
    disc, prior, enc = grads(out["adversary_loss"])
    assert disc == 0 and prior == 0 and enc > 0
    # validation: scored, not part of the loss
    val = module.loss(batch, adversary_scale=None)
    assert float(val["adversary_loss"]) == 0.0
    # the loss is the negative ELBO plus the alignment penalty (kl_weight 1 here)
    penalty = module.alignment_weight * val["alignment"]
    torch.testing.assert_close(val["loss"], -val["elbo"] + penalty, rtol=1e-5, atol=1e-3)


def test_batch_prior_learns_how_often_each_batch_comes_with_each_set_of_experts(mdata):
    """The adversary's target is the batch frequency among posteriors that fuse the same
    experts. Here the RNA-only cells are one batch and every other cell the other: the
    joint posteriors of paired cells (RNA + ATAC) are all of the second batch, and the
    RNA-alone posteriors are the RNA-only cells' joints and the paired cells' RNA
    experts, weighted as in the loss (a paired cell's three posteriors share its
    weight)."""
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16, adversarial_batch=True)
    module = model.module
    batch = densify_batch(model._data.minibatch(np.arange(mdata.n_obs)))
    rna, atac = batch["mask"]["rna"], batch["mask"]["atac"]
    batch["batch_index"] = (rna & ~atac).long()
    n_paired, n_rna_only = int((rna & atac).sum()), int((rna & ~atac).sum())
    assert n_paired > 10 and n_rna_only > 10
    optimizer = torch.optim.Adam(module.batch_prior.parameters(), lr=0.1)
    for _ in range(300):
        optimizer.zero_grad()
        module.loss(batch, adversary_scale=1.0)["discriminator_loss"].backward()
        optimizer.step()
    prior = torch.softmax(module.batch_prior.weight.detach(), -1)[:, 1]  # code: rna 1, atac 2
    assert float(prior[3]) < 0.02  # RNA + ATAC: paired cells only
    assert float(prior[1]) == pytest.approx(n_rna_only / (n_rna_only + n_paired / 3), abs=0.02)
    assert float(prior[2]) < 0.02  # ATAC alone: ATAC-only cells and paired cells


def test_adversary_target_is_the_batch_prior_not_uniform(mdata):
    """With unequal batches, a discriminator that can say no more than the batches'
    frequencies is where the encoders should want it: the adversary loss is lowest when
    its guess is the prior (a uniform target would push the encoders to separate cells
    of the larger batch until the guess is 50:50 somewhere)."""
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16, adversarial_batch=True)
    module = model.module
    module.eval()  # no dropout in the discriminator
    batch = densify_batch(model._data.minibatch(np.arange(mdata.n_obs)))
    prior = torch.log(torch.tensor([0.8, 0.2]))
    with torch.no_grad():
        module.batch_prior.weight.copy_(prior.expand_as(module.batch_prior.weight))
        module.discriminator[-1].weight.zero_()  # the guess ignores z: logits = bias

    def adversary_loss(guess: torch.Tensor) -> float:
        with torch.no_grad():
            module.discriminator[-1].bias.copy_(guess)
            return float(module.loss(batch, adversary_scale=1.0)["adversary_loss"])

    entropy = float(-(prior.exp() * prior).sum())
    at_prior = adversary_loss(prior)
    assert at_prior == pytest.approx(module.adversary_weight * entropy, rel=1e-4)
    assert at_prior < adversary_loss(torch.zeros(2))  # the uniform guess
    assert at_prior < adversary_loss(torch.log(torch.tensor([0.7, 0.3])))
    assert at_prior < adversary_loss(torch.log(torch.tensor([0.9, 0.1])))


def test_classification_loss_uses_labelled_cells_only(mdata):
    labels = mdata.obs["response"].astype(object)
    labels[10:] = np.nan
    mdata.obs["few"] = labels
    mvae_sc.MVAE.setup_mudata(mdata, labels_key="few")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16, classification_weight=2.0)
    module = model.module.eval()
    batch = densify_batch(model._data.minibatch(np.arange(40)))
    torch.manual_seed(0)
    out = module.loss(batch)
    # flipping the labels of unlabelled cells changes nothing
    batch["label"][10:] = 1 - batch["label"][10:]
    torch.manual_seed(0)
    same = module.loss(batch)
    torch.testing.assert_close(out["classification_loss"], same["classification_loss"])
    # flipping a labelled cell's label does
    batch["label"][:10] = 1 - batch["label"][:10]
    torch.manual_seed(0)
    changed = module.loss(batch)
    assert not torch.isclose(out["classification_loss"], changed["classification_loss"])
    torch.testing.assert_close(
        out["loss"],
        -out["elbo"]
        + 2.0 * out["classification_loss"]
        + module.alignment_weight * out["alignment"],
        rtol=1e-5,
        atol=1e-3,
    )


def test_predict_needs_a_head(mdata):
    mvae_sc.MVAE.setup_mudata(mdata)
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16)
    with pytest.raises(ValueError, match="labels_key"):
        model.predict()


def test_predict_writes_classes_and_probabilities(mdata):
    mvae_sc.MVAE.setup_mudata(mdata, labels_key="response")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, enable_progress_bar=False)
    pred = model.predict()
    assert list(pred.index) == list(mdata.obs_names)
    proba = mdata.obsm["mvae_pred_response_proba"]
    assert list(proba.columns) == ["non_responder", "responder"]
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        mdata.obs["mvae_pred_response"].astype(str),
        proba.to_numpy().argmax(1).choose(proba.columns),
    )
    assert mdata.uns["mvae_pred_response"]["params"]["label_type"] == "categorical"
    assert "train_classification_loss" in model.history


def test_continuous_prediction_is_in_label_units(mdata):
    mdata.obs["score"] = 100.0 + 10.0 * mdata.obs["outcome"]
    mvae_sc.MVAE.setup_mudata(mdata, labels_key="score", label_type="continuous")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, enable_progress_bar=False)
    pred = model.predict(key_added="score_hat")
    assert np.isfinite(pred).all()
    assert 50 < pred.mean() < 150  # in the label's units, not standardised
    assert "score_hat" in mdata.obs


def test_heads_survive_save_and_load(mdata, tmp_path):
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch", labels_key="response")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16, adversarial_batch=True)
    model.train(max_epochs=2, enable_progress_bar=False)
    before = model.predict().to_numpy()
    model.save(tmp_path / "m")
    loaded = mvae_sc.MVAE.load(tmp_path / "m", mdata)
    assert loaded.module.discriminator is not None
    np.testing.assert_array_equal(loaded.predict().to_numpy(), before)
