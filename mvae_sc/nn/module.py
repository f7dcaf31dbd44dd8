"""MVAEModule: inference → fusion → generative → loss (the ELBO), in plain torch.

A minibatch is a dict (built by :mod:`mvae_sc.data.loader`):

* ``x[mod]``: ``(B, G_mod)`` float values (zeros where the cell lacks the modality),
* ``mask[mod]``: ``(B,)`` bool, True where the cell has the modality,
* ``library[mod]``: ``(B, 1)`` total counts of the modality (depth),
* ``covariates``: ``(B, C)`` one-hot batches and continuous covariates, or absent,
* ``batch_index``: ``(B,)`` the batch code, where the MuData has batches,
* ``adversary_weight``: ``(B,)`` each cell's weight in the batch adversary, or absent
  (every cell 1); see :func:`mvae_sc.train.batch_balance_weights`.

The objective is a sum over *posterior components* k, each with a per-cell weight
``w_k`` (zero where the component is unavailable)::

    ELBO = sum_k w_k * ( sum_{m present} log p(x_m | z_k) - KL_k ),   z_k ~ q_k

* ``poe``: the joint PoE posterior (w = 1) plus, for cells with two or more
  modalities, each single-expert posterior ``q_m ⊗ prior`` (w = 1): the sub-sampled
  MVAE objective that makes one modality alone give a usable posterior. KL in closed
  form.
* ``moe``: the single experts ``q_m ⊗ prior`` of the present modalities, w = 1/|S|
  (stratified sampling, one z per expert); ``KL_k = log q_mix(z_k) - log p(z_k)``.
* ``mopoe``: the PoEs of all non-empty subsets of the present modalities, w =
  1/(number of such subsets), KL as for ``moe``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from . import fusion as fu
from .experts import MLP, Decoder, Encoder

FUSIONS = ("poe", "moe", "mopoe")
DISAGREEMENT_MEASURES = ("cross_likelihood", "symmetric_kl")
# what the alignment penalty measures between two single-expert posteriors of a cell
ALIGNMENT_MEASURES = ("symmetric_kl", "mean_distance")


@dataclass
class Posterior:
    """Gaussian posterior components over z with their per-cell weights.

    ``mu``/``logvar``: (K, B, D); ``weight``: (K, B); ``mixture``: whether the components
    form one mixture posterior (MoE/MoPoE) or separate objectives (PoE); ``experts``:
    (K, B, M) bool, which modalities' experts each component fuses.
    """

    mu: torch.Tensor
    logvar: torch.Tensor
    weight: torch.Tensor
    mixture: bool
    experts: torch.Tensor


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    return -0.5 * (((z - mu) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)


def symmetric_kl(
    mu_a: torch.Tensor, logvar_a: torch.Tensor, mu_b: torch.Tensor, logvar_b: torch.Tensor
) -> torch.Tensor:
    """``(KL(a || b) + KL(b || a)) / 2`` between diagonal Gaussians, summed over the last
    dimension. ``(..., D) -> (...)``."""
    var_a, var_b = torch.exp(logvar_a), torch.exp(logvar_b)
    diff2 = (mu_a - mu_b) ** 2
    kl_ab = 0.5 * ((var_a + diff2) / var_b - 1 + logvar_b - logvar_a)
    kl_ba = 0.5 * ((var_b + diff2) / var_a - 1 + logvar_a - logvar_b)
    return (0.5 * (kl_ab + kl_ba)).sum(-1)


def mixture_kl_sample(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Single-sample estimate ``log q_mix(z) - log N(z; 0, I)`` for a mixture posterior.

    Parameters
    ----------
    z
        ``(B, D)`` a sample.
    mu, logvar
        ``(K, B, D)`` mixture components.
    weight
        ``(K, B)`` mixture weights (rows sum to 1 over available components).
    """
    log_components = _log_normal(z.unsqueeze(0), mu, logvar)  # (K, B)
    log_w = torch.log(weight.clamp(min=1e-30))
    log_q = torch.logsumexp(torch.where(weight > 0, log_w + log_components, -torch.inf), dim=0)
    log_p = _log_normal(z, torch.zeros_like(z), torch.zeros_like(z))
    return log_q - log_p


class MVAEModule(nn.Module):
    """Multimodal VAE over any number of named modalities.

    Parameters
    ----------
    modalities
        ``{name: (n_features, likelihood)}``, in a fixed order.
    n_latent, n_hidden, n_layers, dropout
        Architecture of every encoder and decoder; ``n_hidden`` is the width of the
        heads on z and of every modality's encoder and decoder not in ``hidden_widths``.
    hidden_widths
        ``{modality: width}`` of that modality's encoder and decoder (see
        :func:`modality_width`).
    n_covariates
        Width of the covariate vector fed to decoders (and encoders if
        ``encode_covariates``).
    fusion
        ``"poe"``, ``"moe"`` or ``"mopoe"``.
    n_batches, adversary_weight
        With ``adversary_weight > 0`` and two or more batches, a discriminator MLP on z
        and the set of experts z comes from predicts the batch while the encoders, with
        weight ``adversary_weight`` (times the warm-up factor passed to :meth:`loss`),
        learn to make its guess the batch prior of that set of experts (see
        :meth:`_discrimination`).
    n_label_outputs, label_type, classification_weight
        A supervised head on z: ``n_label_outputs`` classes (``"categorical"``) or one
        value (``"continuous"``, standardised); 0 for none. Its loss (cross-entropy or
        half squared error, averaged over labelled cells) enters the objective times
        ``classification_weight``.
    alignment_weight, alignment_measure
        Weight (times the KL weight) of a penalty on how far apart the single-expert
        posteriors of a cell's modalities lie, 0 for none, and what it measures: their
        symmetric KL divergence (``"symmetric_kl"``) or half the squared distance of
        their means (``"mean_distance"``); see :meth:`loss`.
    """

    def __init__(
        self,
        modalities: dict[str, tuple[int, str]],
        *,
        n_latent: int = 20,
        n_hidden: int = 256,
        hidden_widths: Mapping[str, int] | None = None,
        n_layers: int = 2,
        dropout: float = 0.1,
        n_covariates: int = 0,
        encode_covariates: bool = False,
        fusion: str = "poe",
        n_batches: int = 0,
        adversary_weight: float = 0.0,
        n_label_outputs: int = 0,
        label_type: str | None = None,
        classification_weight: float = 0.0,
        alignment_weight: float = 0.0,
        alignment_measure: str = "symmetric_kl",
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}.")
        if alignment_measure not in ALIGNMENT_MEASURES:
            raise ValueError(
                f"alignment_measure must be one of {ALIGNMENT_MEASURES}, got {alignment_measure!r}."
            )
        self.modality_names = list(modalities)
        self.likelihoods = {name: lk for name, (_, lk) in modalities.items()}
        self.n_latent = n_latent
        self.fusion = fusion
        self.encode_covariates = encode_covariates
        widths = {name: (hidden_widths or {}).get(name, n_hidden) for name in modalities}
        self.encoders = nn.ModuleDict(
            {
                name: Encoder(
                    n_features,
                    n_latent,
                    likelihood=lk,
                    n_hidden=widths[name],
                    n_layers=n_layers,
                    n_covariates=n_covariates if encode_covariates else 0,
                    dropout=dropout,
                )
                for name, (n_features, lk) in modalities.items()
            }
        )
        self.decoders = nn.ModuleDict(
            {
                name: Decoder(
                    n_latent,
                    n_features,
                    likelihood=lk,
                    n_hidden=widths[name],
                    n_layers=n_layers,
                    n_covariates=n_covariates,
                )
                for name, (n_features, lk) in modalities.items()
            }
        )
        self.adversary_weight = adversary_weight
        self.discriminator = self.batch_prior = None
        if adversary_weight > 0 and n_batches > 1:
            n_modalities = len(modalities)
            self.discriminator = _head(n_latent + n_modalities, n_batches, n_hidden)
            # batch logits for each set of experts (a bit per modality), from 0: uniform
            self.batch_prior = nn.Embedding(2**n_modalities, n_batches)
            nn.init.zeros_(self.batch_prior.weight)
        # One affine map per set of experts (a bit per modality, as for batch_prior) from
        # the posterior mean of those experts to the mean of all of them, fitted after
        # training (mvae_sc.train.fit_latent_calibration); the identity until then.
        self.register_buffer(
            "latent_calibration", identity_calibration(2 ** len(modalities), n_latent)
        )
        self.alignment_weight = alignment_weight
        self.alignment_measure = alignment_measure
        self.label_type = label_type
        self.classification_weight = classification_weight
        self.classifier = _head(n_latent, n_label_outputs, n_hidden) if n_label_outputs else None
        # Standardisation constants, set from the data by the model wrapper and saved
        # with the weights: per-feature location/scale of Gaussian modalities, and the
        # location/scale of log-depth for Bernoulli cell factors.
        for name, (n_features, lk) in modalities.items():
            if lk == "gaussian":
                self.register_buffer(f"loc_{name}", torch.zeros(n_features))
                self.register_buffer(f"scale_{name}", torch.ones(n_features))
            if lk == "bernoulli":
                self.register_buffer(f"depth_loc_{name}", torch.zeros(()))
                self.register_buffer(f"depth_scale_{name}", torch.ones(()))

    # ---- data transforms -------------------------------------------------------------
    def standardize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Gaussian modalities: (x - loc) / scale; other modalities unchanged."""
        if self.likelihoods[name] != "gaussian":
            return x
        return (x - getattr(self, f"loc_{name}")) / getattr(self, f"scale_{name}")

    def unstandardize(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`standardize`."""
        if self.likelihoods[name] != "gaussian":
            return x
        return x * getattr(self, f"scale_{name}") + getattr(self, f"loc_{name}")

    def decoder_library(
        self, name: str, library: torch.Tensor | None, x: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """What a decoder gets as a per-cell scale: counts' depth as it is, Bernoulli
        standardised log-depth, Gaussian the log of the cell's observed spread (mean
        squared standardised value of ``x``, None without ``x``)."""
        lk = self.likelihoods[name]
        if lk == "gaussian":
            return None if x is None else torch.log(x.pow(2).mean(-1, keepdim=True) + 1e-3)
        if library is None:
            return None
        if lk == "bernoulli":
            loc, scale = getattr(self, f"depth_loc_{name}"), getattr(self, f"depth_scale_{name}")
            return (torch.log1p(library) - loc) / scale
        return library

    # ---- inference ---------------------------------------------------------------------
    def encode(
        self, batch: dict, modalities: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run every expert on the cells that have its modality (the others get zeros,
        masked out).

        Returns
        -------
        ``mu``, ``logvar`` of shape ``(M, B, D)`` and the presence mask ``(M, B)``, in
        ``self.modality_names`` order. Modalities not in ``modalities`` (when given) are
        masked out as if absent.
        """
        covariates = batch.get("covariates") if self.encode_covariates else None
        mus, logvars, masks = [], [], []
        for name in self.modality_names:

            def expert(x, library, covariates, name=name):
                qz = self.encoders[name](self.standardize(name, x), library, covariates)
                return qz.loc, 2 * torch.log(qz.scale)

            present = batch["mask"][name]
            if modalities is not None and name not in modalities:
                present = torch.zeros_like(present)
            mu, logvar = _on_present_rows(
                present, expert, batch["x"][name], batch["library"][name], covariates
            )
            mus.append(mu)
            logvars.append(logvar)
            masks.append(present)
        return torch.stack(mus), torch.stack(logvars), torch.stack(masks)

    def posterior(
        self, mu: torch.Tensor, logvar: torch.Tensor, presence_mask: torch.Tensor
    ) -> Posterior:
        """The posterior components the objective is taken over (see module docstring)."""
        n_modalities, n_cells = presence_mask.shape
        single = torch.eye(n_modalities, dtype=torch.bool, device=presence_mask.device)
        single = single.unsqueeze(1).expand(n_modalities, n_cells, n_modalities)
        if self.fusion == "moe":
            return Posterior(*fu.moe(mu, logvar, presence_mask), mixture=True, experts=single)
        if self.fusion == "poe":
            joint_mu, joint_logvar = fu.poe(mu, logvar, presence_mask)
            comps_mu, comps_logvar = joint_mu.unsqueeze(0), joint_logvar.unsqueeze(0)
            weights = torch.ones_like(presence_mask[:1], dtype=mu.dtype)
            experts = presence_mask.T.unsqueeze(0)
            if n_modalities > 1:
                single_mu, single_logvar = fu.single_expert_posteriors(mu, logvar, presence_mask)
                comps_mu = torch.cat([comps_mu, single_mu])
                comps_logvar = torch.cat([comps_logvar, single_logvar])
                paired = presence_mask.sum(0, keepdim=True) >= 2
                weights = torch.cat([weights, (presence_mask & paired).to(mu.dtype)])
                experts = torch.cat([experts, single])
            return Posterior(comps_mu, comps_logvar, weights, False, experts)
        comp_mu, comp_logvar, weight = fu.mopoe(mu, logvar, presence_mask)
        members = fu.subset_members(n_modalities, mu.device)
        experts = members.unsqueeze(1).expand(len(weight), n_cells, n_modalities)
        return Posterior(comp_mu, comp_logvar, weight, True, experts)

    def fused_mean(
        self, mu: torch.Tensor, logvar: torch.Tensor, presence_mask: torch.Tensor
    ) -> torch.Tensor:
        """Point estimate of z per cell: the PoE mean, or the mixture mean. ``(B, D)``."""
        if self.fusion == "poe":
            return fu.poe(mu, logvar, presence_mask)[0]
        post = self.posterior(mu, logvar, presence_mask)
        return fu.mixture_mean(post.mu, post.weight > 0)

    def calibrate(self, z: torch.Tensor, presence_mask: torch.Tensor) -> torch.Tensor:
        """``z`` ``(B, D)`` through the affine map of the set of experts each cell's
        posterior fused (``presence_mask`` ``(M, B)``): ``[z, 1] @ latent_calibration[set]``."""
        maps = self.latent_calibration[expert_set_code(presence_mask.T)].to(z.dtype)
        return torch.baddbmm(maps[:, -1:], z.unsqueeze(1), maps[:, :-1]).squeeze(1)

    def pairwise_disagreement(
        self, batch: dict, measure: str = "cross_likelihood"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """How much each pair of a cell's modalities disagree.

        ``measure="cross_likelihood"``: for the ordered pair (a, b), how much worse
        ``x_b`` is explained from modality a's single-expert posterior mean than from
        its own, in nats per feature of b, ``[log p(x_b | z_b) - log p(x_b | z_a)] /
        G_b``; a pair's score is the sum of both directions. ``"symmetric_kl"``:
        ``(KL(q_a || q_b) + KL(q_b || q_a)) / 2`` between the single-expert posteriors.

        Returns
        -------
        The sum over pairs of present modalities ``(B,)`` and the number of such
        pairs ``(B,)``.
        """
        mu, logvar, presence = self.encode(batch)
        if measure != "cross_likelihood":
            return self._expert_disagreement(mu, logvar, presence)
        single_mu, _ = fu.single_expert_posteriors(mu, logvar, presence)
        names = self.modality_names
        # recon[a][name]: log p(x_name | mean of q_a), per cell
        recon = [self.reconstruction(single_mu[a], batch) for a in range(len(names))]

        def score(a: int, b: int) -> torch.Tensor:
            name_a, name_b = names[a], names[b]
            return (recon[b][name_b] - recon[a][name_b]) / batch["x"][name_b].shape[-1] + (
                recon[a][name_a] - recon[b][name_a]
            ) / batch["x"][name_a].shape[-1]

        return _sum_over_pairs(presence, score)

    def _expert_disagreement(
        self,
        mu: torch.Tensor,
        logvar: torch.Tensor,
        presence: torch.Tensor,
        measure: str = "symmetric_kl",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """How far apart the single-expert posteriors of each pair of a cell's
        modalities lie, summed over pairs ``(B,)``, and the number of pairs ``(B,)``:
        their symmetric KL (``measure="symmetric_kl"``) or half the squared distance of
        their means (``"mean_distance"``). The mean distance passes no gradient to the
        experts' variances: it moves where the experts put a cell, not how sure they are
        (what their PoE weights follow; a penalty that could shrink or sharpen an expert
        to move its posterior mean kept a noisy sensor's weight from falling with its
        noise, and within-type variation out of z: README, "Any modality, any fusion")."""
        if measure == "mean_distance":
            logvar = logvar.detach()
        single_mu, single_logvar = fu.single_expert_posteriors(mu, logvar, presence)

        def score(a: int, b: int) -> torch.Tensor:
            if measure == "mean_distance":
                return 0.5 * (single_mu[a] - single_mu[b]).pow(2).sum(-1)
            return symmetric_kl(single_mu[a], single_logvar[a], single_mu[b], single_logvar[b])

        return _sum_over_pairs(presence, score)

    # ---- generative + loss -------------------------------------------------------------
    def reconstruction(
        self, z: torch.Tensor, batch: dict, rows: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-cell log p(x_m | z) for every modality, 0 where the cell lacks it and,
        when ``rows`` (``(B,)`` boolean) is given, 0 outside those rows, which are not
        decoded at all."""
        covariates = batch.get("covariates")
        out = {}
        for name in self.modality_names:

            def log_likelihood(z, x, library, covariates, name=name):
                x = self.standardize(name, x)
                px = self.decoders[name](
                    z, library=self.decoder_library(name, library, x), covariates=covariates
                )
                return px.log_prob(x).sum(-1)

            present = batch["mask"][name] if rows is None else batch["mask"][name] & rows
            out[name] = _on_present_rows(
                present, log_likelihood, z, batch["x"][name],
                batch["library"][name], covariates,
            )  # fmt: skip
        return out

    def loss(
        self,
        batch: dict,
        *,
        kl_weight: float = 1.0,
        stratified: bool = True,
        adversary_scale: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Negative ELBO averaged over the cells of the minibatch, with its parts.

        Parameters
        ----------
        batch
            A minibatch dict.
        kl_weight
            Weight of the KL term in ``loss`` (KL warm-up); ``elbo`` always uses 1.
            With ``alignment_weight > 0``, ``kl_weight * alignment_weight`` times the
            alignment penalty (the ``alignment_measure`` between the single-expert
            posteriors of each pair of a cell's modalities, summed over pairs, averaged
            over cells) is added to ``loss``.
        stratified
            True: one z per available component, the exact weighted sum (K decoder
            passes). False: an unbiased estimate of the same objective with fewer
            passes — one component per cell drawn with probability ``w_k / W`` and
            its ELBO scaled by ``W = sum_k w_k``; for PoE the joint component is kept
            exact and the draw is among the single-expert components (two passes).
        adversary_scale
            Training only: the discriminator's loss and the encoders' adversary loss
            (times ``adversary_weight * adversary_scale``, the warm-up) are added to
            ``loss``; see :meth:`_discrimination`. None (validation): the discriminator
            is only scored.

        Returns
        -------
        ``loss`` (what is minimised), ``elbo``, ``kl``, and ``reconstruction_<mod>``
        (per-cell means); with a supervised head ``classification_loss`` (and
        ``classification_accuracy`` for classes), with a discriminator
        ``discriminator_loss`` and ``discriminator_accuracy``, with
        ``alignment_weight > 0`` ``alignment`` (the penalty, unweighted). The heads see
        every z the ELBO decodes, weighted like its terms.
        """
        mu, logvar, presence = self.encode(batch)
        post = self.posterior(mu, logvar, presence)

        def term(k):
            return post.mu[k], post.logvar[k], post.weight[k], post.experts[k]

        if stratified:
            terms = [term(k) for k in range(post.mu.shape[0])]
        else:
            # PoE keeps its joint component (0) exact and samples one of the others.
            first = 0 if post.mixture else 1
            terms = [term(k) for k in range(first)]
            weight = post.weight[first:]
            total_weight = weight.sum(0)  # (B,)
            if weight.shape[0] and bool((total_weight > 0).any()):
                probs = torch.where(
                    total_weight > 0, weight / total_weight.clamp(min=1e-12), 1.0 / weight.shape[0]
                )
                choice = first + torch.multinomial(probs.T, 1).squeeze(-1)  # (B,)
                cells = torch.arange(choice.shape[0], device=choice.device)
                terms.append(
                    (
                        post.mu[choice, cells],
                        post.logvar[choice, cells],
                        total_weight,
                        post.experts[choice, cells],
                    )
                )
        prior = Normal(torch.zeros_like(mu[0]), torch.ones_like(mu[0]))
        total_recon = torch.zeros_like(mu[0, :, 0])
        total_kl = torch.zeros_like(total_recon)
        recon_parts = {name: torch.zeros_like(total_recon) for name in self.modality_names}
        sampled = []  # (z, w, mean of z, experts) of every term, for the heads on z
        for comp_mu, comp_logvar, w, experts in terms:
            qz = Normal(comp_mu, torch.exp(0.5 * comp_logvar))
            z = qz.rsample()
            if post.mixture:
                kl = mixture_kl_sample(z, post.mu, post.logvar, post.weight)
            else:
                kl = kl_divergence(qz, prior).sum(-1)
            sampled.append((z, w, comp_mu, experts))
            # A term weighs nothing for some cells (a single-expert term of an unpaired
            # cell, a mixture component the cell lacks): their rows are not decoded.
            recon = self.reconstruction(z, batch, rows=w > 0)
            for name, value in recon.items():
                recon_parts[name] = recon_parts[name] + w * value
            total_recon = total_recon + w * sum(recon.values())
            total_kl = total_kl + torch.where(w > 0, w * kl, torch.zeros_like(kl))
        elbo = total_recon - total_kl
        loss = -(total_recon - kl_weight * total_kl)
        out = {"loss": loss.mean(), "elbo": elbo.mean(), "kl": total_kl.mean()}
        if self.alignment_weight > 0 and len(self.modality_names) > 1:
            disagreement, _ = self._expert_disagreement(
                mu, logvar, presence, self.alignment_measure
            )
            out["alignment"] = disagreement.mean()
            # a divergence between posteriors, weighted like the KL term (and warmed up
            # with it: early on, sharp posteriors make it large enough to erase z)
            out["loss"] = out["loss"] + kl_weight * self.alignment_weight * out["alignment"]
        out.update({f"reconstruction_{n}": v.mean() for n, v in recon_parts.items()})
        # the heads on z are small: float32 also under mixed precision
        with torch.autocast(mu.device.type, enabled=False):
            if self.classifier is not None and "label" in batch:
                out.update(self._classification(sampled, batch))
                out["loss"] = out["loss"] + self.classification_weight * out["classification_loss"]
            if self.discriminator is not None and "batch_index" in batch:
                scale = 0.0 if adversary_scale is None else self.adversary_weight * adversary_scale
                out.update(
                    self._discrimination(
                        sampled, batch["batch_index"], scale, batch.get("adversary_weight")
                    )
                )
                if adversary_scale is not None:
                    out["loss"] = out["loss"] + out["discriminator_loss"] + out["adversary_loss"]
        return out

    def _classification(self, sampled: list, batch: dict) -> dict[str, torch.Tensor]:
        """Supervised loss over labelled cells, each z weighted like its ELBO term."""
        labelled = batch["labelled"]
        target = batch["label"]

        def loss(z: torch.Tensor, _mean: torch.Tensor, _experts: torch.Tensor) -> torch.Tensor:
            prediction = self.classifier(z)
            if self.label_type == "categorical":
                return nn.functional.cross_entropy(prediction, target.long(), reduction="none")
            return 0.5 * (prediction.squeeze(-1) - target) ** 2

        per_cell = _term_average(sampled, loss)
        n_labelled = labelled.sum().clamp(min=1)
        out = {"classification_loss": torch.where(labelled, per_cell, 0.0).sum() / n_labelled}
        if self.label_type == "categorical":
            correct = self.classifier(sampled[0][0]).argmax(-1) == target.long()
            out["classification_accuracy"] = (correct & labelled).sum() / n_labelled
        return out

    def _discrimination(
        self,
        sampled: list,
        batch_index: torch.Tensor,
        scale: float,
        cell_weight: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The adversarial game on the mean of every posterior component the ELBO
        decodes (means, not samples: the embedding users get is the mean, and sampling
        noise would hide a batch signal the mean still carries).

        The discriminator sees each mean with the set of experts it fuses (RNA alone,
        ATAC alone, both, ...), so it tells batches apart among posteriors of one kind:
        the encoders cannot fool it by moving one modality's posteriors of one batch
        onto another modality's of the other, which mixes batches by pulling the
        modalities apart. ``batch_prior`` learns how often each batch comes with each set
        of experts; that frequency, not the uniform distribution, is the target, as it
        is what a discriminator can at best say of a z that holds no batch information
        (with unequal batches, or batches measured in different modalities, a uniform
        target would push the encoders to separate cells by batch).

        ``discriminator_loss``: the discriminator's and the prior's cross-entropy on
        detached means (trains only them). ``adversary_loss``: the cross-entropy of the
        discriminator's predictions, with its weights frozen, against the prior, times
        ``scale`` — it trains only the encoders, towards means from which the batch
        cannot be told better than from the experts alone (not towards flipping the
        guess, as a reversed gradient does, which makes the game oscillate). Accuracy
        is on the first component (the joint for PoE).

        ``cell_weight`` (B,), if given, weighs each cell's part of both losses: a cell of
        weight 0 (a cell type that no other batch has) neither teaches the
        discriminator nor is pushed towards other batches' cells."""
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}

        def prior_logits(experts: torch.Tensor) -> torch.Tensor:
            return self.batch_prior(expert_set_code(experts))

        def features(mean: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
            return torch.cat([mean, experts.to(mean.dtype)], -1)

        def disc(_z: torch.Tensor, mean: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
            logits = self.discriminator(features(mean.detach(), experts))
            return nn.functional.cross_entropy(
                logits, batch_index, reduction="none"
            ) + nn.functional.cross_entropy(prior_logits(experts), batch_index, reduction="none")

        def fool(_z: torch.Tensor, mean: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
            logits = torch.func.functional_call(
                self.discriminator, frozen, (features(mean, experts),)
            )
            target = torch.softmax(prior_logits(experts).detach(), -1)
            return -(target * torch.log_softmax(logits, -1)).sum(-1)

        def cell_mean(per_cell: torch.Tensor) -> torch.Tensor:
            return per_cell.mean() if cell_weight is None else (cell_weight * per_cell).mean()

        disc_loss = cell_mean(_term_average(sampled, disc))
        adversary = (
            scale * cell_mean(_term_average(sampled, fool))
            if scale > 0
            else torch.zeros((), device=batch_index.device)
        )
        with torch.no_grad():
            _z, _w, mean, experts = sampled[0]
            guess = self.discriminator(features(mean, experts)).argmax(-1)
        return {
            "discriminator_loss": disc_loss,
            "adversary_loss": adversary,
            "discriminator_accuracy": (guess == batch_index).float().mean(),
        }

    def predict_labels(self, z: torch.Tensor) -> torch.Tensor:
        """The supervised head on ``z``: class probabilities ``(B, K)`` or the predicted
        value ``(B,)`` in standardised units."""
        prediction = self.classifier(z)
        if self.label_type == "categorical":
            return torch.softmax(prediction, -1)
        return prediction.squeeze(-1)


def _on_present_rows(present: torch.Tensor, fn, *inputs):
    """``fn(*inputs)`` (row-wise, a tensor or a tuple of tensors) computed only for the
    rows where ``present`` is true; the other rows get zeros. Experts and decoders skip
    the cells that lack their modality instead of working on zero rows that are masked
    out anyway (in a mosaic, that is every unpaired cell)."""
    rows = present.nonzero(as_tuple=True)[0]  # one device sync, whether or not all are present
    if len(rows) == len(present):
        return fn(*inputs)
    result = fn(*(None if t is None else t[rows] for t in inputs))

    def scatter(part: torch.Tensor) -> torch.Tensor:
        full = part.new_zeros((present.shape[0], *part.shape[1:]))
        return full.index_put((rows,), part)

    return tuple(scatter(r) for r in result) if isinstance(result, tuple) else scatter(result)


def _sum_over_pairs(presence: torch.Tensor, score) -> tuple[torch.Tensor, torch.Tensor]:
    """``score(a, b)`` ``(B,)`` summed over the pairs of modalities a < b each cell has
    (``presence`` ``(M, B)``), and the number of such pairs; both ``(B,)``."""
    total = torch.zeros(presence.shape[1], device=presence.device)
    n_pairs = torch.zeros_like(total)
    for a, b in itertools.combinations(range(presence.shape[0]), 2):
        both = presence[a] & presence[b]
        value = score(a, b)
        total = total + torch.where(both, value, torch.zeros_like(value))
        n_pairs = n_pairs + both.to(total.dtype)
    return total, n_pairs


def _term_average(sampled: list, value) -> torch.Tensor:
    """Per-cell average of ``value(z, mean, experts)`` over the ELBO's terms ``(z, w,
    mean, experts)``, weighted like them: ``sum_k w_k value_k / sum_k w_k``."""
    total = total_w = 0.0
    for z, w, mean, experts in sampled:
        total = total + w * value(z, mean, experts)
        total_w = total_w + w
    return total / total_w.clamp(min=1e-12)


def expert_set_code(experts: torch.Tensor) -> torch.Tensor:
    """``(..., M)`` booleans (which experts a posterior fuses) to one integer per
    posterior, bit m for modality m."""
    bits = 2 ** torch.arange(experts.shape[-1], device=experts.device)
    return (experts.long() * bits).sum(-1)


def identity_calibration(n_sets: int, n_latent: int) -> torch.Tensor:
    """``(n_sets, n_latent + 1, n_latent)`` affine maps ``[z, 1] @ A`` that are the
    identity (the last row of each is the offset)."""
    eye = torch.eye(n_latent + 1, n_latent)
    return eye.expand(n_sets, n_latent + 1, n_latent).clone()


def modality_width(n_features: int, n_hidden: int) -> int:
    """Hidden width of a modality's encoder and decoder: ``n_hidden``, but at most twice
    its number of features (and at least 32).

    An expert much wider than its input fits each cell's noise into the mean of z
    instead of widening its posterior, so PoE stops down-weighting noisy measurements:
    on the two-sensor set (20 and 30 features) the PPG's weight follows its noise with
    Spearman rho -0.43 to -0.57 at width 40-60, but -0.02 to -0.24 (+0.07 on one seed)
    at 256, with no gain in state recovery (README, "Modality weight"). Modalities with
    hundreds of features or more (RNA, ATAC, protein panels) keep ``n_hidden``.
    """
    return int(min(n_hidden, max(32, 2 * n_features)))


def _head(n_latent: int, n_out: int, n_hidden: int) -> nn.Sequential:
    """A small MLP on z: one hidden block of ``min(n_hidden, 128)`` units."""
    width = min(n_hidden, 128)
    return nn.Sequential(MLP(n_latent, width, n_layers=1, dropout=0.1), nn.Linear(width, n_out))
