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


def _logit(p):
    return np.log(p / (1 - p))


def test_bernoulli_matches_scipy():
    """The decoders' Bernoulli, p = sigmoid(logits) * sigmoid(region) * sigmoid(cell)."""
    p_feature, p_region = RNG.uniform(0.05, 0.99, (4, N)), RNG.uniform(0.2, 0.99, N)
    p_cell = RNG.uniform(0.2, 0.99, (4, 1))
    p = p_feature * p_region * p_cell
    x = (RNG.random((4, N)) < p).astype(float)
    px = lik.ScaledBernoulli(*(torch.tensor(_logit(q)) for q in (p_feature, p_region, p_cell)))
    np.testing.assert_allclose(px.log_prob(torch.tensor(x)).numpy(), st.bernoulli.logpmf(x, p))
    np.testing.assert_allclose(px.mean.numpy(), p)
    without_cell = lik.ScaledBernoulli(
        torch.tensor(_logit(p_feature)), torch.tensor(_logit(p_region))
    )
    expected = st.bernoulli.logpmf(x, p_feature * p_region)
    np.testing.assert_allclose(without_cell.log_prob(torch.tensor(x)).numpy(), expected)


def test_bernoulli_is_finite_at_extremes():
    """Log-probabilities and their gradients stay finite where p underflows to 0 or
    rounds to 1 in float32 (all three logits large); the clamped entries get no gradient."""
    logits = torch.tensor([[-50.0, 50.0, 50.0]], requires_grad=True)
    region = torch.full((3,), 50.0, requires_grad=True)
    cell = torch.full((1, 1), 50.0, requires_grad=True)
    got = lik.ScaledBernoulli(logits, region, cell).log_prob(torch.tensor([[1.0, 0.0, 1.0]]))
    assert torch.isfinite(got).all()
    got.sum().backward()
    for tensor in (logits, region, cell):
        assert torch.isfinite(tensor.grad).all(), tensor.grad
    assert (logits.grad == 0).all()


def test_fused_log_probs_have_the_gradients_of_their_formulas():
    """The decoders' NB and Bernoulli compute log-probabilities and their gradients in
    one hand-written autograd step (to keep less in memory and make fewer passes); both
    must match autograd through the plain formulas (torch's own NegativeBinomial for the
    NB), including the clamped Bernoulli probabilities (zero gradient there) and zero
    counts (whose lgamma terms are skipped)."""
    gen = torch.Generator().manual_seed(0)
    opts = {"dtype": torch.float64, "requires_grad": True}
    logits = torch.randn(6, 9, generator=gen, dtype=torch.float64).mul(3)
    logits[0, :3] = -25.0  # p below the clamp
    logits.requires_grad_()
    library = torch.rand(6, 1, generator=gen, dtype=torch.float64).mul(40).add(5).requires_grad_()
    log_theta, region = torch.randn(9, **opts), torch.randn(9, **opts)
    cell = torch.randn(6, 1, **opts)
    counts = torch.poisson(torch.rand(6, 9, generator=gen, dtype=torch.float64) * 5)
    counts[counts > 3] = 0  # plenty of zeros
    binary = (counts > 0).double()

    def nb(*args):
        return lik.NegativeBinomialLogits(*args).log_prob(counts)

    def nb_plain(logits, library, log_theta):
        # torch's NB counts successes before theta failures, success logit log(mu / theta)
        log_mu = torch.log(library) + torch.log_softmax(logits, -1)
        px = torch.distributions.NegativeBinomial(
            total_count=torch.exp(log_theta), logits=log_mu - log_theta, validate_args=False
        )
        return px.log_prob(counts)

    def bernoulli(*args):
        return lik.ScaledBernoulli(*args).log_prob(binary)

    def bernoulli_plain(logits, region, cell):
        p = torch.sigmoid(logits) * torch.sigmoid(region) * torch.sigmoid(cell)
        p = p.clamp(1e-6, 1 - 1e-6)
        return torch.distributions.Bernoulli(probs=p, validate_args=False).log_prob(binary)

    for fused, plain, inputs in (
        (nb, nb_plain, (logits, library, log_theta)),
        (bernoulli, bernoulli_plain, (logits, region, cell)),
    ):
        assert torch.autograd.gradcheck(fused, inputs)
        weights = torch.rand(6, 9, generator=gen, dtype=torch.float64)
        fused_grads = torch.autograd.grad((fused(*inputs) * weights).sum(), inputs)
        plain_grads = torch.autograd.grad((plain(*inputs) * weights).sum(), inputs)
        torch.testing.assert_close(fused(*inputs), plain(*inputs))
        for got, expected in zip(fused_grads, plain_grads, strict=True):
            torch.testing.assert_close(got, expected)
    # the clamped entries get no gradient through the logits
    grad = torch.autograd.grad(bernoulli(logits, region, cell).sum(), logits)[0]
    assert (grad[0, :3] == 0).all()


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


def test_fused_log_probs_stay_in_float32_under_mixed_precision():
    """Under bf16 autocast (``precision="bf16-mixed"``) the decoders' logits arrive in
    bfloat16; the fused log-probabilities are still computed in float32, the same as
    from those logits upcast by hand."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 50, generator=gen).bfloat16().requires_grad_()
    library, log_theta = torch.full((8, 1), 500.0), torch.zeros(50)
    counts = torch.poisson(torch.full((8, 50), 5.0), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nb = lik.NegativeBinomialLogits(logits, library, log_theta).log_prob(counts)
        bern = lik.ScaledBernoulli(logits, log_theta).log_prob((counts > 5).float())
    assert nb.dtype == bern.dtype == torch.float32
    expected = lik.NegativeBinomialLogits(logits.float(), library, log_theta).log_prob(counts)
    torch.testing.assert_close(nb, expected)
    (grad,) = torch.autograd.grad(nb.sum() + bern.sum(), logits)
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()
