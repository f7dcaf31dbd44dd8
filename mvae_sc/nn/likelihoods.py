"""Observation models, one per kind of data, as torch distributions.

Every decoder returns one of these, so the loss reads ``-px.log_prob(x).sum(-1)``.

========== ======================================== ===============================
name       distribution                             data
========== ======================================== ===============================
nb         NegativeBinomialLogits(logits, library,  UMI counts (RNA)
           log_theta)
zinb       ZeroInflatedNegativeBinomial(mu, theta,  UMI counts with excess zeros
           zi_logits)
poisson    Poisson(rate)                            fragment / read counts (ATAC)
bernoulli  ScaledBernoulli(logits, region_logit,    binarised accessibility (ATAC)
           cell_logit)
gaussian   Normal(loc, scale)                       continuous, standardised features
========== ======================================== ===============================

The negative binomial is parameterised by its mean ``mu`` and inverse dispersion
``theta`` (variance ``mu + mu**2 / theta``), as in scvi-tools.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Normal, Poisson, constraints

LIKELIHOODS: tuple[str, ...] = ("nb", "zinb", "poisson", "bernoulli", "gaussian")
COUNT_LIKELIHOODS: frozenset[str] = frozenset({"nb", "zinb", "poisson"})

_EPS = 1e-8
_P_MIN = 1e-6  # Bernoulli probabilities are clamped to [_P_MIN, 1 - _P_MIN]


def _at(index: tuple[torch.Tensor, ...], shape: torch.Size, *tensors: torch.Tensor):
    """The entries at ``index`` of each tensor broadcast to ``shape`` (no copy of the
    broadcast tensor)."""
    return tuple(t.expand(shape)[index] for t in tensors)


def _at_nonzero_counts(x: torch.Tensor, theta: torch.Tensor, shape: torch.Size):
    """Indices of the non-zero counts of ``x`` broadcast to ``shape``, and the counts
    and inverse dispersions there (the NB's lgamma / digamma terms vanish at zero)."""
    index = x.expand(shape).nonzero(as_tuple=True)
    return index, *_at(index, shape, x, theta)


def _nb_log_prob(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """log NB(x; mu, theta), elementwise, stable for large ``theta`` and ``mu`` near 0.
    The lgamma terms are computed at non-zero counts only: at a zero count
    ``lgamma(theta) - lgamma(theta) - lgamma(1)`` is exactly 0."""
    log_theta_mu = torch.log(theta + mu + _EPS)
    out = theta * (torch.log(theta + _EPS) - log_theta_mu) + x * (
        torch.log(mu + _EPS) - log_theta_mu
    )
    index, x_nz, theta_nz = _at_nonzero_counts(x, theta, out.shape)
    terms = torch.lgamma(x_nz + theta_nz) - torch.lgamma(theta_nz) - torch.lgamma(x_nz + 1)
    return out.index_put(index, terms, accumulate=True)


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


class NegativeBinomialLogits(NegativeBinomial):
    """The decoders' negative binomial: mean ``library * softmax(logits)`` and inverse
    dispersion ``exp(log_theta)``.

    ``log_prob`` is one fused autograd step (:class:`_NBLogitsLogProb`) that keeps only
    the softmax (and the non-zero counts' positions) for the backward pass, where the
    plain formula keeps about ten tensors of the minibatch's full size. Same values and
    gradients as ``NegativeBinomial(mu, theta)`` but for its small epsilons (and those of
    torch's own negative binomial with ``total_count=theta``, ``logits=log(mu /
    theta)``).

    Examples
    --------
    >>> px = NegativeBinomialLogits(torch.zeros(1, 4), torch.tensor([[8.0]]), torch.zeros(4))
    >>> px.mean
    tensor([[2., 2., 2., 2.]])
    """

    def __init__(
        self,
        logits: torch.Tensor,
        library: torch.Tensor,
        log_theta: torch.Tensor,
        validate_args: bool = False,
    ):
        self.logits, self.library, self.log_theta = logits, library, log_theta
        Distribution.__init__(self, batch_shape=logits.shape, validate_args=validate_args)

    @property
    def mu(self) -> torch.Tensor:
        return self.library * torch.softmax(self.logits, dim=-1)

    @property
    def theta(self) -> torch.Tensor:
        return torch.exp(self.log_theta)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return _NBLogitsLogProb.apply(self.logits, self.library, self.log_theta, value)


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast gradient back to the shape of the input it came from."""
    lead = grad.dim() - len(shape)
    dims = list(range(lead)) + [
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    ]
    return grad.sum(dims, keepdim=True).reshape(shape) if dims else grad


_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _full_precision(forward):
    """Run a fused log-probability in float32 at least, also under mixed precision
    (autocast off inside; bfloat16 / float16 inputs are upcast; their gradients are
    cast back by autograd)."""

    def wrapped(ctx, *args):
        args = tuple(
            a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW_PRECISION else a
            for a in args
        )
        device = next(a for a in args if isinstance(a, torch.Tensor)).device.type
        with torch.autocast(device_type=device, enabled=False):
            return forward(ctx, *args)

    return wrapped


class _NBLogitsLogProb(torch.autograd.Function):
    """Elementwise log NB(x; mu = library * softmax(logits), theta = exp(log_theta)),
    the formula of :func:`_nb_log_prob` (without its epsilons), with a hand-written
    backward pass.

    Written for few passes over the (cells x genes) minibatch, which take much of a
    CPU step: ``log mu`` is ``log(library) + log_softmax(logits)``, the terms with ``x``
    are taken at the non-zero counts only (found once and kept for the backward pass),
    and the gradients go through ``mu d/dmu log NB = theta (x - mu) / (theta + mu)``.
    About half the time of the plain formula; only the softmax, the library, the
    dispersions, ``x`` and the non-zero positions are kept for the backward pass.
    """

    @staticmethod
    @_full_precision
    def forward(ctx, logits, library, log_theta, x):
        log_s = torch.log_softmax(logits, dim=-1)
        s = log_s.exp()
        theta = torch.exp(log_theta)
        log_theta_mu = torch.log(library * s + theta)
        out = torch.sub(log_theta, log_theta_mu).mul_(theta)  # theta log(theta / (theta + mu))
        index, x_nz, theta_nz = _at_nonzero_counts(x, theta, out.shape)
        library_nz, log_s_nz = _at(index, out.shape, library, log_s)
        log_mu_nz = library_nz.log() + log_s_nz
        terms = x_nz * (log_mu_nz - log_theta_mu[index])
        terms += torch.lgamma(x_nz + theta_nz) - torch.lgamma(theta_nz) - torch.lgamma(x_nz + 1)
        ctx.save_for_backward(s, library, log_theta, x, *index)
        return out.index_put_(index, terms, accumulate=True)

    @staticmethod
    def backward(ctx, grad):
        s, library, log_theta, x, *index = ctx.saved_tensors
        index = tuple(index)
        theta = torch.exp(log_theta)
        mu = library * s
        grad_logits = grad_library = grad_log_theta = None
        difference = x - mu
        theta_mu = mu.add_(theta)
        # mu d/dmu log NB, times the incoming gradient
        weighted = difference.mul_(theta).div_(theta_mu).mul_(grad)
        if ctx.needs_input_grad[0]:
            grad_logits = torch.addcmul(weighted, s, weighted.sum(-1, keepdim=True), value=-1)
        if ctx.needs_input_grad[1]:  # d mu / d library = s = mu / library
            grad_library = _sum_to(weighted.sum(-1, keepdim=True) / library, library.shape)
        if ctx.needs_input_grad[2]:
            # theta d/dtheta log NB = theta log(theta / (theta + mu)) - theta (x - mu) /
            # (theta + mu) + theta (digamma(x + theta) - digamma(theta)), the last term
            # at non-zero counts only
            d_theta = torch.log(theta_mu).neg_().add_(log_theta).mul_(grad).mul_(theta)
            d_theta -= weighted
            x_nz, theta_nz, grad_nz = _at(index, d_theta.shape, x, theta, grad)
            digammas = torch.digamma(x_nz + theta_nz) - torch.digamma(theta_nz)
            d_theta.index_put_(index, grad_nz * theta_nz * digammas, accumulate=True)
            grad_log_theta = _sum_to(d_theta, log_theta.shape)
        return grad_logits, grad_library, grad_log_theta, None


class ScaledBernoulli(Distribution):
    """The decoders' Bernoulli: ``p = sigmoid(logits) * sigmoid(region_logit) *
    sigmoid(cell_logit)`` (the last factor optional), clamped to ``[1e-6, 1 - 1e-6]``
    so that log-probabilities stay finite.

    ``log_prob`` is one fused autograd step (:class:`_ScaledBernoulliLogProb`) that
    keeps only ``sigmoid(logits)`` for the backward pass, where composing sigmoids,
    products and ``Bernoulli`` keeps about fifteen tensors of the minibatch's full size;
    same values and gradients as ``torch.distributions.Bernoulli(probs)`` on the clamped
    product.

    Examples
    --------
    >>> px = ScaledBernoulli(torch.zeros(1, 3), torch.full((3,), 20.0))
    >>> px.mean
    tensor([[0.5000, 0.5000, 0.5000]])
    """

    arg_constraints = {}
    support = constraints.boolean

    def __init__(
        self,
        logits: torch.Tensor,
        region_logit: torch.Tensor,
        cell_logit: torch.Tensor | None = None,
        validate_args: bool = False,
    ):
        self.logits, self.region_logit, self.cell_logit = logits, region_logit, cell_logit
        super().__init__(batch_shape=logits.shape, validate_args=validate_args)

    @property
    def probs(self) -> torch.Tensor:
        probs = _ScaledBernoulliLogProb._probs(
            torch.sigmoid(self.logits), self.region_logit, self.cell_logit
        )
        return probs.clamp(_P_MIN, 1 - _P_MIN)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def variance(self) -> torch.Tensor:
        probs = self.probs
        return probs * (1 - probs)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: B008
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(self._extended_shape(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return _ScaledBernoulliLogProb.apply(self.logits, self.region_logit, self.cell_logit, value)


class _ScaledBernoulliLogProb(torch.autograd.Function):
    """Elementwise ``x log p + (1 - x) log(1 - p)`` for the clamped product of sigmoids
    of :class:`ScaledBernoulli`, with a hand-written backward pass (zero gradient where
    the clamp is active, as for ``torch.clamp``).

    ``x`` is 0 or 1, so the value is ``log |p + x - 1|``: one logarithm per entry, and a
    backward pass without any (``d/dp = 1 / (p + x - 1)``). Only ``sigmoid(logits)`` is
    kept for it. Half the time of the plain formula on the CPU, where the minibatch's
    (cells x peaks) passes take a large share of a step.
    """

    @staticmethod
    def _probs(sigmoid_logits, region_logit, cell_logit):
        p = sigmoid_logits * torch.sigmoid(region_logit)
        if cell_logit is not None:
            p.mul_(torch.sigmoid(cell_logit))
        return p

    @staticmethod
    @_full_precision
    def forward(ctx, logits, region_logit, cell_logit, x):
        t, x = torch.sigmoid(logits), x.to(logits.dtype)
        p = _ScaledBernoulliLogProb._probs(t, region_logit, cell_logit).clamp_(_P_MIN, 1 - _P_MIN)
        ctx.save_for_backward(t, region_logit, cell_logit, x)
        # x - 1 is exactly 0 or -1: p + (x - 1) keeps a small p exact
        return p.add_(x - 1).abs_().log_()

    @staticmethod
    def backward(ctx, grad):
        t, region_logit, cell_logit, x = ctx.saved_tensors
        p = _ScaledBernoulliLogProb._probs(t, region_logit, cell_logit)
        clamped = p.clamp(_P_MIN, 1 - _P_MIN)
        inside = clamped == p
        # d/dp log|p + x - 1| = 1 / (p + x - 1); dp/d(logit_i) = p * sigmoid(-logit_i)
        common = p.div_(clamped.add_(x - 1)).mul_(inside).mul_(grad)
        grad_logits = grad_region = grad_cell = None
        if ctx.needs_input_grad[0]:
            grad_logits = torch.addcmul(common, common, t, value=-1)  # common * (1 - t)
        if ctx.needs_input_grad[1]:
            grad_region = _sum_to(common, region_logit.shape) * torch.sigmoid(-region_logit)
        if ctx.needs_input_grad[2]:
            per_cell = common.sum(-1, keepdim=True)
            grad_cell = _sum_to(per_cell, cell_logit.shape) * torch.sigmoid(-cell_logit)
        return grad_logits, grad_region, grad_cell, None


def poisson(rate: torch.Tensor) -> Poisson:
    """Poisson with a strictly positive rate."""
    return Poisson(rate + _EPS, validate_args=False)


def gaussian(loc: torch.Tensor, var: torch.Tensor) -> Normal:
    """Normal from a mean and a *variance* (not a standard deviation)."""
    return Normal(loc, torch.sqrt(var), validate_args=False)
