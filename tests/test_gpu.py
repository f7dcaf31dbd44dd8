"""Training and inference on a GPU: data copied to the device or gathered on the host give
the same training, mixed precision works, and GPU results match the CPU's.

These run only where CUDA is available (not in CI; run them on a GPU machine with
``python -m pytest tests/test_gpu.py``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mvae_sc

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"
)


def _model(seed: int = 0) -> mvae_sc.MVAE:
    mdata = mvae_sc.datasets.synthetic_multiome(
        3000, n_genes=800, n_peaks=3000, n_cell_types=6, n_batches=2, seed=seed
    )
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    return mvae_sc.MVAE(mdata, n_latent=10, n_hidden=128, seed=0)


def test_data_on_device_trains_like_host_gathered_minibatches():
    """Same seed, same minibatches: copying the data to the GPU changes only where rows
    are gathered, so the losses agree to float32 round-off."""
    losses = {}
    for on_device in (True, False):
        model = _model()
        model.train(max_epochs=5, data_on_device=on_device, enable_progress_bar=False, seed=0)
        assert model.device.type == "cuda"
        losses[on_device] = model.history["train_loss"].to_numpy()
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-3)


def test_gpu_training_separates_cell_types_and_matches_cpu_inference():
    """bf16 mixed precision on the GPU learns cell types as well as float32 on the CPU
    (15-NN cell-type accuracy; float32 on the CPU measured 0.94, chance is 0.17), and the model
    stays on the GPU for inference, which agrees with the CPU's."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    model = _model(1)
    model.train(max_epochs=60, enable_progress_bar=False, precision="bf16-mixed")
    assert model.device.type == "cuda"
    z = model.get_latent_representation()
    assert np.isfinite(z).all()
    labels = model.mdata.obs["cell_type"].to_numpy()
    knn = cross_val_score(KNeighborsClassifier(15), z, labels, cv=3).mean()
    assert knn > 0.85, knn
    # the same weights on the CPU give the same latents
    model.module.to("cpu")
    np.testing.assert_allclose(model.get_latent_representation(), z, atol=1e-3, rtol=1e-3)


def test_fused_log_probs_give_the_cpu_values_and_gradients_on_the_gpu():
    """The hand-written NB and Bernoulli log-probabilities (the non-zero counts are found
    on the device and kept for the backward pass) give on CUDA the values and gradients
    they give on the CPU, and under CUDA bf16 autocast are still computed in float32."""
    from mvae_sc.nn import likelihoods as lik

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 3000, generator=gen).mul(2)
    library = torch.rand(64, 1, generator=gen).mul(2000).add(200)
    log_theta, region = torch.randn(3000, generator=gen), torch.randn(3000, generator=gen)
    cell = torch.randn(64, 1, generator=gen)
    counts = torch.poisson(torch.rand(64, 3000, generator=gen).pow(4).mul(3), generator=gen)
    binary = (counts > 0).float()
    weights = torch.rand(64, 3000, generator=gen)

    def run(device, autocast=False):
        # copies: the two share no leaf (on the CPU, .to() would return the tensor itself)
        nb_in = [t.to(device, copy=True).requires_grad_() for t in (logits, library, log_theta)]
        bern_in = [t.to(device, copy=True).requires_grad_() for t in (logits, region, cell)]
        if autocast:  # the decoders' logits arrive in bfloat16
            nb_in[0], bern_in[0] = nb_in[0].bfloat16(), bern_in[0].bfloat16()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            nb = lik.NegativeBinomialLogits(*nb_in).log_prob(counts.to(device))
            bern = lik.ScaledBernoulli(*bern_in).log_prob(binary.to(device))
        loss = ((nb + bern) * weights.to(device)).sum()
        grads = torch.autograd.grad(loss, [*nb_in, *bern_in[1:]])
        return [t.detach().float().cpu() for t in (nb, bern, *grads)], (nb.dtype, bern.dtype)

    cpu, _ = run("cpu")
    gpu, _ = run("cuda")
    for got, expected in zip(gpu, cpu, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
    gpu_bf16, dtypes = run("cuda", autocast=True)
    cpu_bf16, _ = run("cpu", autocast=True)
    assert dtypes == (torch.float32, torch.float32)
    # the same bfloat16 logits give the same float32 log-probabilities on either device
    for got, expected in zip(gpu_bf16[:2], cpu_bf16[:2], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)
    assert all(torch.isfinite(g).all() for g in gpu_bf16)
