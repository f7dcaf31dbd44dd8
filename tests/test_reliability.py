"""Reliability: model files that cannot run code, corrupted files met by clear errors,
failures that leave the user's MuData untouched, NaN losses that stop cleanly, and
results that repeat across processes."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors.torch
import torch

import mvae_sc
from mvae_sc import model_files


@pytest.fixture(scope="module")
def small():
    return mvae_sc.datasets.synthetic_multiome(300, n_genes=40, n_peaks=80, n_cell_types=3, seed=0)


def _model(mdata, **kwargs):
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    return mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16, **kwargs)


@pytest.fixture
def saved(small, tmp_path):
    mdata = small.copy()
    model = _model(mdata)
    model.save(tmp_path / "model")
    return mdata, tmp_path / "model"


class _Payload:
    """Unpickling this runs ``os.mkdir(sentinel)``: proof of code execution."""

    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.mkdir, (self.sentinel,))


@pytest.mark.parametrize("planted", ["model.safetensors", "config.json", "model.pt"])
def test_loading_never_unpickles(saved, tmp_path, planted):
    mdata, path = saved
    sentinel = tmp_path / "pwned"
    (path / planted).write_bytes(pickle.dumps(_Payload(sentinel)))
    if planted == "model.pt":  # an extra file is ignored; the model still loads
        mvae_sc.MVAE.load(path, mdata)
    else:
        with pytest.raises(ValueError, match="corrupted or truncated"):
            mvae_sc.MVAE.load(path, mdata)
    assert not sentinel.exists()
    # the payload works: unpickling it would have created the file
    pickle.loads((path / planted).read_bytes())
    assert sentinel.exists()


def test_truncated_weights_are_a_clear_error(saved):
    mdata, path = saved
    weights = path / model_files.WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is corrupted or truncated"):
        mvae_sc.MVAE.load(path, mdata)


def test_truncated_config_is_a_clear_error(saved):
    mdata, path = saved
    config = path / model_files.CONFIG
    config.write_text(config.read_text()[:50])
    with pytest.raises(ValueError, match=r"config.json is corrupted or truncated"):
        mvae_sc.MVAE.load(path, mdata)


def test_newer_format_is_a_clear_error(saved):
    mdata, path = saved
    config = json.loads((path / model_files.CONFIG).read_text())
    config["format_version"] = model_files.FORMAT_VERSION + 1
    (path / model_files.CONFIG).write_text(json.dumps(config))
    newest = model_files.FORMAT_VERSION
    with pytest.raises(
        ValueError, match=rf"format {newest + 1}.*reads format {newest} at most.*Upgrade"
    ):
        mvae_sc.MVAE.load(path, mdata)


def test_missing_files_are_a_clear_error(saved, tmp_path):
    mdata, path = saved
    os.remove(path / model_files.WEIGHTS)
    with pytest.raises(FileNotFoundError, match="not an mvae_sc model directory"):
        mvae_sc.MVAE.load(path, mdata)
    with pytest.raises(FileNotFoundError, match="No model directory"):
        mvae_sc.MVAE.load(tmp_path / "nowhere", mdata)


def _snapshot(mdata):
    return (
        set(mdata.obs.columns),
        set(mdata.obsm.keys()),
        set(mdata.uns.keys()),
        {m: set(mdata.mod[m].obsm.keys()) for m in mdata.mod},
    )


def test_failed_imputation_leaves_mudata_unchanged(small, monkeypatch):
    mdata = small.copy()
    model = _model(mdata)
    before = _snapshot(mdata)
    calls = {"n": 0}
    original = model.module.decoders["atac"].normalized_mean

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second chunk fails, after the first was computed
            raise RuntimeError("simulated failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(model.module.decoders["atac"], "normalized_mean", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        model.impute("atac", batch_size=100)
    assert calls["n"] == 2
    assert _snapshot(mdata) == before


def test_failed_training_leaves_mudata_unchanged(small, monkeypatch):
    mdata = small.copy()
    model = _model(mdata)
    before = _snapshot(mdata)
    registry = mdata.uns["mvae_sc"]["registry"]
    original = model.module.loss
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated failure")
        return original(*args, **kwargs)

    monkeypatch.setattr(model.module, "loss", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        model.train(max_epochs=3, enable_progress_bar=False)
    assert _snapshot(mdata) == before
    assert mdata.uns["mvae_sc"]["registry"] == registry


def test_nan_loss_stops_with_a_clear_message_and_keeps_best_weights(small, monkeypatch):
    mdata = small.copy()
    model = _model(mdata)
    original = model.module.loss
    state = {"poisoned": False}

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        if state["poisoned"] and model.module.training:
            out["loss"] = out["loss"] * float("nan")
        return out

    class Poison(mvae_sc.train.pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            state["poisoned"] = trainer.current_epoch == 3

    best = {}

    class Watch(mvae_sc.train.pl.Callback):
        # runs after the model's own callbacks: the weights validated (the average)
        def on_validation_epoch_start(self, trainer, pl_module):
            best[trainer.current_epoch] = {
                k: v.detach().clone() for k, v in pl_module.module.state_dict().items()
            }

    monkeypatch.setattr(model.module, "loss", poisoned)
    with pytest.raises(
        FloatingPointError, match=r"epoch 3 .*NaN or infinite.*best validation epoch"
    ):
        model.train(max_epochs=10, enable_progress_bar=False, callbacks=[Poison(), Watch()])
    # stopped in epoch 3; the weights are finite and those of a validated epoch
    assert len(model.history) <= 4
    weights = model.module.state_dict()
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    trained = [k for k in weights if k != "latent_calibration"]  # fitted after training
    assert any(all(torch.equal(weights[k], snap[k]) for k in trained) for snap in best.values())
    assert np.isfinite(model.get_latent_representation()).all()


_RUN = textwrap.dedent(
    """
    import sys, mudata, numpy as np, mvae_sc
    mudata.set_options(pull_on_update=False)
    mdata = mvae_sc.datasets.synthetic_multiome(300, n_genes=40, n_peaks=80, seed=0)
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16, seed=3)
    model.train(max_epochs=3, enable_progress_bar=False, seed=3)
    np.save(sys.argv[1], model.get_latent_representation())
    """
)


def test_same_seed_gives_bitwise_identical_latents_across_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    outputs = []
    for run in range(2):
        out = tmp_path / f"z{run}.npy"
        subprocess.run([sys.executable, "-c", _RUN, str(out)], check=True, env=env, timeout=300)
        outputs.append(np.load(out))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    # and a different seed gives a different result (the test can fail)
    assert not np.array_equal(outputs[0], np.zeros_like(outputs[0]))


class _Killed(Exception):
    pass


@pytest.mark.parametrize("balance", [False, True])
def test_killed_training_resumes_to_the_same_result(small, tmp_path, monkeypatch, balance):
    # balanced: the adversary's cell weights are computed at the end of the second
    # epoch (9 steps each, the first to reach 10), before the kill, and must come back
    # from the checkpoint
    monkeypatch.setattr(mvae_sc.model, "BALANCE_MIN_STEPS", 10)

    def run(checkpoint_dir, *, kill_at=None, resume=False):
        mdata = small.copy()
        model = _model(mdata, seed=1)
        callbacks = []
        if kill_at is not None:

            class Kill(mvae_sc.train.pl.Callback):
                def on_train_batch_end(self, trainer, *args):
                    if trainer.current_epoch == kill_at and trainer.global_step % 3 == 1:
                        raise _Killed  # mid-epoch, after some steps of it

            callbacks.append(Kill())
        model.train(
            max_epochs=6,
            batch_size=32,
            enable_progress_bar=False,
            seed=2,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            callbacks=callbacks,
            adversary_balance=balance,
        )
        return model

    straight = run(tmp_path / "straight")
    with pytest.raises(_Killed):
        run(tmp_path / "killed", kill_at=3)
    assert (tmp_path / "killed" / "last.ckpt").is_file()
    resumed = run(tmp_path / "killed", resume=True)
    np.testing.assert_array_equal(
        resumed.get_latent_representation(), straight.get_latent_representation()
    )
    assert len(resumed.history) == len(straight.history) == 6
    if balance:
        assert straight.adversary_weights.std() > 0  # computed, not all 1
        np.testing.assert_array_equal(resumed.adversary_weights, straight.adversary_weights)
    np.testing.assert_allclose(
        resumed.history["train_loss"].to_numpy(), straight.history["train_loss"].to_numpy()
    )
    with pytest.raises(ValueError, match="checkpoint_dir"):
        _model(small.copy()).train(max_epochs=1, resume=True)


def test_interrupted_h5mu_write_leaves_no_file(small, tmp_path, monkeypatch):
    from mvae_sc.cli import write_h5mu_atomic

    target = tmp_path / "out.h5mu"
    target.write_bytes(b"previous result")

    def crash(self, filename, *args, **kwargs):
        with open(filename, "wb") as handle:
            handle.write(b"half")  # a partial file, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(type(small), "write", crash)
    with pytest.raises(OSError, match="disk full"):
        write_h5mu_atomic(small, target)
    assert target.read_bytes() == b"previous result"  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.h5mu"]  # no temporary left


def test_loaded_model_reorders_features(small, tmp_path):
    mdata = small.copy()
    model = _model(mdata)
    z = model.get_latent_representation()
    imputed = model.impute("rna")
    model.save(tmp_path / "m")
    shuffled = mdata.copy()
    rng = np.random.default_rng(0)
    for name in ("rna", "atac"):
        order = rng.permutation(shuffled.mod[name].n_vars)
        shuffled.mod[name] = shuffled.mod[name][:, order].copy()
    loaded = mvae_sc.MVAE.load(tmp_path / "m", shuffled)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, rtol=1e-5, atol=1e-6)
    # imputations come back in the model's feature order
    np.testing.assert_allclose(loaded.impute("rna"), imputed, rtol=1e-5, atol=1e-6)


def test_chunked_inference_equals_unchunked(small):
    mdata = small.copy()
    model = _model(mdata)
    whole = model.impute("atac", batch_size=10_000, key_added="whole")
    chunked = model.impute("atac", batch_size=7, key_added="chunked")
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.get_latent_representation(batch_size=7, key_added="a"),
        model.get_latent_representation(batch_size=10_000, key_added="b"),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("dataset", "modalities"),
    [
        ("multiome", None),  # sparse CSR on disk
        ("patchseq", {"rna": "nb", "ephys": "gaussian"}),  # and a dense h5py dataset
    ],
)
def test_backed_training_equals_in_memory(tmp_path, dataset, modalities):
    import mudata

    if dataset == "multiome":
        source = mvae_sc.datasets.synthetic_multiome(
            300, n_genes=40, n_peaks=80, n_cell_types=3, seed=0
        )
    else:
        source = mvae_sc.datasets.synthetic_patchseq(300, n_genes=40, seed=0)
        del source.mod["morph"]
        source.update()
    source.write(tmp_path / "d.h5mu")
    latents, imputed = [], []
    for backed in (False, True):
        mdata = mudata.read_h5mu(tmp_path / "d.h5mu", backed=backed)
        name = next(iter(modalities or {"rna": "nb"}))
        assert mdata.mod[name].isbacked == backed
        mvae_sc.MVAE.setup_mudata(mdata, modalities=modalities)
        model = mvae_sc.MVAE(mdata, n_latent=4, n_hidden=16, seed=0)
        model.train(max_epochs=3, batch_size=32, enable_progress_bar=False)
        latents.append(model.get_latent_representation())
        imputed.append(model.impute("rna", batch_size=50))
    np.testing.assert_allclose(latents[1], latents[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(imputed[1], imputed[0], rtol=1e-5, atol=1e-6)


def test_format_2_files_load_with_a_discriminator_of_z_alone(small, tmp_path):
    """Before format 3 the discriminator saw z alone and there was no batch prior: such
    files load, the discriminator gives the same logits from z whatever experts it is
    told of, and the prior starts uniform."""
    mdata = small.copy()
    model = _model(mdata)  # two batches: the adversary is on
    model.train(max_epochs=1, enable_progress_bar=False)
    disc = model.module.discriminator
    first = disc[0].blocks[0].linear
    n_latent = model.module.n_latent
    with torch.no_grad():
        first.weight[:, n_latent:] = 0.0  # a discriminator of z alone
    model.save(tmp_path / "old")
    # rewrite the files as format 2 wrote them
    state = safetensors.torch.load_file(tmp_path / "old" / "model.safetensors")
    key = "discriminator.0.blocks.0.linear.weight"
    assert key in state and "batch_prior.weight" in state
    state[key] = state[key][:, :n_latent].contiguous()
    del state["batch_prior.weight"], state["latent_calibration"]
    safetensors.torch.save_file(state, tmp_path / "old" / "model.safetensors")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["format_version"] = 2
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))

    loaded = mvae_sc.MVAE.load(tmp_path / "old", mdata)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(calibrated=False),
        model.get_latent_representation(calibrated=False),
    )
    # no latent maps before format 4: the identity
    identity = torch.eye(n_latent + 1, n_latent).expand(4, -1, -1)
    torch.testing.assert_close(loaded.module.latent_calibration, identity)
    z = torch.randn(5, n_latent)
    for experts in ([1.0, 0.0], [0.0, 1.0], [1.0, 1.0]):
        x = torch.cat([z, torch.tensor([experts]).expand(5, 2)], 1)
        with torch.no_grad():
            torch.testing.assert_close(loaded.module.discriminator(x), disc.eval()(x))
    assert not loaded.module.batch_prior.weight.any()


def test_format_1_files_load_with_one_width_for_every_modality(small, tmp_path):
    """Files written before per-modality widths (format 1) had ``n_hidden`` units in every
    encoder and decoder; they still load, and give the latents they gave then."""
    from mvae_sc.model import _build_module

    mdata = small.copy()
    model = _model(mdata)  # n_hidden=16; 40 genes, 80 peaks
    uniform = {"rna": 128, "atac": 128}  # today's rule would give RNA (40 genes) 80
    assert model.init_params["hidden_widths"] == {"rna": 16, "atac": 16}
    # a format-1 model of 128 units everywhere, written by hand
    old_params = {k: v for k, v in model.init_params.items() if k != "hidden_widths"}
    old_params["n_hidden"] = 128
    model.module = _build_module(model.registry, model.var_names, old_params)
    model._set_data_constants(model._data)
    model.init_params = old_params
    expected = model.get_latent_representation()
    model.save(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["format_version"] = 1
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    loaded = mvae_sc.MVAE.load(tmp_path / "old", mdata)
    assert {n: e.mean.in_features for n, e in loaded.module.encoders.items()} == uniform
    np.testing.assert_allclose(loaded.get_latent_representation(), expected, atol=1e-6)
