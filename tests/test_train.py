"""The training plan's helpers: balancing the batch adversary by shared cell types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvae_sc.train import batch_balance_weights, ema_update


def _clusters(types_per_batch: list[list[int]], n: int = 150, seed: int = 0, related: float = 0.0):
    """Gaussian blobs in 20 dimensions, one per cell type, with a small shift per batch.
    Type 0 is ``related`` to type 3: its centre is that share of type 3's plus the
    rest of its own. Returns (z, batch codes, type codes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(6, 20))
    centres[0] = related * centres[3] + (1 - related) * centres[0]
    z, batch, kind = [], [], []
    for b, types in enumerate(types_per_batch):
        shift = rng.normal(0, 0.5, size=20)
        for t in types:
            z.append(centres[t] + shift + rng.normal(0, 0.6, size=(n, 20)))
            batch += [b] * n
            kind += [t] * n
    return np.vstack(z).astype(np.float32), np.array(batch), np.array(kind)


def test_types_that_other_batches_lack_weigh_nothing():
    # types 0 and 4 are in one batch only; 1, 2, 3 in both
    z, batch, kind = _clusters([[0, 1, 2, 3], [1, 2, 3, 4]])
    w = batch_balance_weights(z, batch)
    assert w.dtype == np.float32 and w.shape == (len(z),)
    only = np.isin(kind, [0, 4])
    assert w[only].max() < 0.05, w[only].max()
    assert w[~only].min() > 0.9, w[~only].min()
    for b in (0, 1):  # scaled to a mean of 1 in each batch
        assert w[batch == b].mean() == pytest.approx(1.0, abs=1e-5)


def test_a_type_is_not_matched_to_a_related_type_of_another_batch():
    # type 0 is only in batch 0, and close to type 3 (cosine about 0.9), which both have
    z, batch, kind = _clusters([[0, 1, 2, 3], [1, 2, 3]], related=0.6)
    a, b = z[kind == 0].mean(0), z[kind == 3].mean(0)
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cosine > 0.8, cosine
    w = batch_balance_weights(z, batch)
    assert w[kind == 0].max() < 0.05, w[kind == 0].max()
    assert w[kind != 0].min() > 0.9, w[kind != 0].min()


def test_with_every_type_in_every_batch_all_cells_count_alike():
    z, batch, _ = _clusters([[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]])
    w = batch_balance_weights(z, batch)
    assert w.min() > 0.8 and w.max() < 1.2, (w.min(), w.max())


def test_three_batches_weigh_a_type_by_the_share_of_batches_holding_it():
    # type 4 is in batches 0 and 1, not in 2: it matches half of the other batches
    z, batch, kind = _clusters([[0, 1, 4], [0, 1, 4], [0, 1]])
    w = batch_balance_weights(z, batch)
    in_0 = batch == 0
    ratio = w[in_0 & (kind == 4)].mean() / w[in_0 & (kind == 0)].mean()
    assert 0.4 < ratio < 0.6, ratio


def test_large_batches_are_clustered_on_a_sample():
    z, batch, kind = _clusters([[0, 1, 2], [1, 2, 3]], n=400)
    full = batch_balance_weights(z, batch)
    sampled = batch_balance_weights(z, batch, max_cells=300)
    only = np.isin(kind, [0, 3])
    assert sampled[only].max() < 0.05 and sampled[~only].min() > 0.9
    np.testing.assert_allclose(sampled, full, atol=0.1)


def test_one_batch_gives_ones_and_mismatched_input_is_refused():
    z, batch, _ = _clusters([[0, 1]])
    np.testing.assert_array_equal(batch_balance_weights(z, batch), 1.0)
    with pytest.raises(ValueError, match="batch_index has 3"):
        batch_balance_weights(z, batch[:3])


def test_torch_keeps_its_thread_count():
    """scanpy's neighbours reset the OpenMP threads torch shares; training must not see
    that (a run's floating-point results depend on its thread count)."""
    z, batch, _ = _clusters([[0, 1], [0, 1]])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch_balance_weights(z, batch)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ema_update_forgets_its_start_and_then_decays_at_the_given_rate():
    update = ema_update(0.9)
    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    expected = 0.0
    for n in range(1, 40):  # AveragedModel copies at its first update, then calls with n >= 1
        update(averaged, current, torch.tensor(n))
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d)
        torch.testing.assert_close(averaged[0], torch.full((3,), expected))
    counts = [torch.zeros(2, dtype=torch.long)]
    update(counts, [torch.tensor([3, 4])], torch.tensor(5))  # integer buffers follow
    assert counts[0].tolist() == [3, 4]


def test_trained_weights_are_the_moving_average_of_the_steps():
    import mvae_sc

    mdata = mvae_sc.datasets.synthetic_multiome(200, n_genes=30, n_peaks=50, n_cell_types=3)
    mvae_sc.MVAE.setup_mudata(mdata)
    steps = []

    class Record(mvae_sc.train.pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            steps.append({k: v.detach().clone() for k, v in pl_module.module.state_dict().items()})

    def trained(weight_averaging):
        steps.clear()
        model = mvae_sc.MVAE(mdata, n_latent=3, n_hidden=8, seed=0)
        model.train(
            max_epochs=3,
            batch_size=32,
            train_size=1.0,
            weight_averaging=weight_averaging,
            enable_progress_bar=False,
            callbacks=[Record()],
        )
        return model.module.state_dict()

    final = trained(0.8)
    assert len(steps) > 10
    expected = dict(steps[0])
    for n, step in enumerate(steps[1:], start=1):
        d = min(0.8, (1 + n) / (10 + n))
        expected = {k: d * v + (1 - d) * step[k] for k, v in expected.items()}
    # the latent maps are fitted after training, from the final weights
    weights = [k for k, v in final.items() if v.is_floating_point() and k != "latent_calibration"]
    for k in weights:
        torch.testing.assert_close(final[k], expected[k])
    # not the last step's weights
    assert any(not torch.allclose(final[k], steps[-1][k]) for k in weights)
    last = trained(None)
    for k in weights:
        torch.testing.assert_close(last[k], steps[-1][k])
    with pytest.raises(ValueError, match="weight_averaging must be a decay in"):
        mvae_sc.MVAE(mdata, n_latent=3).train(max_epochs=1, weight_averaging=1.0)
