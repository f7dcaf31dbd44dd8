"""Fusion rules: how per-modality Gaussian experts become one posterior over z.

Experts are stacked: ``mu`` and ``logvar`` are ``(n_modalities, n_cells, n_latent)``
and ``presence_mask`` is ``(n_modalities, n_cells)`` (True where the cell has the
modality). A missing expert never contributes: its values are replaced, not multiplied,
so NaN or garbage behind the mask cannot leak into the result.

* :func:`poe` — product of the present experts and the prior expert N(0, I):
  precision ``T = 1 + sum_m 1/var_m``; mean ``(sum_m mu_m/var_m) / T``.
* :func:`moe` — uniform mixture over the present experts (each with the prior).
* :func:`mopoe` — uniform mixture over the PoEs of the non-empty subsets of the
  present experts.
"""

from __future__ import annotations

import itertools

import torch


def _masked(value: torch.Tensor, presence_mask: torch.Tensor) -> torch.Tensor:
    """Zero out (by replacement) the entries of absent experts. (M, B, D) -> (M, B, D)."""
    return torch.where(presence_mask.unsqueeze(-1), value, torch.zeros_like(value))


def poe(
    mu: torch.Tensor, logvar: torch.Tensor, presence_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of the present Gaussian experts and a standard normal prior expert.

    Parameters
    ----------
    mu, logvar
        Expert means and log-variances, ``(M, B, D)``.
    presence_mask
        ``(M, B)`` boolean; False experts add zero precision.

    Returns
    -------
    The fused mean and log-variance, each ``(B, D)``. A cell with no present expert
    gets the prior N(0, I).

    Examples
    --------
    >>> mu, logvar = torch.zeros(2, 1, 3), torch.zeros(2, 1, 3)
    >>> m, lv = poe(mu, logvar, torch.tensor([[True], [True]]))
    >>> torch.allclose(lv.exp(), torch.full((1, 3), 1 / 3))
    True
    """
    precision = _masked(torch.exp(-logvar), presence_mask)  # (M, B, D)
    weighted_mu = _masked(mu, presence_mask) * precision
    total_precision = 1.0 + precision.sum(0)  # prior precision is 1
    fused_mu = weighted_mu.sum(0) / total_precision
    return fused_mu, -torch.log(total_precision)


def single_expert_posteriors(
    mu: torch.Tensor, logvar: torch.Tensor, presence_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each expert alone times the prior: ``q_m ⊗ N(0, I)`` for every modality m.

    Returns
    -------
    Means and log-variances ``(M, B, D)``; where expert m is absent, row m is the prior.
    """
    eye = torch.eye(mu.shape[0], dtype=torch.bool, device=mu.device)
    fused = [poe(mu, logvar, presence_mask & eye[m].unsqueeze(-1)) for m in range(mu.shape[0])]
    return torch.stack([f[0] for f in fused]), torch.stack([f[1] for f in fused])


def poe_weights(logvar: torch.Tensor, presence_mask: torch.Tensor) -> torch.Tensor:
    """Each expert's share of the fused PoE precision, summed over latent dimensions
    (its share of the trace of the fused precision matrix).

    ``w_m = sum_d (1/var_md) / sum_d (1 + sum_k 1/var_kd)``; absent experts get 0, and
    the weights of a cell sum to less than 1 (the rest is the prior's share). Summing
    before dividing lets the dimensions the experts are sure about count most; a mean of
    per-dimension shares gives a dimension no expert informs as much say as one they
    all do, and on the sensor set it followed the noisy sensor's noise less than half as
    closely (README, "Modality weight").

    Returns
    -------
    ``(M, B)`` weights in [0, 1).
    """
    precision = _masked(torch.exp(-logvar), presence_mask)
    return precision.sum(-1) / (1.0 + precision.sum(0)).sum(-1)


def subsets(n_modalities: int) -> list[tuple[int, ...]]:
    """All non-empty subsets of ``range(n_modalities)``, smallest first."""
    return [
        combo
        for size in range(1, n_modalities + 1)
        for combo in itertools.combinations(range(n_modalities), size)
    ]


def subset_members(n_modalities: int, device=None) -> torch.Tensor:
    """Which modalities each subset of :func:`subsets` holds: ``(S, M)`` boolean."""
    all_subsets = subsets(n_modalities)
    members = torch.zeros(len(all_subsets), n_modalities, dtype=torch.bool)
    for k, subset in enumerate(all_subsets):
        members[k, list(subset)] = True
    return members.to(device)


def subset_mask(presence_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Which subsets are fully present for each cell.

    Returns
    -------
    ``(S, B)`` boolean mask (subset s present in cell b) and the subsets' members
    ``(S, M)`` (:func:`subset_members`).
    """
    members = subset_members(presence_mask.shape[0], presence_mask.device)
    available = (presence_mask.unsqueeze(0) | ~members.unsqueeze(-1)).all(1)
    return available, members


def mopoe_components(
    mu: torch.Tensor, logvar: torch.Tensor, presence_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The PoE of every non-empty subset, and which of them are available per cell.

    Returns
    -------
    ``mu_s``, ``logvar_s`` of shape ``(S, B, D)`` and the availability mask ``(S, B)``.
    """
    available, members = subset_mask(presence_mask)
    fused = [poe(mu, logvar, presence_mask & member.unsqueeze(-1)) for member in members]
    return torch.stack([f[0] for f in fused]), torch.stack([f[1] for f in fused]), available


def mixture_weights(available: torch.Tensor) -> torch.Tensor:
    """Uniform mixture weights over the available components. ``(K, B) -> (K, B)``."""
    counts = available.sum(0, keepdim=True).clamp(min=1)
    return available.float() / counts


def mixture_mean(mu: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Mean of a uniform mixture of the available Gaussian components, ``(B, D)``."""
    weights = mixture_weights(available).unsqueeze(-1)
    return (weights * _masked(mu, available)).sum(0)


def moe(
    mu: torch.Tensor, logvar: torch.Tensor, presence_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform mixture of the present experts, each taken with the prior (``q_m ⊗ N(0, I)``,
    as every component here is, so that a single expert's component equals its PoE).

    Returns
    -------
    Component means and log-variances ``(M, B, D)`` and the mixture weights ``(M, B)``:
    ``1/|S|`` for present experts, 0 for absent ones.
    """
    single_mu, single_logvar = single_expert_posteriors(mu, logvar, presence_mask)
    return single_mu, single_logvar, mixture_weights(presence_mask)


def mopoe(
    mu: torch.Tensor, logvar: torch.Tensor, presence_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform mixture over the PoEs of the non-empty subsets of the present experts.

    Returns
    -------
    Component means and log-variances ``(S, B, D)`` (S = 2**M - 1 subsets) and the
    mixture weights ``(S, B)``: uniform over the subsets whose members are all present.
    """
    mu_s, logvar_s, available = mopoe_components(mu, logvar, presence_mask)
    return mu_s, logvar_s, mixture_weights(available)
