"""MVAEModule: the ELBO's pieces, masking, and fusion choices on tiny inputs."""

from __future__ import annotations

import pytest
import torch

from mvae_sc.nn import fusion as fu
from mvae_sc.nn.module import MVAEModule, mixture_kl_sample, symmetric_kl

B = 6


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    rna = torch.poisson(torch.full((B, 12), 3.0), generator=g)
    atac = (torch.rand(B, 20, generator=g) < 0.2).float()
    mask = {
        "rna": torch.tensor([True, True, True, True, False, False]),
        "atac": torch.tensor([True, True, False, False, True, True]),
    }
    x = {
        "rna": torch.where(mask["rna"][:, None], rna, 0.0),
        "atac": torch.where(mask["atac"][:, None], atac, 0.0),
    }
    return {
        "x": x,
        "mask": mask,
        "library": {k: v.sum(1, keepdim=True) for k, v in x.items()},
        "covariates": torch.nn.functional.one_hot(torch.arange(B) % 2, 2).float(),
    }


def _module(fusion: str = "poe") -> MVAEModule:
    torch.manual_seed(0)
    return MVAEModule(
        {"rna": (12, "nb"), "atac": (20, "bernoulli")},
        n_latent=3,
        n_hidden=8,
        n_covariates=2,
        fusion=fusion,
    ).eval()


@pytest.mark.parametrize("fusion", ["poe", "moe", "mopoe"])
def test_loss_is_finite_and_differentiable(fusion):
    module = _module(fusion).train()
    out = module.loss(_batch(), kl_weight=0.5)
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("stratified", [True, False])
def test_values_behind_the_mask_change_nothing(stratified):
    module = _module()
    batch, garbage = _batch(), _batch()
    for name in ("rna", "atac"):
        absent = ~batch["mask"][name]
        garbage["x"][name][absent] = 1e6  # would blow up encoders and likelihoods if used
    torch.manual_seed(1)
    reference = module.loss(batch, stratified=stratified)
    torch.manual_seed(1)
    got = module.loss(garbage, stratified=stratified)
    for key in reference:
        torch.testing.assert_close(got[key], reference[key])


def _cells(batch: dict, rows: torch.Tensor) -> dict:
    """The minibatch restricted to ``rows``."""
    return {
        k: {m: t[rows] for m, t in v.items()} if isinstance(v, dict) else v[rows]
        for k, v in batch.items()
    }


def test_experts_and_decoders_see_only_cells_with_their_modality():
    module = _module()
    batch = _batch()
    seen = {}
    for kind, parts in (("encoder", module.encoders), ("decoder", module.decoders)):
        for name, part in parts.items():
            part.register_forward_hook(
                lambda _m, args, _out, key=(kind, name): seen.setdefault(key, []).append(
                    len(args[0])
                )
            )
    mu, _logvar, _presence = module.encode(batch)
    z = torch.randn(B, 3, generator=torch.Generator().manual_seed(2))
    recon = module.reconstruction(z, batch)
    for name in ("rna", "atac"):
        n_present = int(batch["mask"][name].sum())
        assert seen[("encoder", name)] == [n_present] and seen[("decoder", name)] == [n_present]
    for m, name in enumerate(("rna", "atac")):
        present = batch["mask"][name]
        assert (mu[m][~present] == 0).all() and (recon[name][~present] == 0).all()
        # every cell gets what it gets on its own
        for row in present.nonzero(as_tuple=True)[0]:
            alone = _cells(batch, row[None])
            torch.testing.assert_close(module.encode(alone)[0][m, 0], mu[m, row])
            torch.testing.assert_close(
                module.reconstruction(z[row[None]], alone)[name][0], recon[name][row]
            )


@pytest.mark.parametrize(("fusion", "stratified"), [("poe", False), ("poe", True), ("mopoe", True)])
def test_terms_that_weigh_nothing_for_a_cell_do_not_decode_it(fusion, stratified, monkeypatch):
    """A single-expert term weighs 0 for an unpaired cell (and a MoPoE subset for a cell
    that lacks a member): those rows are not decoded, and the loss is what decoding
    every row gives."""
    module = _module(fusion).train()
    batch = _batch()
    rows_seen = []
    for decoder in module.decoders.values():
        decoder.register_forward_hook(lambda _m, args, _out: rows_seen.append(len(args[0])))
    torch.manual_seed(3)
    got = module.loss(batch, kl_weight=0.5, stratified=stratified)
    n_paired = int((batch["mask"]["rna"] & batch["mask"]["atac"]).sum())
    n_present = sum(int(m.sum()) for m in batch["mask"].values())
    n_terms = 3 if stratified else 2
    # the joint term decodes every present (cell, modality); each other term the paired
    # cells' two modalities
    assert sum(rows_seen) == n_present + (n_terms - 1) * 2 * n_paired, rows_seen

    decode_all = MVAEModule.reconstruction
    monkeypatch.setattr(
        MVAEModule, "reconstruction", lambda self, z, batch, rows=None: decode_all(self, z, batch)
    )
    torch.manual_seed(3)
    reference = module.loss(batch, kl_weight=0.5, stratified=stratified)
    for key in reference:
        torch.testing.assert_close(got[key], reference[key])


def test_posteriors_and_likelihoods_stay_float32_under_bf16_autocast():
    """Under ``bf16-mixed`` (train's default on CPUs with native bfloat16) only the
    layers' products run in bfloat16: the experts' means and variances, every
    likelihood and the loss are float32, and the loss is the float32 one to 1 %."""
    module = _module("poe").train()
    batch = _batch()
    torch.manual_seed(4)
    reference = module.loss(batch, stratified=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu, logvar, _presence = module.encode(batch)
        z = torch.randn(B, 3, generator=torch.Generator().manual_seed(2))
        recon = module.reconstruction(z, batch)
        torch.manual_seed(4)
        got = module.loss(batch, stratified=False)
    assert mu.dtype == logvar.dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in recon.values())
    assert got["loss"].dtype == torch.float32
    torch.testing.assert_close(got["loss"], reference["loss"], rtol=0.01, atol=0.0)


def test_heads_on_z_stay_float32_under_bf16_autocast():
    """The supervised head and the batch discriminator are small: float32 throughout."""
    torch.manual_seed(0)
    module = MVAEModule(
        {"rna": (12, "nb"), "atac": (20, "bernoulli")},
        n_latent=3,
        n_hidden=8,
        n_batches=2,
        adversary_weight=1.0,
        n_label_outputs=3,
        label_type="categorical",
        classification_weight=1.0,
    ).train()
    batch = _batch()
    batch["label"] = torch.tensor([0, 1, 2, 0, 1, 2])
    batch["labelled"] = torch.ones(B, dtype=torch.bool)
    batch["batch_index"] = torch.arange(B) % 2
    dtypes = []
    for head in (module.classifier, module.discriminator):
        for layer in head.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.register_forward_hook(lambda _m, _a, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module.loss(batch, adversary_scale=1.0)
    assert dtypes and set(dtypes) == {torch.float32}
    assert out["classification_loss"].dtype == out["discriminator_loss"].dtype == torch.float32


def test_poe_objective_is_joint_plus_single_expert_elbos():
    module = _module()
    batch = _batch()
    mu, logvar, presence = module.encode(batch)
    post = module.posterior(mu, logvar, presence)
    # components: joint, rna-alone, atac-alone; single experts only for paired cells
    assert post.mu.shape[0] == 3
    torch.testing.assert_close(post.weight[0], torch.ones(B))
    torch.testing.assert_close(post.weight[1], torch.tensor([1.0, 1, 0, 0, 0, 0]))
    torch.testing.assert_close(post.weight[2], torch.tensor([1.0, 1, 0, 0, 0, 0]))
    # an RNA-only cell's joint posterior is its RNA expert times the prior
    var = logvar[0, 2].exp()
    torch.testing.assert_close(post.mu[0, 2], mu[0, 2] / (1 + var))


def test_alignment_term_is_the_symmetric_kl_of_paired_cells_experts():
    module = _module()
    batch = _batch()
    torch.manual_seed(1)
    plain = module.loss(batch, kl_weight=0.5)
    module.alignment_weight = 3.0
    torch.manual_seed(1)  # the same z samples
    aligned = module.loss(batch, kl_weight=0.5)
    mu, logvar, presence = module.encode(batch)
    single_mu, single_logvar = fu.single_expert_posteriors(mu, logvar, presence)
    per_cell = symmetric_kl(single_mu[0], single_logvar[0], single_mu[1], single_logvar[1])
    # only the two paired cells (of six) have two experts to align
    expected = per_cell[:2].sum() / B
    assert expected > 0
    torch.testing.assert_close(aligned["alignment"], expected)
    # weighted like the KL term: times the KL weight
    torch.testing.assert_close(aligned["loss"], plain["loss"] + 0.5 * 3.0 * expected)
    torch.testing.assert_close(aligned["elbo"], plain["elbo"])  # a penalty, not in the ELBO
    assert "alignment" not in plain


def test_mean_distance_alignment_is_half_the_squared_distance_of_the_experts_means():
    module = _module()
    module.alignment_weight, module.alignment_measure = 2.0, "mean_distance"
    batch = _batch()
    mu, logvar, presence = module.encode(batch)
    single_mu, _ = fu.single_expert_posteriors(mu, logvar, presence)
    per_cell = 0.5 * (single_mu[0] - single_mu[1]).pow(2).sum(-1)
    expected = per_cell[:2].sum() / B  # the two paired cells of six
    assert expected > 0
    torch.testing.assert_close(module.loss(batch, kl_weight=0.25)["alignment"], expected)
    # it differs from the symmetric KL of the same posteriors (variances left out)
    module.alignment_measure = "symmetric_kl"
    assert not torch.isclose(module.loss(batch)["alignment"], expected)
    with pytest.raises(ValueError, match="alignment_measure must be one of"):
        MVAEModule({"rna": (12, "nb")}, alignment_measure="means")


def test_mean_distance_alignment_moves_the_experts_means_not_their_variances():
    """The mean distance sends no gradient to the experts' log-variances (what their
    PoE weights follow), the symmetric KL does; both move the means."""
    module = _module()
    mu, logvar, presence = module.encode(_batch())
    for measure, moves_variances in (("mean_distance", False), ("symmetric_kl", True)):
        mu_leaf = mu.detach().requires_grad_()
        logvar_leaf = logvar.detach().requires_grad_()
        total, _ = module._expert_disagreement(mu_leaf, logvar_leaf, presence, measure)
        total.sum().backward()
        assert mu_leaf.grad.abs().sum() > 0, measure
        moved = logvar_leaf.grad is not None and bool(logvar_leaf.grad.abs().sum() > 0)
        assert moved == moves_variances, measure


def test_sampled_estimate_is_unbiased():
    module = _module()
    batch = _batch()
    torch.manual_seed(0)
    with torch.no_grad():
        exact = torch.stack([module.loss(batch)["elbo"] for _ in range(200)])
        sampled = torch.stack([module.loss(batch, stratified=False)["elbo"] for _ in range(1500)])
    standard_error = (exact.var() / len(exact) + sampled.var() / len(sampled)).sqrt()
    assert abs(float(sampled.mean() - exact.mean())) < 4 * float(standard_error)
    # and it is not trivially equal: the single-pass estimate is noisier
    assert sampled.std() > exact.std()


def test_mixture_kl_sample_matches_hand_computation():
    # one cell, 1-D, mixture of N(0, 1) and N(2, 1) with weights 1/2: at z = 1
    z = torch.tensor([[1.0]])
    mu = torch.tensor([0.0, 2.0]).view(2, 1, 1)
    logvar = torch.zeros(2, 1, 1)
    weight = torch.tensor([[0.5], [0.5]])
    log_n = lambda x, m: -0.5 * (x - m) ** 2 - 0.5 * torch.log(torch.tensor(2 * torch.pi))  # noqa: E731
    expected = torch.log(0.5 * log_n(1.0, 0.0).exp() + 0.5 * log_n(1.0, 2.0).exp()) - log_n(
        1.0, 0.0
    )
    torch.testing.assert_close(mixture_kl_sample(z, mu, logvar, weight), expected.view(1))


def test_fused_mean_for_mixtures_is_mixture_mean():
    module = _module("moe")
    mu, logvar, presence = module.encode(_batch())
    post = module.posterior(mu, logvar, presence)
    fused = module.fused_mean(mu, logvar, presence)
    # a cell with both modalities: mean of the two single-expert components
    torch.testing.assert_close(fused[0], 0.5 * (post.mu[0, 0] + post.mu[1, 0]))
    # an RNA-only cell: its RNA component
    torch.testing.assert_close(fused[2], post.mu[0, 2])


def test_calibrate_applies_the_map_of_each_cells_set_of_experts():
    """A cell's set of experts picks its affine map (bit m for modality m: RNA alone 1,
    ATAC alone 2, both 3); a new module's maps are all the identity."""
    module = _module()
    mu, logvar, presence = module.encode(_batch())
    z = module.fused_mean(mu, logvar, presence)
    torch.testing.assert_close(module.calibrate(z, presence), z)
    with torch.no_grad():
        module.latent_calibration[1] = torch.cat([2 * torch.eye(3), torch.ones(1, 3)])
        module.latent_calibration[2, -1] = -1.0
    out = module.calibrate(z, presence)
    torch.testing.assert_close(out[:2], z[:2])  # both modalities
    torch.testing.assert_close(out[2:4], 2 * z[2:4] + 1)  # RNA only
    torch.testing.assert_close(out[4:], z[4:] - 1)  # ATAC only


class _LinearGaussianDecoder(torch.nn.Module):
    """p(x | z) = N(W z, 1): a decoder whose log-likelihood is easy to write by hand."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def forward(self, z, *, library=None, covariates=None):
        return torch.distributions.Normal(z @ self.weight.T, 1.0)


@pytest.mark.parametrize("fusion", ["moe", "mopoe"])
def test_mixture_elbo_matches_hand_computation(fusion, monkeypatch):
    """Two modalities, one cell, 1-D latent: the stratified ELBO equals the weighted sum
    over components of log p(x_a|z_k) + log p(x_b|z_k) - [log q_mix(z_k) - log p(z_k)]."""
    module = MVAEModule({"a": (2, "gaussian"), "b": (1, "gaussian")}, n_latent=1, fusion=fusion)
    weights = {"a": torch.tensor([[1.0], [-0.5]]), "b": torch.tensor([[2.0]])}
    module.decoders = torch.nn.ModuleDict(
        {k: _LinearGaussianDecoder(w) for k, w in weights.items()}
    )
    mu = torch.tensor([0.8, -0.3]).view(2, 1, 1)
    logvar = torch.log(torch.tensor([0.5, 2.0])).view(2, 1, 1)
    presence = torch.ones(2, 1, dtype=torch.bool)
    monkeypatch.setattr(module, "encode", lambda batch, modalities=None: (mu, logvar, presence))
    x = {"a": torch.tensor([[0.3, 0.1]]), "b": torch.tensor([[1.2]])}
    batch = {
        "x": x,
        "mask": {"a": torch.tensor([True]), "b": torch.tensor([True])},
        "library": {"a": None, "b": None},
    }

    # hand computation: components are PoE(subset) with the prior
    def product(members):
        precision = 1 + sum(1 / logvar[m].exp() for m in members)
        return sum(mu[m] / logvar[m].exp() for m in members) / precision, 1 / precision

    subsets = [(0,), (1,)] if fusion == "moe" else [(0,), (1,), (0, 1)]
    comps = [product(s) for s in subsets]
    w = 1 / len(comps)
    normal = torch.distributions.Normal
    torch.manual_seed(0)
    expected = torch.zeros(())
    for mean, var in comps:
        z = mean + var.sqrt() * torch.randn_like(mean)  # the same draw as rsample
        log_lik = sum(normal(z @ weights[k].T, 1.0).log_prob(x[k]).sum() for k in x)
        log_q = torch.logsumexp(
            torch.stack(
                [
                    torch.log(torch.tensor(w)) + normal(m, v.sqrt()).log_prob(z).sum()
                    for m, v in comps
                ]
            ),
            0,
        )
        log_p = normal(0.0, 1.0).log_prob(z).sum()
        expected = expected + w * (log_lik - (log_q - log_p))
    # the module's objective from the same random draws
    torch.manual_seed(0)
    got = module.loss(batch, stratified=True)["elbo"]
    torch.testing.assert_close(got, expected)


def test_adversary_weight_of_zero_takes_a_cell_out_of_the_batch_game():
    """A cell of weight 0 neither trains the discriminator nor is pulled by it; the
    others count as before."""
    torch.manual_seed(0)
    module = MVAEModule(
        {"rna": (12, "nb"), "atac": (20, "bernoulli")},
        n_latent=3,
        n_hidden=8,
        n_batches=2,
        adversary_weight=1.0,
    ).eval()
    batch = _batch()
    batch["batch_index"] = torch.arange(B) % 2

    def game(weights=None):
        if weights is not None:
            batch["adversary_weight"] = weights
        torch.manual_seed(1)
        out = module.loss(batch, adversary_scale=1.0)
        batch.pop("adversary_weight", None)
        return out["discriminator_loss"], out["adversary_loss"]

    assert all(v == 0 for v in game(torch.zeros(B)))
    plain = torch.stack(game())
    assert (plain > 0).all()
    torch.testing.assert_close(torch.stack(game(torch.ones(B))), plain)
    # the losses are means of per-cell parts: weight B on one cell gives its part
    parts = torch.stack([torch.stack(game(B * torch.eye(B)[i])) for i in range(B)])
    torch.testing.assert_close(parts.mean(0), plain)
    half = torch.tensor([2.0, 2.0, 2.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(torch.stack(game(half)), 2 * parts[:3].sum(0) / B)
