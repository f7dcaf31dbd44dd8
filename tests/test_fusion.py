"""Fusion rules against their closed forms; masks never leak."""

from __future__ import annotations

import math

import torch

from mvae_sc.nn import fusion as fu

torch.manual_seed(0)
M, B, D = 3, 5, 4


def _experts():
    return torch.randn(M, B, D), torch.randn(M, B, D)


def test_poe_matches_closed_form():
    mu, logvar = _experts()
    mask = torch.ones(M, B, dtype=torch.bool)
    fused_mu, fused_logvar = fu.poe(mu, logvar, mask)
    precision = 1 + (1 / logvar.exp()).sum(0)
    expected_mu = (mu / logvar.exp()).sum(0) / precision
    torch.testing.assert_close(fused_logvar, -precision.log())
    torch.testing.assert_close(fused_mu, expected_mu)


def test_single_expert_gives_expert_times_prior():
    mu, logvar = _experts()
    mask = torch.zeros(M, B, dtype=torch.bool)
    mask[1] = True  # e.g. an RNA-only cell
    fused_mu, fused_logvar = fu.poe(mu, logvar, mask)
    var = logvar[1].exp()
    torch.testing.assert_close(fused_logvar.exp(), var / (1 + var))
    torch.testing.assert_close(fused_mu, mu[1] / (1 + var))


def test_no_expert_gives_the_prior():
    mu, logvar = _experts()
    fused_mu, fused_logvar = fu.poe(mu, logvar, torch.zeros(M, B, dtype=torch.bool))
    torch.testing.assert_close(fused_mu, torch.zeros(B, D))
    torch.testing.assert_close(fused_logvar, torch.zeros(B, D))


def test_masked_values_never_leak():
    mu, logvar = _experts()
    mask = torch.rand(M, B) > 0.4
    mask[0] = True
    reference = fu.poe(mu, logvar, mask)
    garbage_mu, garbage_logvar = mu.clone(), logvar.clone()
    garbage_mu[~mask] = torch.nan
    garbage_logvar[~mask] = -torch.inf  # infinite precision if it leaked
    for got, want in zip(fu.poe(garbage_mu, garbage_logvar, mask), reference, strict=True):
        torch.testing.assert_close(got, want)
    weights = fu.poe_weights(garbage_logvar, mask)
    assert torch.isfinite(weights).all()
    assert (weights[~mask] == 0).all()


def test_poe_weights_are_precision_shares():
    logvar = torch.log(torch.tensor([0.5, 0.25])).view(2, 1, 1).expand(2, 1, 3)
    weights = fu.poe_weights(logvar, torch.ones(2, 1, dtype=torch.bool))
    # precisions 2 and 4, prior 1: shares 2/7 and 4/7
    torch.testing.assert_close(weights[:, 0], torch.tensor([2 / 7, 4 / 7]))


def test_poe_weights_are_shares_of_the_total_precision():
    # expert 0 is sure about dimension 0 (precision 99), expert 1 gives 1 on both; the
    # prior adds 1 to each: traces 99 + 1 + 1 + 1 + 1 = 103 in all, 99 and 2 of it
    var = torch.tensor([[1 / 99, 1e12], [1.0, 1.0]])
    weights = fu.poe_weights(torch.log(var)[:, None, :], torch.ones(2, 1, dtype=torch.bool))
    torch.testing.assert_close(weights[:, 0], torch.tensor([99 / 103, 2 / 103]))


def test_moe_components_are_single_experts_with_prior():
    mu, logvar = _experts()
    mask = torch.tensor([[True] * B, [False] * B, [True] * B])
    comp_mu, comp_logvar, weight = fu.moe(mu, logvar, mask)
    torch.testing.assert_close(weight, torch.tensor([[0.5] * B, [0.0] * B, [0.5] * B]))
    var = logvar[0].exp()
    torch.testing.assert_close(comp_logvar[0].exp(), var / (1 + var))
    torch.testing.assert_close(comp_mu[0], mu[0] / (1 + var))
    # an absent expert's component is the prior (and has weight 0)
    torch.testing.assert_close(comp_mu[1], torch.zeros(B, D))


def test_mopoe_subsets_on_tiny_case():
    # two experts, one latent dim, one cell: subsets {0}, {1}, {0,1}
    mu = torch.tensor([1.0, -2.0]).view(2, 1, 1)
    var = torch.tensor([0.5, 2.0])
    logvar = var.log().view(2, 1, 1)
    comp_mu, comp_logvar, weight = fu.mopoe(mu, logvar, torch.ones(2, 1, dtype=torch.bool))
    assert fu.subsets(2) == [(0,), (1,), (0, 1)]
    assert fu.subset_members(3).tolist() == [
        [True, False, False], [False, True, False], [False, False, True],
        [True, True, False], [True, False, True], [False, True, True], [True, True, True],
    ]  # fmt: skip
    available, _ = fu.subset_mask(torch.tensor([[True, True], [False, True], [True, False]]))
    # cell 0 has experts {0, 2}: subsets {0}, {2}, {0, 2}; cell 1 has {0, 1}
    assert available.T.tolist() == [
        [True, False, True, False, True, False, False],
        [True, True, False, True, False, False, False],
    ]
    precisions = [1 + 2.0, 1 + 0.5, 1 + 2.0 + 0.5]
    means = [2.0 / 3.0, -1.0 / 1.5, (2.0 - 1.0) / 3.5]
    torch.testing.assert_close(comp_logvar.view(-1), -torch.log(torch.tensor(precisions)))
    torch.testing.assert_close(comp_mu.view(-1), torch.tensor(means))
    torch.testing.assert_close(weight.view(-1), torch.full((3,), 1 / 3))
    # with expert 1 missing only subset {0} is available
    _, _, weight = fu.mopoe(mu, logvar, torch.tensor([[True], [False]]))
    torch.testing.assert_close(weight.view(-1), torch.tensor([1.0, 0.0, 0.0]))


def test_mixture_mean():
    mu = torch.tensor([[[1.0]], [[3.0]], [[100.0]]])
    available = torch.tensor([[True], [True], [False]])
    assert math.isclose(fu.mixture_mean(mu, available).item(), 2.0)
