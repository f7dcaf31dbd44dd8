"""Observation models, one per kind of data, as torch distributions.

Every decoder returns one of these, so the loss reads ``-px.log_prob(x).sum(-1)``.

========== ======================================== ===============================
name       distribution                             data
========== ======================================== ===============================
nb         NegativeBinomial(mu, theta)              UMI counts (RNA)
zinb       ZeroInflatedNegativeBinomial(mu, theta,  UMI counts with excess zeros
           zi_logits)
poisson    Poisson(rate)                            fragment / read counts (ATAC)
bernoulli  Bernoulli(probs)                         binarised accessibility (ATAC)
gaussian   Normal(loc, scale)                       continuous, standardised features
========== ======================================== ===============================

The negative binomial is parameterised by its mean ``mu`` and inverse dispersion
``theta`` (variance ``mu + mu**2 / theta``), as in scvi-tools.
"""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Distribution, Normal, Poisson, constraints

LIKELIHOODS: tuple[str, ...] = ("nb", "zinb", "poisson", "bernoulli", "gaussian")
COUNT_LIKELIHOODS: frozenset[str] = frozenset({"nb", "zinb", "poisson"})

_EPS = 1e-8


def _nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """log NB(x; mu, theta), elementwise, stable for large ``theta`` and ``mu`` near 0."""
    log_theta_mu = torch.log(theta + mu + _EPS)
    return (
        theta * (torch.log(theta + _EPS) - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)  # (G,) when theta is per feature
        - torch.lgamma(x + 1)
    )


class NegativeBinomial(Distribution):
    """Negative binomial with mean ``mu`` and inverse dispersion ``theta``.

    Parameters
    ----------
    mu
        Mean, ``(..., n_features)``, positive.
    theta
        Inverse dispersion, broadcastable to ``mu``, positive.

    Examples
    --------
    >>> px = NegativeBinomial(mu=torch.tensor([2.0]), theta=torch.tensor([5.0]))
    >>> float(px.mean)
    2.0
    """

    arg_constraints = {"mu": constraints.positive, "theta": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, mu: torch.Tensor, theta: torch.Tensor, validate_args: bool = False):
        # theta is kept unbroadcast (often per feature, (G,)) so that terms in theta
        # alone are computed once per feature, not once per cell and feature.
        self.mu, self.theta = mu, theta
        batch_shape = torch.broadcast_shapes(mu.shape, theta.shape)
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def variance(self) -> torch.Tensor:
        return self.mu + self.mu**2 / self.theta

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return _nb_log_prob(value, self.mu, self.theta)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        with torch.no_grad():
            mu, theta = torch.broadcast_tensors(self.mu, self.theta)
            rate = torch.distributions.Gamma(theta, theta / (mu + _EPS)).sample(sample_shape)
            return torch.poisson(rate)


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """NB mixed with a point mass at zero of probability ``sigmoid(zi_logits)``.

    Examples
    --------
    >>> px = ZeroInflatedNegativeBinomial(torch.ones(3), torch.ones(3), torch.zeros(3))
    >>> px.log_prob(torch.zeros(3)).shape
    torch.Size([3])
    """

    arg_constraints = {
        "mu": constraints.positive,
        "theta": constraints.positive,
        "zi_logits": constraints.real,
    }

    def __init__(
        self,
        mu: torch.Tensor,
        theta: torch.Tensor,
        zi_logits: torch.Tensor,
        validate_args: bool = False,
    ):
        super().__init__(mu, theta, validate_args=validate_args)
        self.zi_logits = zi_logits

    @property
    def zi_probs(self) -> torch.Tensor:
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> torch.Tensor:
        return (1 - self.zi_probs) * self.mu

    @property
    def variance(self) -> torch.Tensor:
        pi = self.zi_probs
        return (1 - pi) * (self.mu + self.mu**2 / self.theta) + pi * (1 - pi) * self.mu**2

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        nb = _nb_log_prob(value, self.mu, self.theta)
        # log pi = -softplus(-l); log(1 - pi) = -softplus(l)
        log_pi = -torch.nn.functional.softplus(-self.zi_logits)
        log_not_pi = -torch.nn.functional.softplus(self.zi_logits)
        at_zero = torch.logaddexp(log_pi, log_not_pi + nb)
        return torch.where(value < 0.5, at_zero, log_not_pi + nb)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        counts = super().sample(sample_shape)
        with torch.no_grad():
            keep = torch.bernoulli((1 - self.zi_probs).expand_as(counts))
        return counts * keep


def bernoulli(probs: torch.Tensor) -> Bernoulli:
    """Bernoulli on probabilities clamped away from 0 and 1 (finite log-probs)."""
    return Bernoulli(probs=probs.clamp(1e-6, 1 - 1e-6), validate_args=False)


def poisson(rate: torch.Tensor) -> Poisson:
    """Poisson with a strictly positive rate."""
    return Poisson(rate + _EPS, validate_args=False)


def gaussian(loc: torch.Tensor, var: torch.Tensor) -> Normal:
    """Normal from a mean and a *variance* (not a standard deviation)."""
    return Normal(loc, torch.sqrt(var), validate_args=False)
