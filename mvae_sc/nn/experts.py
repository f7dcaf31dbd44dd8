"""Per-modality encoders (Gaussian experts over z) and decoders (likelihoods over x)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Normal

from . import likelihoods as lik

LOGVAR_MIN, LOGVAR_MAX = -12.0, 8.0


class MLP(nn.Module):
    """Linear → LayerNorm → ReLU → Dropout blocks; covariates are fed to every block.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    n_covariates
        Width of the covariate vector (one-hot batches, continuous covariates) that is
        concatenated to the input of every block; 0 for none.
    n_layers
        Number of blocks.
    dropout
        Dropout rate after each block.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        n_covariates: int = 0,
        n_layers: int = 1,
        dropout: float = 0.1,
    ):
        super().__init__()
        widths = [n_in] + [n_out] * n_layers
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "linear": nn.Linear(w_in + n_covariates, w_out),
                    "norm": nn.LayerNorm(w_out),
                    "dropout": nn.Dropout(dropout),
                }
            )
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.n_covariates = n_covariates

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            if self.n_covariates:
                x = torch.cat([x, covariates], dim=-1)
            x = block["dropout"](torch.relu(block["norm"](block["linear"](x))))
        return x


class Encoder(nn.Module):
    """A Gaussian expert q_m(z | x_m) = N(mu, diag(exp(logvar))).

    The input transform depends on the likelihood: counts are depth-normalised and
    log1p-transformed (``log1p(1e4 * x / library)``), binary data are used as they are,
    and Gaussian features arrive already standardised, with the log of their mean square
    appended (the cell's spread, see :class:`Decoder`).
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int,
        *,
        likelihood: str,
        n_hidden: int = 256,
        n_layers: int = 2,
        n_covariates: int = 0,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.likelihood = likelihood
        # Gaussian experts also see the log of the cell's spread (mean squared
        # standardised value), so they can widen when a measurement is unusually noisy.
        n_extra = 1 if likelihood == "gaussian" else 0
        self.body = MLP(
            n_input + n_extra,
            n_hidden,
            n_covariates=n_covariates,
            n_layers=n_layers,
            dropout=dropout,
        )
        self.mean = nn.Linear(n_hidden, n_latent)
        self.logvar = nn.Linear(n_hidden, n_latent)

    def forward(
        self, x: torch.Tensor, library: torch.Tensor, covariates: torch.Tensor | None = None
    ) -> Normal:
        # x: (B, G); library: (B, 1)
        if self.likelihood in lik.COUNT_LIKELIHOODS:
            x = torch.log1p(1e4 * x / library.clamp(min=1.0))
        elif self.likelihood == "gaussian":
            x = torch.cat([x, torch.log(x.pow(2).mean(-1, keepdim=True) + 1e-3)], dim=-1)
        h = self.body(x, covariates)
        # the posterior's parameters in float32 also under mixed precision: they feed
        # the fusion, the KL and the sampled z (two small products)
        with torch.autocast(h.device.type, enabled=False):
            h = h.float()
            logvar = self.logvar(h).clamp(LOGVAR_MIN, LOGVAR_MAX)
            return Normal(self.mean(h), torch.exp(0.5 * logvar))


class Decoder(nn.Module):
    """p(x_m | z, covariates) with the modality's likelihood.

    * ``nb`` / ``zinb`` / ``poisson``: ``mean = library * softmax(W h)``; NB inverse
      dispersion is learned per feature; ZINB adds per-entry dropout logits.
    * ``bernoulli``: ``p = sigmoid(W h) * region_factor * cell_factor`` where
      ``region_factor = sigmoid(r)`` is learned per feature and ``cell_factor`` is a
      learned monotone function of the cell's standardised log-depth (``None`` depth gives
      a cell factor of 1: "normalised accessibility").
    * ``gaussian``: ``Normal(W h, var)`` on standardised features, with a learned
      per-feature variance scaled per cell by ``spread ** gamma``: ``spread`` is the
      cell's observed mean squared standardised value and ``gamma`` a learned exponent
      (0 at start: homoscedastic). A cell whose measurement is noisier than usual gets a
      wider likelihood, so the ELBO rewards its expert for being less confident.
    """

    def __init__(
        self,
        n_latent: int,
        n_output: int,
        *,
        likelihood: str,
        n_hidden: int = 256,
        n_layers: int = 2,
        n_covariates: int = 0,
        dropout: float = 0.0,
    ):
        super().__init__()
        if likelihood not in lik.LIKELIHOODS:
            raise ValueError(f"Unknown likelihood {likelihood!r}; choose from {lik.LIKELIHOODS}.")
        self.likelihood = likelihood
        self.body = MLP(
            n_latent, n_hidden, n_covariates=n_covariates, n_layers=n_layers, dropout=dropout
        )
        self.head = nn.Linear(n_hidden + n_covariates, n_output)
        if likelihood in ("nb", "zinb"):
            self.log_theta = nn.Parameter(torch.full((n_output,), 1.0))
        if likelihood == "zinb":
            self.zi_head = nn.Linear(n_hidden + n_covariates, n_output)
        if likelihood == "bernoulli":
            self.region_logit = nn.Parameter(torch.full((n_output,), 2.0))
            self.depth_slope = nn.Parameter(torch.tensor(1.0))
            self.depth_offset = nn.Parameter(torch.tensor(2.0))
        if likelihood == "gaussian":
            self.logvar = nn.Parameter(torch.zeros(n_output))
            self.spread_exponent = nn.Parameter(torch.tensor(0.0))

    def _features(self, z: torch.Tensor, covariates: torch.Tensor | None) -> torch.Tensor:
        h = self.body(z, covariates)
        if self.body.n_covariates:
            h = torch.cat([h, covariates], dim=-1)
        return h

    def forward(
        self,
        z: torch.Tensor,
        *,
        library: torch.Tensor | None,
        covariates: torch.Tensor | None = None,
    ) -> Distribution:
        """Return the distribution of x given z.

        Parameters
        ----------
        z
            ``(B, n_latent)``.
        library
            Count likelihoods: total counts per cell ``(B, 1)``. Bernoulli: standardised
            log-depth ``(B, 1)`` for the cell factor, or None for normalised
            accessibility. Gaussian: the log of the cell's observed spread ``(B, 1)``,
            or None for the average cell.
        covariates
            ``(B, n_covariates)`` or None.
        """
        h = self._features(z, covariates)
        out = self.head(h).float()  # the product may run in bfloat16; what follows not
        if self.likelihood == "nb":
            return lik.NegativeBinomialLogits(out, library, self.log_theta)
        if self.likelihood in ("zinb", "poisson"):
            mu = library * torch.softmax(out, dim=-1)
            if self.likelihood == "poisson":
                return lik.poisson(mu)
            theta = torch.exp(self.log_theta)
            return lik.ZeroInflatedNegativeBinomial(mu, theta, self.zi_head(h).float())
        if self.likelihood == "bernoulli":
            cell_logit = None
            if library is not None:
                cell_logit = self.depth_slope * library + self.depth_offset
            return lik.ScaledBernoulli(out, self.region_logit, cell_logit)
        logvar = self.logvar if library is None else self.logvar + self.spread_exponent * library
        return lik.gaussian(out, torch.exp(logvar).expand_as(out))

    def normalized_mean(self, z: torch.Tensor, covariates: torch.Tensor | None) -> torch.Tensor:
        """Depth-free expected value: expression fractions (counts), accessibility
        probability (Bernoulli), or the mean (Gaussian, standardised scale)."""
        h = self._features(z, covariates)
        out = self.head(h)
        if self.likelihood in ("nb", "zinb", "poisson"):
            scale = torch.softmax(out, dim=-1)
            if self.likelihood == "zinb":
                scale = scale * (1 - torch.sigmoid(self.zi_head(h)))
            return scale
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out) * torch.sigmoid(self.region_logit)
        return out
