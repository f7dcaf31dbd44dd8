"""A mosaic RNA + ATAC simulator with ground truth, and held-out truth helpers.

The generative story (all draws from one ``numpy.random.Generator`` seeded by ``seed``):

1. **Cell types** sit on a two-level tree: a few lineages, each with sister types. Every
   type has an activity vector over ``n_programs`` gene programs,
   ``a_type = a_lineage + N(0, sister_scale^2)``, so sisters differ by less than lineages.
   A cell's program activity adds a small per-cell jitter, and every cell also gets
   ``n_continuous`` shared continuous factors ``f ~ N(0, 1)`` (within-type variation).
   ``obsm["true_latent"] = [a_cell, f]``.
2. **RNA**: ``eta = base + a_cell @ W_prog + f @ W_cont + batch_lfc[batch]`` (programs and
   factors touch sparse gene sets), ``mean = library * softmax(eta)``, counts ~ negative
   binomial with gene-wise inverse dispersion (sampled sparsely, see
   ``_sample_negative_binomial``). Library sizes are lognormal
   with a per-batch shift.
3. **ATAC**: every peak is linked to a gene (``atac.var["gene"]``) and is one of
   ``"linked"`` (its logit follows the linked gene's program and factor effects),
   ``"type_specific"`` (open in one type or in one lineage, information RNA does not
   carry in the same form) or ``"constitutive"`` (no cell-type signal).
   ``p = sigmoid(base + effect + batch_shift[batch]) * region_factor * cell_factor``,
   accessibility ~ Bernoulli(p).
4. **Mosaic**: every cell is simulated with both modalities, then a random
   ``frac_rna_only`` of cells lose ATAC and ``frac_atac_only`` lose RNA. The dropped rows
   are kept in ``mdata.uns["heldout"]`` (see :func:`heldout`).

Memory: matrices are generated in chunks of cells so that no dense temporary is larger
than about ``2**22`` entries (float32), whatever ``n_cells``; peak memory is dominated by
the sparse outputs (about 8 bytes per non-zero: float32 data + int32 index).
"""

from __future__ import annotations

import copy
import logging
import numbers
from collections.abc import Mapping
from typing import Any

import anndata as ad
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger(__name__)

__all__ = ["synthetic_multiome", "heldout", "hide_modality"]

# Structure of the simulation that is not exposed as arguments (documented, fixed so that
# the default data set stays the same across releases).
_N_CONTINUOUS = 3  # shared continuous within-type factors
_SISTER_SCALE = 0.45  # spread of sister types around their lineage (lineage spread = 1)
_CELL_JITTER = 0.15  # per-cell jitter of program activities
_PROGRAM_GENE_FRAC = 0.06  # fraction of genes in each program
_CONTINUOUS_GENE_FRAC = 0.10  # fraction of genes touched by each continuous factor
_MEDIAN_LIBRARY = 2500.0  # median RNA UMIs per cell
_LIBRARY_LOG_SD = 0.5  # per-cell spread of log library size
_PEAK_KIND_FRACS = {"linked": 0.5, "type_specific": 0.2, "constitutive": 0.3}
_TYPE_SPECIFIC_LOGIT = (0.5, 1.5)  # range of the opening of type-specific peaks
_LINKED_GAIN = (0.4, 1.2)  # range of the gain of linked peaks on their gene's effects
_OUTCOME_NOISE = 0.5  # sd of the noise of obs["outcome"]
_ATAC_BATCH_SCALE = 0.5  # ATAC peak-wise batch shift sd, relative to batch_effect
_PEAK_BASE_LOGIT = -3.8  # mean peak base logit; sets the overall ATAC density
_CHUNK_ENTRIES = 2**22  # cells x features per dense temporary
_N_CHROMOSOMES = 22


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def _check_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number in [0, 1], got {type(value).__name__}.")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"`{name}` must be in [0, 1], got {value}.")
    return float(value)


def _names(prefix: str, n: int, *, min_width: int = 4) -> np.ndarray:
    width = max(min_width, len(str(max(n - 1, 0))))
    return np.array([f"{prefix}_{i:0{width}d}" for i in range(n)], dtype=object)


def _sparse_loadings(
    rng: np.random.Generator, n_rows: int, n_cols: int, *, frac: float, scale: float
) -> np.ndarray:
    """Dense (n_rows, n_cols) loadings, each row non-zero on a random `frac` of columns."""
    mask = rng.random((n_rows, n_cols)) < frac
    return (mask * rng.normal(0.0, scale, size=(n_rows, n_cols))).astype(np.float32)


def _assign_types_and_batches(
    rng: np.random.Generator, n_cells: int, n_cell_types: int, n_batches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cell types and batches, not confounded; every type in every batch when possible."""
    base = rng.dirichlet(np.full(n_cell_types, 4.0))
    base = 0.7 * base + 0.3 / n_cell_types  # no vanishingly rare type
    batch = rng.integers(0, n_batches, size=n_cells)
    cell_type = np.empty(n_cells, dtype=np.int64)
    for b in range(n_batches):
        in_batch = np.flatnonzero(batch == b)
        props = rng.dirichlet(150.0 * base)  # batch proportions vary somewhat around base
        cell_type[in_batch] = rng.choice(n_cell_types, size=in_batch.size, p=props)
    # Guarantee coverage: n_types * n_batches cells at random positions get every
    # (type, batch) combination once.
    n_combos = n_cell_types * n_batches
    if n_cells >= n_combos:
        slots = rng.choice(n_cells, size=n_combos, replace=False)
        combos = np.arange(n_combos)
        cell_type[slots] = combos % n_cell_types
        batch[slots] = combos // n_cell_types
    return cell_type, batch


def _genomic_layout(
    rng: np.random.Generator, n_genes: int, n_peaks: int
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Fake chromosomes, gene positions and peaks placed around their linked gene."""
    # Peak counts per gene vary (gamma weights): a few genes carry many peaks.
    gene_weight = rng.gamma(1.0, 1.0, size=n_genes)
    peak_gene = rng.choice(n_genes, size=n_peaks, p=gene_weight / gene_weight.sum())
    peaks_per_gene = np.bincount(peak_gene, minlength=n_genes)
    peak_step = 2_000  # distance between neighbouring peak slots of one gene
    max_span = (int(peaks_per_gene.max(initial=0)) + 1) * peak_step

    chrom_of_gene = np.sort(rng.integers(0, _N_CHROMOSOMES, size=n_genes))
    gaps = rng.integers(2 * max_span + 20_000, 2 * max_span + 300_000, size=n_genes)
    # Restart the coordinate at each chromosome.
    tss = np.cumsum(gaps)
    first_of_chrom = np.r_[True, chrom_of_gene[1:] != chrom_of_gene[:-1]]
    chrom_offset = np.maximum.accumulate(np.where(first_of_chrom, tss - gaps, 0))
    tss = tss - chrom_offset + max_span
    gene_length = rng.integers(2_000, 80_000, size=n_genes)
    chrom_names = np.array([f"chr{i + 1}" for i in range(_N_CHROMOSOMES)], dtype=object)

    gene_var = pd.DataFrame(
        {
            "chrom": pd.Categorical(chrom_names[chrom_of_gene], categories=chrom_names),
            "start": tss.astype(np.int64),
            "end": (tss + gene_length).astype(np.int64),
        }
    )

    # Rank of each peak within its gene, peaks centred on the TSS, 2 kb apart.
    order = np.lexsort((rng.random(n_peaks), peak_gene))
    rank = np.empty(n_peaks, dtype=np.int64)
    gene_start_index = np.r_[0, np.cumsum(peaks_per_gene)[:-1]]
    rank[order] = np.arange(n_peaks) - gene_start_index[peak_gene[order]]
    offset = (rank - peaks_per_gene[peak_gene] // 2) * peak_step
    start = tss[peak_gene] + offset + rng.integers(0, 1_000, size=n_peaks)
    width = rng.integers(300, 900, size=n_peaks)
    peak_var = pd.DataFrame(
        {
            "chrom": pd.Categorical(chrom_names[chrom_of_gene[peak_gene]], categories=chrom_names),
            "start": start.astype(np.int64),
            "end": (start + width).astype(np.int64),
        }
    )
    # Sort peaks by genomic position, as a peak caller would write them.
    genomic_order = np.lexsort((peak_var["start"].to_numpy(), chrom_of_gene[peak_gene]))
    peak_var = peak_var.iloc[genomic_order].reset_index(drop=True)
    return gene_var, peak_var, peak_gene[genomic_order]


def _chunks(n_cells: int, n_features: int) -> list[slice]:
    step = max(1, _CHUNK_ENTRIES // max(n_features, 1))
    return [slice(i, min(i + step, n_cells)) for i in range(0, n_cells, step)]


def _csr_part(
    n_rows: int, row: np.ndarray, col: np.ndarray, data: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Compact per-chunk CSR pieces (row counts, int32 columns, float32 data or None for
    all-ones) from row-major sorted coordinates."""
    return (
        np.bincount(row, minlength=n_rows),
        col.astype(np.int32),
        None if data is None else data.astype(np.float32),
    )


def _assemble_csr(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], n_cols: int
) -> sp.csr_matrix:
    """Stack the chunks' CSR pieces into one CSR float32 matrix (`data` None means 1)."""
    row_counts = np.concatenate([p[0] for p in parts])
    indices = np.concatenate([p[1] for p in parts])
    data = np.concatenate([np.ones(p[1].size, np.float32) if p[2] is None else p[2] for p in parts])
    indptr = np.zeros(row_counts.size + 1, dtype=np.int64)
    np.cumsum(row_counts, out=indptr[1:])
    if indptr[-1] <= np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    return sp.csr_matrix((data, indices, indptr), shape=(row_counts.size, n_cols))


_NB_INVERSION_MAX_MEAN = 2.0  # above this, draw Gamma-Poisson instead of inverting the CDF


def _sample_negative_binomial(
    rng: np.random.Generator, mean: np.ndarray, theta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact NB(mean, inverse dispersion theta) draws as non-zero (row, col, count).

    One uniform per entry decides zero vs non-zero against P(0) = (theta/(theta+mean))^theta,
    which is all most entries need. Non-zero entries with a small mean continue the CDF
    inversion with the same uniform (pmf recursion, all entries share the step k); those
    with a larger mean are drawn as Gamma-Poisson conditioned on being non-zero.
    mean: (n_rows, n_genes) float32, theta: (n_genes,) float32.
    """
    n_genes = mean.shape[1]
    uniform = rng.random(mean.size, dtype=np.float32)
    p_zero = np.exp(theta * (np.log(theta) - np.log(theta + mean))).ravel()
    flat = np.flatnonzero(uniform >= p_zero)
    row, col = np.divmod(flat, n_genes)
    mu = mean.ravel()[flat].astype(np.float64)
    th = theta[col].astype(np.float64)
    counts = np.zeros(flat.size, dtype=np.float64)

    # CDF inversion for entries with a small mean.
    small = np.flatnonzero(mu <= _NB_INVERSION_MAX_MEAN)
    u = uniform[flat[small]].astype(np.float64)
    pmf = p_zero[flat[small]].astype(np.float64)
    cdf = pmf.copy()
    ratio = mu[small] / (th[small] + mu[small])
    th_small = th[small]
    k = 0
    while small.size:
        pmf *= (k + th_small) / (k + 1) * ratio
        k += 1
        cdf += pmf
        done = (u < cdf) | (pmf < 1e-300)  # the second guards against rounding at u ~ 1
        counts[small[done]] = k
        keep = ~done
        small, u, pmf, cdf, ratio, th_small = (
            a[keep] for a in (small, u, pmf, cdf, ratio, th_small)
        )

    # Gamma-Poisson, conditioned on > 0 by redrawing, for entries with a large mean.
    large = np.flatnonzero(mu > _NB_INVERSION_MAX_MEAN)
    while large.size:
        draw = rng.poisson(mu[large] * rng.standard_gamma(th[large]) / th[large])
        counts[large] = draw
        large = large[draw == 0]
    return row, col, counts.astype(np.float32)


def _outcome(
    program: np.ndarray, factor: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, pd.Categorical]:
    """A continuous outcome driven by one program and one continuous factor, and the
    binary response it implies (see :func:`synthetic_multiome`)."""

    def standardised(v: np.ndarray) -> np.ndarray:
        return (v - v.mean()) / max(float(v.std()), 1e-12)

    outcome = 0.7 * standardised(program) + 1.0 * standardised(factor)
    outcome = (outcome + rng.normal(0.0, _OUTCOME_NOISE, size=len(outcome))).astype(np.float64)
    response = pd.Categorical(
        np.where(outcome > 0, "responder", "non_responder"),
        categories=["non_responder", "responder"],
    )
    return outcome, response


def synthetic_multiome(
    n_cells: int = 5000,
    *,
    n_genes: int = 2000,
    n_peaks: int = 6000,
    n_cell_types: int = 8,
    frac_rna_only: float = 0.2,
    frac_atac_only: float = 0.2,
    n_batches: int = 2,
    batch_effect: float = 0.5,
    batch_type_specific: float = 0.0,
    seed: int = 0,
) -> mudata.MuData:
    """Simulate a mosaic single-cell RNA + ATAC data set with ground truth.

    Cells come from hierarchical cell types (lineages with close sister types) with
    continuous within-type variation; RNA counts are negative binomial with lognormal
    library sizes; ATAC is binary accessibility of peaks linked to genes. Batches shift
    expression, accessibility and depth. Every cell is simulated with both modalities,
    then some lose one of them (mosaic data, the way MuData holds it: no zero rows).

    Parameters
    ----------
    n_cells
        Number of cells in the union of both modalities.
    n_genes
        Number of genes (RNA features).
    n_peaks
        Number of peaks (ATAC features).
    n_cell_types
        Number of cell types, arranged in ``round(sqrt(n_cell_types))`` lineages.
    frac_rna_only
        Fraction of cells measured in RNA only (their ATAC is held out).
    frac_atac_only
        Fraction of cells measured in ATAC only (their RNA is held out). The remaining
        ``1 - frac_rna_only - frac_atac_only`` cells are paired.
    n_batches
        Number of batches; every cell type appears in every batch when
        ``n_cells >= n_cell_types * n_batches``.
    batch_effect
        Scale of the batch effect: standard deviation of the per-batch gene-wise
        log-fold changes on RNA (peak-wise logit shifts on ATAC are half of it, and
        per-batch depth shifts are ``0.5 * batch_effect`` in log scale). ``0`` disables it.
    batch_type_specific
        Share of the batch effect's variance that differs between cell types, in [0, 1].
        ``0`` (default): a batch shifts a gene (a peak) the same way in every cell type.
        ``s > 0``: batch ``b``'s shift in type ``t`` is ``sqrt(1 - s) * shared_b +
        sqrt(s) * own_bt``, both drawn with the same spread, as when a lab's dissociation or
        handling stresses some cell types more than others. Mean-centring each batch no
        longer removes such an effect. The type-specific parts come from a separate
        random stream, so ``0`` gives the data of earlier versions.
    seed
        Seed of the random number generator; the same seed gives identical data.

    Returns
    -------
    MuData with

    - ``mod["rna"]``: paired + RNA-only cells; ``X`` CSR float32 integer counts;
      ``var``: ``chrom``, ``start``, ``end``, ``true_dispersion``.
    - ``mod["atac"]``: paired + ATAC-only cells; ``X`` CSR float32 0/1;
      ``var_names`` like ``"chr1:1000-1500"``; ``var``: ``chrom``, ``start``, ``end``,
      ``gene`` (linked gene), ``peak_kind``, ``true_region_factor``.
    - ``obs`` (categoricals): ``cell_type``, ``batch``, ``modality``
      (``"paired"``/``"rna_only"``/``"atac_only"``); each modality's ``obs`` also
      carries ``cell_type`` and ``batch``. ``obsmap[mod]`` is 0 where a cell lacks ``mod``.
    - ``obs["outcome"]`` (float) and ``obs["response"]`` (categorical,
      ``"responder"``/``"non_responder"``): a per-cell clinical-like outcome that
      depends on the latent state, for supervised models. ``outcome = 0.7 *
      std(a_cell[:, 0]) + 1.0 * std(f[:, 0]) + N(0, 0.5^2)`` (``std`` = standardised over
      cells: gene program 0 and continuous factor 0), ``response = outcome > 0``. Drawn
      from a separate random stream, so the omics are those of earlier versions.
    - ``obsm["true_latent"]``: the true program activities and continuous factors, named
      in ``uns["synthetic_multiome"]["true_latent_columns"]`` (``"program_<i>"``,
      ``"factor_<i>"``).
    - ``uns["heldout"]``: the dropped measurements (absent when every cell is paired);
      read them with :func:`heldout`.
    - ``uns["synthetic_multiome"]["params"]``: the arguments used.

    Notes
    -----
    The mosaic split is drawn after all measurements, so the same `seed` with other
    ``frac_*`` values gives the same cells and counts, split differently.

    Time and memory scale linearly with cells x features: about 1.5 s for the defaults,
    about 70 s (CPU) and 3.6 GB peak memory for 50k cells x 20k genes x 50k peaks. Dense
    temporaries are limited to chunks of ``2**22`` entries; the rest is the sparse
    outputs (8 bytes per non-zero) and their per-modality copies.

    Examples
    --------
    >>> from mvae_sc.datasets import synthetic_multiome
    >>> mdata = synthetic_multiome(1000, n_genes=200, n_peaks=600, seed=0)
    >>> mdata.mod["rna"].n_obs, mdata.mod["atac"].n_obs  # 600 paired + 200 single each
    (800, 800)
    """
    n_cells = _check_int("n_cells", n_cells, minimum=1)
    n_genes = _check_int("n_genes", n_genes, minimum=1)
    n_peaks = _check_int("n_peaks", n_peaks, minimum=1)
    n_cell_types = _check_int("n_cell_types", n_cell_types, minimum=1)
    n_batches = _check_int("n_batches", n_batches, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    frac_rna_only = _check_fraction("frac_rna_only", frac_rna_only)
    frac_atac_only = _check_fraction("frac_atac_only", frac_atac_only)
    batch_type_specific = _check_fraction("batch_type_specific", batch_type_specific)
    if frac_rna_only + frac_atac_only > 1.0:
        raise ValueError(
            f"`frac_rna_only + frac_atac_only` must be <= 1, got "
            f"{frac_rna_only} + {frac_atac_only}; lower one of them."
        )
    if isinstance(batch_effect, bool) or not isinstance(batch_effect, numbers.Real):
        raise TypeError(f"`batch_effect` must be a number >= 0, got {type(batch_effect).__name__}.")
    if batch_effect < 0:
        raise ValueError(f"`batch_effect` must be >= 0, got {batch_effect}.")
    batch_effect = float(batch_effect)

    rng = np.random.default_rng(seed)

    # --- cell types, lineages and latent state --------------------------------------
    n_lineages = max(1, int(round(np.sqrt(n_cell_types))))
    lineage_of_type = np.arange(n_cell_types) % n_lineages
    n_programs = max(6, n_cell_types + 2)
    lineage_activity = rng.normal(0.0, 1.0, size=(n_lineages, n_programs))
    type_activity = lineage_activity[lineage_of_type] + rng.normal(
        0.0, _SISTER_SCALE, size=(n_cell_types, n_programs)
    )

    cell_type, batch = _assign_types_and_batches(rng, n_cells, n_cell_types, n_batches)
    activity = type_activity[cell_type] + rng.normal(0.0, _CELL_JITTER, size=(n_cells, n_programs))
    factors = rng.normal(0.0, 1.0, size=(n_cells, _N_CONTINUOUS))
    true_latent = np.hstack([activity, factors]).astype(np.float32)

    # --- RNA parameters --------------------------------------------------------------
    w_program = _sparse_loadings(rng, n_programs, n_genes, frac=_PROGRAM_GENE_FRAC, scale=1.2)
    w_continuous = _sparse_loadings(
        rng, _N_CONTINUOUS, n_genes, frac=_CONTINUOUS_GENE_FRAC, scale=0.6
    )
    w_rna = np.vstack([w_program, w_continuous])  # (n_latent, n_genes)
    gene_base = rng.normal(0.0, 1.2, size=n_genes).astype(np.float32)
    theta = np.exp(rng.normal(np.log(3.0), 0.6, size=n_genes)).astype(np.float32)
    batch_lfc = rng.normal(0.0, batch_effect, size=(n_batches, n_genes)).astype(np.float32)
    batch_depth = rng.normal(0.0, 0.5 * batch_effect, size=n_batches)
    depth_noise = rng.normal(0.0, 1.0, size=(n_cells, 2))
    log_library = np.log(_MEDIAN_LIBRARY) + batch_depth[batch] + _LIBRARY_LOG_SD * depth_noise[:, 0]
    library = np.exp(log_library).astype(np.float32)

    # --- ATAC parameters -------------------------------------------------------------
    gene_var, peak_var, peak_gene = _genomic_layout(rng, n_genes, n_peaks)
    kinds = np.array(list(_PEAK_KIND_FRACS), dtype=object)
    peak_kind = rng.choice(kinds, size=n_peaks, p=list(_PEAK_KIND_FRACS.values()))
    is_linked = peak_kind == "linked"
    gain = rng.uniform(*_LINKED_GAIN, size=n_peaks).astype(np.float32)
    w_atac = (w_rna[:, peak_gene] * (gain * is_linked)).astype(np.float32)
    # Type-specific peaks: open (+_TYPE_SPECIFIC_LOGIT) in one type, or in 30% of cases in
    # every type of one lineage.
    type_effect = np.zeros((n_cell_types, n_peaks), dtype=np.float32)
    specific = np.flatnonzero(peak_kind == "type_specific")
    strength = rng.uniform(*_TYPE_SPECIFIC_LOGIT, size=specific.size).astype(np.float32)
    by_lineage = rng.random(specific.size) < 0.3
    chosen_type = rng.integers(0, n_cell_types, size=specific.size)
    type_effect[chosen_type, specific] = strength
    chosen_lineage = rng.integers(0, n_lineages, size=specific.size)
    in_lineage = lineage_of_type[:, None] == chosen_lineage[None, :]  # (n_types, n_specific)
    type_effect[:, specific[by_lineage]] = np.where(
        in_lineage[:, by_lineage], strength[by_lineage], 0.0
    )
    peak_base = rng.normal(_PEAK_BASE_LOGIT, 1.0, size=n_peaks).astype(np.float32)
    region_factor = rng.beta(6.0, 2.0, size=n_peaks).astype(np.float32)
    batch_shift = rng.normal(
        0.0, _ATAC_BATCH_SCALE * batch_effect, size=(n_batches, n_peaks)
    ).astype(np.float32)
    batch_atac_depth = rng.normal(0.0, 0.5 * batch_effect, size=n_batches)
    # ATAC depth correlates (rho = 0.5) with RNA depth, as in real multiome data.
    atac_depth_noise = 0.5 * depth_noise[:, 0] + np.sqrt(0.75) * depth_noise[:, 1]
    cell_factor = np.exp(batch_atac_depth[batch] + 0.35 * atac_depth_noise).astype(np.float32)

    # --- offsets per (type, batch) pair, row combo = type * n_batches + batch ---------
    # RNA: gene_base + the batch's log-fold changes; ATAC logit: peak_base + type_effect
    # + the batch's shifts. A share s of the batch part is type-specific, drawn from an
    # own stream, so s = 0 leaves the data as before.
    rna_offset = np.broadcast_to(
        (gene_base + batch_lfc)[None, :, :], (n_cell_types, n_batches, n_genes)
    )
    offset = peak_base + type_effect[:, None, :] + batch_shift[None, :, :]
    if batch_type_specific > 0:
        type_rng = np.random.default_rng([seed, 2])
        shared, own = np.sqrt(1.0 - batch_type_specific), np.sqrt(batch_type_specific)
        own_lfc = type_rng.normal(0.0, batch_effect, size=(n_batches, n_cell_types, n_genes))
        rna_offset = gene_base + shared * batch_lfc[None] + own * own_lfc.transpose(1, 0, 2)
        own_shift = type_rng.normal(
            0.0, _ATAC_BATCH_SCALE * batch_effect, size=(n_cell_types, n_batches, n_peaks)
        )
        offset = peak_base + type_effect[:, None, :] + shared * batch_shift[None] + own * own_shift
    combo = cell_type * n_batches + batch
    rna_offset = rna_offset.astype(np.float32).reshape(n_cell_types * n_batches, n_genes)
    offset = offset.astype(np.float32).reshape(n_cell_types * n_batches, n_peaks)

    # --- sample counts in chunks of cells --------------------------------------------
    rna_parts = []
    for rows in _chunks(n_cells, n_genes):
        mean = true_latent[rows] @ w_rna  # eta, turned into the NB mean in place below
        mean += rna_offset[combo[rows]]
        mean -= mean.max(axis=1, keepdims=True)
        np.exp(mean, out=mean)
        mean *= (library[rows] / mean.sum(axis=1))[:, None]
        row, col, counts = _sample_negative_binomial(rng, mean, theta)
        rna_parts.append(_csr_part(mean.shape[0], row, col, counts))
    rna_x = _assemble_csr(rna_parts, n_genes)

    atac_parts = []
    for rows in _chunks(n_cells, n_peaks):
        prob = true_latent[rows] @ w_atac  # the logit, turned into p in place below
        prob += offset[combo[rows]]
        with np.errstate(over="ignore"):  # exp(-logit) = inf gives p = 0, as it should
            np.exp(np.negative(prob, out=prob), out=prob)
        prob += 1.0
        np.divide(region_factor, prob, out=prob)
        prob *= cell_factor[rows, None]
        flat = np.flatnonzero(rng.random(prob.shape, dtype=np.float32) < prob)
        row, col = np.divmod(flat, n_peaks)
        atac_parts.append(_csr_part(prob.shape[0], row, col, None))
    atac_x = _assemble_csr(atac_parts, n_peaks)

    # --- mosaic ----------------------------------------------------------------------
    n_rna_only = int(round(frac_rna_only * n_cells))
    n_atac_only = min(int(round(frac_atac_only * n_cells)), n_cells - n_rna_only)
    modality = np.full(n_cells, "paired", dtype=object)
    shuffled = rng.permutation(n_cells)
    modality[shuffled[:n_rna_only]] = "rna_only"
    modality[shuffled[n_rna_only : n_rna_only + n_atac_only]] = "atac_only"
    has_rna = modality != "atac_only"
    has_atac = modality != "rna_only"

    # --- assemble --------------------------------------------------------------------
    obs_names = _names("cell", n_cells, min_width=5)
    type_names = np.array([f"type_{t}" for t in range(n_cell_types)], dtype=object)
    batch_names = np.array([f"batch_{b}" for b in range(n_batches)], dtype=object)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(type_names[cell_type], categories=type_names),
            "batch": pd.Categorical(batch_names[batch], categories=batch_names),
            "modality": pd.Categorical(modality, categories=["paired", "rna_only", "atac_only"]),
        },
        index=pd.Index(obs_names, name=None),
    )
    gene_names = _names("gene", n_genes)
    gene_var.index = pd.Index(gene_names)
    gene_var["true_dispersion"] = theta
    peak_var.index = pd.Index(
        peak_var["chrom"].astype(str)
        + ":"
        + peak_var["start"].astype(str)
        + "-"
        + peak_var["end"].astype(str)
    )
    peak_var["gene"] = pd.Categorical(gene_names[peak_gene], categories=gene_names)
    peak_var["peak_kind"] = pd.Categorical(peak_kind, categories=list(_PEAK_KIND_FRACS))
    peak_var["true_region_factor"] = region_factor

    per_mod_obs = obs[["cell_type", "batch"]]
    rna = ad.AnnData(X=rna_x[has_rna], obs=per_mod_obs[has_rna].copy(), var=gene_var)
    atac = ad.AnnData(X=atac_x[has_atac], obs=per_mod_obs[has_atac].copy(), var=peak_var)
    with mudata.set_options(pull_on_update=False):
        mdata = mudata.MuData({"rna": rna, "atac": atac}, obs=obs.copy())
    mdata.obsm["true_latent"] = true_latent
    mdata.obs["outcome"], mdata.obs["response"] = _outcome(
        activity[:, 0], factors[:, 0], np.random.default_rng([seed, 1])
    )
    held: dict[str, dict[str, Any]] = {}
    if n_rna_only:
        held["atac"] = {"X": atac_x[~has_atac], "obs_names": obs_names[~has_atac].astype(str)}
    if n_atac_only:
        held["rna"] = {"X": rna_x[~has_rna], "obs_names": obs_names[~has_rna].astype(str)}
    if held:
        mdata.uns["heldout"] = held
    mdata.uns["synthetic_multiome"] = {
        "params": {
            "n_cells": n_cells,
            "n_genes": n_genes,
            "n_peaks": n_peaks,
            "n_cell_types": n_cell_types,
            "frac_rna_only": frac_rna_only,
            "frac_atac_only": frac_atac_only,
            "n_batches": n_batches,
            "batch_effect": batch_effect,
            "batch_type_specific": batch_type_specific,
            "seed": seed,
        },
        # what each column of obsm["true_latent"] is
        "true_latent_columns": [f"program_{i}" for i in range(n_programs)]
        + [f"factor_{i}" for i in range(_N_CONTINUOUS)],
    }
    logger.debug(
        "simulated %d cells (%d paired, %d rna_only, %d atac_only)",
        n_cells,
        int((has_rna & has_atac).sum()),
        n_rna_only,
        n_atac_only,
    )
    return mdata


def _heldout_entry(mdata: mudata.MuData, modality: str) -> Mapping[str, Any] | None:
    store = mdata.uns.get("heldout")
    if not isinstance(store, Mapping):
        return None
    entry = store.get(modality)
    return entry if isinstance(entry, Mapping) else None


def heldout(mdata: mudata.MuData, modality: str) -> ad.AnnData:
    """Return the held-out measurements of `modality` as an AnnData.

    Held-out truth is what a cell would have shown in a modality it lacks in ``mdata``
    (written by :func:`synthetic_multiome` and :func:`hide_modality` into
    ``mdata.uns["heldout"][modality]`` as ``{"X": csr, "obs_names": array}``).

    Parameters
    ----------
    mdata
        MuData carrying ``uns["heldout"][modality]``.
    modality
        Name of the modality whose held-out values to return, e.g. ``"atac"``.

    Returns
    -------
    AnnData of the cells lacking `modality` (``obs`` copied from ``mdata.obs``) by the
    features of ``mdata.mod[modality]`` (``var`` copied), ``X`` the held-out values.

    Examples
    --------
    >>> from mvae_sc.datasets import synthetic_multiome, heldout
    >>> mdata = synthetic_multiome(500, n_genes=100, n_peaks=300)
    >>> truth = heldout(mdata, "atac")  # ATAC of the RNA-only cells
    >>> bool((mdata.obs.loc[truth.obs_names, "modality"] == "rna_only").all())
    True
    """
    if not isinstance(mdata, mudata.MuData):
        raise TypeError(f"`mdata` must be a MuData, got {type(mdata).__name__}.")
    entry = _heldout_entry(mdata, modality)
    if entry is None:
        available = sorted(mdata.uns.get("heldout", {}) or {})
        raise ValueError(
            f"MuData has no held-out truth for modality {modality!r} "
            f"(uns['heldout'] holds {available}). Use a MuData from synthetic_multiome() "
            f"or create held-out truth from paired cells with hide_modality(mdata, {modality!r}, frac=...)."
        )
    if modality not in mdata.mod:
        raise ValueError(
            f"uns['heldout'] has {modality!r} but mdata.mod has no {modality!r} to take "
            f"feature names from (modalities: {list(mdata.mod)})."
        )
    x = entry["X"] if sp.issparse(entry["X"]) else np.asarray(entry["X"])
    obs_names = pd.Index(np.asarray(entry["obs_names"]).astype(str))
    var = mdata.mod[modality].var.copy()
    if x.shape != (len(obs_names), var.shape[0]):
        raise ValueError(
            f"uns['heldout'][{modality!r}] is inconsistent: X has shape {x.shape} but there "
            f"are {len(obs_names)} obs_names and mod[{modality!r}] has {var.shape[0]} features."
        )
    missing = obs_names.difference(mdata.obs_names)
    if len(missing):
        raise ValueError(
            f"uns['heldout'][{modality!r}] names {len(missing)} cells absent from "
            f"mdata.obs_names, e.g. {list(missing[:3])}; was the MuData subset after the "
            "held-out truth was made?"
        )
    obs = mdata.obs.loc[obs_names].copy()
    return ad.AnnData(X=x, obs=obs, var=var)


def _modality_label(presence: np.ndarray, mods: list[str]) -> np.ndarray:
    """Label rows of a (n_cells, n_mods) presence matrix: 'paired' when in every
    modality, '<mod>_only' when in exactly one, else the present names joined by '+'."""
    patterns, inverse = np.unique(presence, axis=0, return_inverse=True)
    names = []
    for pattern in patterns:  # one iteration per distinct presence pattern, not per cell
        held = [m for m, p in zip(mods, pattern, strict=True) if p]
        if len(held) == len(mods):
            names.append("paired")
        elif len(held) == 1:
            names.append(f"{held[0]}_only")
        else:
            names.append("+".join(held))
    return np.asarray(names, dtype=object)[np.ravel(inverse)]


def hide_modality(
    mdata: mudata.MuData, modality: str, *, frac: float, seed: int = 0
) -> mudata.MuData:
    """Hide `modality` in a random fraction of paired cells, keeping it as held-out truth.

    Use it to benchmark cross-modal imputation on real paired data: the returned MuData
    lacks `modality` for the chosen cells, and :func:`heldout` returns what they measured.

    Parameters
    ----------
    mdata
        MuData with at least two modalities. Not modified.
    modality
        Modality to hide, a key of ``mdata.mod``.
    frac
        Fraction (0 to 1) of the paired cells (cells in `modality` and in at least one
        other modality) that lose `modality`; rounded to the nearest number of cells.
    seed
        Seed for choosing the cells.

    Returns
    -------
    A new MuData: ``mod[modality]`` without the chosen rows (other modalities copied),
    the removed rows (``X`` only, as CSR) appended to ``uns["heldout"][modality]``, and
    ``obs["modality"]`` updated for those cells when that column exists.

    Examples
    --------
    >>> from mvae_sc.datasets import synthetic_multiome, hide_modality, heldout
    >>> mdata = synthetic_multiome(500, n_genes=100, n_peaks=300, frac_rna_only=0.0)
    >>> hidden = hide_modality(mdata, "atac", frac=0.5, seed=1)
    >>> heldout(hidden, "atac").n_obs
    200
    """
    if not isinstance(mdata, mudata.MuData):
        raise TypeError(f"`mdata` must be a MuData, got {type(mdata).__name__}.")
    if modality not in mdata.mod:
        raise ValueError(
            f"`modality` {modality!r} is not in mdata.mod; choose one of {list(mdata.mod)}."
        )
    if len(mdata.mod) < 2:
        raise ValueError(
            "hide_modality needs a MuData with at least two modalities, so that cells "
            f"keep a measurement; got only {list(mdata.mod)}."
        )
    frac = _check_fraction("frac", frac)
    seed = _check_int("seed", seed, minimum=0)

    mods = list(mdata.mod)
    present = {m: np.asarray(mdata.obsmap[m]).ravel() > 0 for m in mods}
    others = np.zeros(mdata.n_obs, dtype=bool)
    for m in mods:
        if m != modality:
            others |= present[m]
    paired = np.flatnonzero(present[modality] & others)
    n_hide = int(round(frac * paired.size))
    rng = np.random.default_rng(seed)
    hide = np.zeros(mdata.n_obs, dtype=bool)
    hide[rng.choice(paired, size=n_hide, replace=False)] = True

    mod_adata = mdata.mod[modality]
    rows = np.asarray(mdata.obsmap[modality]).ravel()[hide].astype(np.int64) - 1
    hidden_x = sp.csr_matrix(mod_adata.X[rows])
    hidden_names = mod_adata.obs_names[rows].to_numpy().astype(str)
    keep = np.ones(mod_adata.n_obs, dtype=bool)
    keep[rows] = False

    mods_new = {m: (a[keep].copy() if m == modality else a.copy()) for m, a in mdata.mod.items()}
    obs = mdata.obs.copy()
    if "modality" in obs.columns and n_hide:
        presence = np.column_stack([present[m][hide] for m in mods])
        presence[:, mods.index(modality)] = False
        labels = _modality_label(presence, mods)
        column = obs["modality"]
        if isinstance(column.dtype, pd.CategoricalDtype):
            new_categories = [c for c in pd.unique(labels) if c not in column.cat.categories]
            column = column.cat.add_categories(new_categories)
        else:
            column = column.astype(object)
        column = column.copy()
        column[hide] = labels
        obs["modality"] = column

    uns = copy.deepcopy(dict(mdata.uns))
    store = dict(uns.get("heldout") or {})
    previous = store.get(modality)
    if isinstance(previous, Mapping):
        hidden_x = sp.vstack([sp.csr_matrix(previous["X"]), hidden_x], format="csr")
        hidden_names = np.concatenate([np.asarray(previous["obs_names"]).astype(str), hidden_names])
    store[modality] = {"X": hidden_x, "obs_names": hidden_names}
    uns["heldout"] = store

    with mudata.set_options(pull_on_update=False):
        new = mudata.MuData(mods_new, obs=obs)
    for slot in ("obsm", "obsp", "varm"):
        for key, value in getattr(mdata, slot).items():
            getattr(new, slot)[key] = value.copy()
    new.uns.update(uns)
    return new
