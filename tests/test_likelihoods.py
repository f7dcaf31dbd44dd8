"""Each likelihood's log-probability against scipy, on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st
import torch

from mvae_sc.nn import likelihoods as lik

RNG = np.random.default_rng(0)
N = 200


def _nb_scipy(x, mu, theta):
    # scipy's nbinom(n, p): n = theta, p = theta / (theta + mu)
    return st.nbinom.logpmf(x, theta, theta / (theta + mu))


@pytest.fixture
def nb_params():
    mu = RNG.gamma(2.0, 3.0, N) + 1e-3
    theta = RNG.gamma(2.0, 2.0, N) + 1e-2
    x = RNG.poisson(mu * RNG.gamma(theta, 1 / theta)).astype(float)
    return x, mu, theta


def test_nb_matches_scipy(nb_params):
    x, mu, theta = nb_params
    px = lik.NegativeBinomial(torch.tensor(mu), torch.tensor(theta))
    np.testing.assert_allclose(
        px.log_prob(torch.tensor(x)).numpy(), _nb_scipy(x, mu, theta), rtol=1e-6, atol=1e-6
    )


def test_nb_with_per_feature_theta_broadcasts():
    mu = torch.tensor(RNG.gamma(2.0, 3.0, (5, 4)))
    theta = torch.tensor(RNG.gamma(2.0, 2.0, 4))
    x = torch.tensor(RNG.poisson(3.0, (5, 4)).astype(float))
    expected = _nb_scipy(x.numpy(), mu.numpy(), np.broadcast_to(theta.numpy(), (5, 4)))
    np.testing.assert_allclose(
        lik.NegativeBinomial(mu, theta).log_prob(x).numpy(), expected, rtol=1e-6
    )


def test_zinb_matches_mixture(nb_params):
    x, mu, theta = nb_params
    x[: N // 3] = 0
    pi = RNG.uniform(0.05, 0.9, N)
    logits = np.log(pi / (1 - pi))
    px = lik.ZeroInflatedNegativeBinomial(
        torch.tensor(mu), torch.tensor(theta), torch.tensor(logits)
    )
    nb_pmf = np.exp(_nb_scipy(x, mu, theta))
    expected = np.log(np.where(x == 0, pi + (1 - pi) * nb_pmf, (1 - pi) * nb_pmf))
    np.testing.assert_allclose(px.log_prob(torch.tensor(x)).numpy(), expected, rtol=1e-6, atol=1e-8)


def test_poisson_matches_scipy():
    rate = RNG.gamma(2.0, 2.0, N)
    x = RNG.poisson(rate).astype(float)
    got = lik.poisson(torch.tensor(rate)).log_prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, st.poisson.logpmf(x, rate), rtol=1e-6, atol=1e-6)


def test_bernoulli_matches_scipy():
    p = RNG.uniform(0.01, 0.99, N)
    x = (RNG.random(N) < p).astype(float)
    got = lik.bernoulli(torch.tensor(p)).log_prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, st.bernoulli.logpmf(x, p), rtol=1e-6)


def test_bernoulli_is_finite_at_extremes():
    got = lik.bernoulli(torch.tensor([0.0, 1.0])).log_prob(torch.tensor([1.0, 0.0]))
    assert torch.isfinite(got).all()


def test_gaussian_takes_a_variance():
    loc, var = RNG.normal(size=N), RNG.gamma(2.0, 1.0, N)
    x = RNG.normal(loc, np.sqrt(var))
    got = lik.gaussian(torch.tensor(loc), torch.tensor(var)).log_prob(torch.tensor(x)).numpy()
    np.testing.assert_allclose(got, st.norm.logpdf(x, loc, np.sqrt(var)), rtol=1e-6)


def test_nb_moments_and_sampling():
    mu, theta = torch.full((20000,), 4.0), torch.tensor(2.0)
    px = lik.NegativeBinomial(mu, theta)
    torch.manual_seed(0)
    sample = px.sample()
    assert abs(sample.mean().item() - 4.0) < 0.1
    assert abs(sample.var().item() - (4 + 16 / 2)) < 0.6
    assert torch.allclose(px.variance, torch.full((20000,), 12.0))


def test_gaussian_recovers_a_known_mean_and_variance():
    """Fitting loc and log-variance by maximum likelihood recovers the true values
    (a parameterisation that confused variance and standard deviation would not)."""
    gen = torch.Generator().manual_seed(0)
    true_loc, true_var = torch.tensor([3.0, -1.0]), torch.tensor([4.0, 0.25])
    x = true_loc + true_var.sqrt() * torch.randn(20000, 2, generator=gen)
    loc = torch.zeros(2, requires_grad=True)
    logvar = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([loc, logvar], lr=0.05)
    for _ in range(600):
        optimizer.zero_grad()
        loss = -lik.gaussian(loc, logvar.exp()).log_prob(x).mean()
        loss.backward()
        optimizer.step()
    torch.testing.assert_close(loc.detach(), true_loc, atol=0.05, rtol=0)
    torch.testing.assert_close(logvar.detach().exp(), true_var, rtol=0.05, atol=0)
