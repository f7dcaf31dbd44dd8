"""Synthetic data sets with more than two modalities and continuous (Gaussian) modalities.

Two generators with ground truth, for models with any number of modalities and
per-modality likelihoods (counts ``"nb"``, continuous ``"gaussian"``). They follow the
conventions of :func:`~mvae_sc.datasets.synthetic_multiome`: a MuData in which a cell is
absent from a modality it lacks (``obsmap[mod] == 0``), categoricals in the global
``obs``, the removed measurements in ``uns["heldout"][mod]`` as
``{"X": matrix, "obs_names": array}`` and the arguments in ``uns[<generator>]["params"]``.

- :func:`synthetic_patchseq`: Patch-seq-like cells with ``"rna"`` (negative binomial
  counts), ``"ephys"`` and ``"morph"`` (continuous features in physical units).
- :func:`synthetic_sensors`: wearable-sensor windows with ``"accel"`` and ``"ppg"``
  (continuous), the PPG noise level varying per window.

Continuous features are stored in their physical units, not standardised (a model with
a Gaussian likelihood standardises them itself). Held-out continuous measurements are
dense float32 arrays; held-out counts are CSR, as in :func:`synthetic_multiome`.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

import anndata as ad
import mudata
import numpy as np
import pandas as pd

from ._synthetic import (
    _assemble_csr,
    _check_fraction,
    _check_int,
    _chunks,
    _csr_part,
    _names,
    _sample_negative_binomial,
    _sparse_loadings,
)

logger = logging.getLogger(__name__)

__all__ = ["synthetic_patchseq", "synthetic_sensors"]

# --- Patch-seq structure not exposed as arguments (fixed so the default set is stable) ---
_PATCHSEQ_MODS = ("rna", "ephys", "morph")
_N_SHARED_FACTORS = 2  # continuous factors shared by all modalities (e.g. depth, cell size)
_SISTER_SCALE = 0.5  # spread of sister types around their lineage (lineage spread = 1)
_CELL_JITTER = 0.2  # per-cell jitter of program activities
_PROGRAM_GENE_FRAC = 0.06  # fraction of genes in each program
_FACTOR_GENE_FRAC = 0.10  # fraction of genes touched by each shared factor
_MEDIAN_LIBRARY = 2500.0  # median UMIs per cell (Patch-seq: low depth)
_LIBRARY_LOG_SD = 0.4  # ~90% of cells between 1.3k and 4.8k UMIs
# Continuous modalities, in standard units before the physical transform: per-feature
# type signal (sd over cells of the program-driven term), shared-factor loading sd,
# correlated-noise loading sd (rank _N_NOISE_FACTORS) and independent noise sd.
_TYPE_SIGNAL = {"ephys": 0.9, "morph": 0.4}
_FACTOR_LOADING = {"ephys": 0.4, "morph": 0.5}
_N_NOISE_FACTORS = 3
_NOISE_LOADING = 0.5
_NOISE_SD = 0.8

# (measure, unit, center, spread, transform): "linear" gives center + spread * z, "log"
# gives center * exp(spread * z) for quantities that are positive.
_EPHYS_MEASURES: tuple[tuple[str, str, float, float, str], ...] = (
    ("resting_potential", "mV", -70.0, 5.0, "linear"),
    ("ap_threshold", "mV", -42.0, 4.0, "linear"),
    ("ap_amplitude", "mV", 80.0, 8.0, "linear"),
    ("ahp_depth", "mV", -12.0, 3.0, "linear"),
    ("ap_width", "ms", 0.9, 0.35, "log"),
    ("max_firing_rate", "Hz", 60.0, 0.5, "log"),
    ("input_resistance", "MOhm", 200.0, 0.5, "log"),
    ("membrane_time_constant", "ms", 15.0, 0.4, "log"),
    ("rheobase", "pA", 120.0, 0.5, "log"),
    ("first_spike_latency", "ms", 30.0, 0.5, "log"),
    ("adaptation_index", "ratio", 0.1, 0.5, "log"),
    ("sag_ratio", "ratio", 0.12, 0.4, "log"),
    ("capacitance", "pF", 80.0, 0.4, "log"),
)
_MORPH_MEASURES: tuple[tuple[str, str, float, float, str], ...] = (
    ("soma_depth", "um", 400.0, 0.4, "log"),
    ("total_dendrite_length", "um", 3000.0, 0.4, "log"),
    ("total_axon_length", "um", 8000.0, 0.6, "log"),
    ("n_dendrite_branches", "count", 25.0, 0.4, "log"),
    ("max_branch_order", "count", 8.0, 0.3, "log"),
    ("soma_area", "um2", 150.0, 0.3, "log"),
    ("dendrite_width", "um", 250.0, 0.35, "log"),
    ("dendrite_height", "um", 350.0, 0.35, "log"),
    ("mean_contraction", "ratio", 0.85, 0.04, "linear"),
    ("apical_fraction", "ratio", 0.4, 0.1, "linear"),
    ("sholl_peak_radius", "um", 80.0, 0.3, "log"),
)

# --- sensor structure ---------------------------------------------------------------------
_SENSOR_MODS = ("accel", "ppg")
_N_SENSOR_LATENT = 3  # dimension of the continuous latent state
_STATE_WITHIN_SD = 0.4  # spread of windows around their state's center (centers ~ N(0, 1))
_ACCEL_NOISE = 0.6  # accel noise sd, relative to each feature's signal sd
_ARTIFACT_SHARE = 0.5  # share of the noise variance that lies in the signal subspace
_ACCEL_MEASURES: tuple[tuple[str, str, float, float, str], ...] = (
    ("mean_magnitude", "g", 1.0, 0.15, "linear"),
    ("sd_magnitude", "g", 0.3, 0.1, "linear"),
    ("dominant_frequency", "Hz", 2.0, 0.6, "linear"),
    ("cadence", "steps/min", 80.0, 30.0, "linear"),
    ("signal_energy", "g2", 1.5, 0.5, "linear"),
    ("jerk", "g/s", 4.0, 1.5, "linear"),
)
_PPG_MEASURES: tuple[tuple[str, str, float, float, str], ...] = (
    ("heart_rate", "bpm", 75.0, 12.0, "linear"),
    ("hrv_rmssd", "ms", 40.0, 12.0, "linear"),
    ("pulse_amplitude", "a.u.", 1.0, 0.25, "linear"),
    ("pulse_width", "ms", 300.0, 40.0, "linear"),
    ("respiration_rate", "breaths/min", 15.0, 3.0, "linear"),
    ("spo2", "%", 97.0, 1.2, "linear"),
)


# --- shared helpers ---------------------------------------------------------------------


def _feature_table(
    measures: tuple[tuple[str, str, float, float, str], ...], n_features: int
) -> pd.DataFrame:
    """Cycle through `measures` for `n_features` features; repeats (the same measure from
    another sweep, axis or segment; their loadings differ) get a suffix `_1`, `_2`, ..."""
    index = np.arange(n_features)
    table = pd.DataFrame(
        [measures[i % len(measures)] for i in index],
        columns=["measure", "unit", "center", "spread", "transform"],
    )
    repeat = index // len(measures)
    names = np.where(
        repeat == 0,
        table["measure"].to_numpy(dtype=object),
        table["measure"].to_numpy(dtype=object) + "_" + repeat.astype(str).astype(object),
    )
    table.index = pd.Index(names.astype(str))
    table["measure"] = pd.Categorical(table["measure"], categories=[m[0] for m in measures])
    table["unit"] = pd.Categorical(table["unit"], categories=sorted({m[1] for m in measures}))
    table["transform"] = pd.Categorical(table["transform"], categories=["linear", "log"])
    return table


def _to_physical(standard: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """Map standard units (n_cells, n_features) to physical units, float32."""
    center = table["center"].to_numpy(dtype=np.float64)
    spread = table["spread"].to_numpy(dtype=np.float64)
    is_log = (table["transform"] == "log").to_numpy()
    out = np.where(
        is_log, center * np.exp(spread * standard), center + spread * standard
    )  # (n_cells, n_features)
    return out.astype(np.float32)


def _correlated_noise(rng: np.random.Generator, n_cells: int, n_features: int) -> np.ndarray:
    """Gaussian noise with a low-rank + diagonal covariance (features co-vary)."""
    loading = rng.normal(0.0, _NOISE_LOADING, size=(_N_NOISE_FACTORS, n_features))
    shared = rng.normal(0.0, 1.0, size=(n_cells, _N_NOISE_FACTORS)) @ loading
    return shared + rng.normal(0.0, _NOISE_SD, size=(n_cells, n_features))


def _drop_missing(n_missing: np.ndarray, rng: np.random.Generator, n_cells: int) -> np.ndarray:
    """(n_cells, 3) presence for exact missing counts per modality, none all-absent.

    Modality 2 and 1 lose random cells independently, except that their overlap (cells
    lacking both) is capped so that modality 0 can lose its cells among the rest.
    """
    n_0, n_1, n_2 = (int(n) for n in n_missing)
    missing = np.zeros((n_cells, 3), dtype=bool)
    missing[rng.choice(n_cells, size=n_2, replace=False), 2] = True
    natural = rng.hypergeometric(n_2, n_cells - n_2, n_1) if n_1 else 0
    lowest = max(0, n_1 - (n_cells - n_2))
    highest = min(n_2, n_1, n_cells - n_0)
    overlap = int(np.clip(natural, lowest, highest))
    in_2, out_2 = np.flatnonzero(missing[:, 2]), np.flatnonzero(~missing[:, 2])
    missing[rng.choice(in_2, size=overlap, replace=False), 1] = True
    missing[rng.choice(out_2, size=n_1 - overlap, replace=False), 1] = True
    allowed = np.flatnonzero(~(missing[:, 1] & missing[:, 2]))
    missing[rng.choice(allowed, size=n_0, replace=False), 0] = True
    return ~missing


def _presence_labels(presence: np.ndarray, mods: tuple[str, ...]) -> pd.Categorical:
    """'+'-joined present modalities per row of a (n_cells, n_mods) presence matrix, as a
    categorical over every non-empty set (larger sets first, then in modality order)."""
    n_mods = len(mods)
    bits = 1 << np.arange(n_mods)  # modality i is bit i of a set's code
    codes = sorted(
        range(1, 2**n_mods),
        key=lambda c: (-bin(c).count("1"), [-(c >> i & 1) for i in range(n_mods)]),
    )
    lookup = np.empty(2**n_mods, dtype=object)
    for code in codes:
        lookup[code] = "+".join(m for i, m in enumerate(mods) if code >> i & 1)
    return pd.Categorical(lookup[presence.astype(np.int64) @ bits], categories=list(lookup[codes]))


def _assemble(
    matrices: dict[str, Any],
    variables: dict[str, pd.DataFrame],
    presence: np.ndarray,
    obs: pd.DataFrame,
    per_mod_columns: list[str],
) -> mudata.MuData:
    """Build the MuData (cells absent where they lack a modality) and uns['heldout']."""
    obs_names = obs.index.to_numpy().astype(str)
    mods = {}
    held: dict[str, dict[str, Any]] = {}
    for j, (name, x) in enumerate(matrices.items()):
        has = presence[:, j]
        mods[name] = ad.AnnData(
            X=x[has], obs=obs.loc[has, per_mod_columns].copy(), var=variables[name]
        )
        if not has.all():
            held[name] = {"X": x[~has], "obs_names": obs_names[~has]}
    with mudata.set_options(pull_on_update=False):
        mdata = mudata.MuData(mods, obs=obs.copy())
    if held:
        mdata.uns["heldout"] = held
    return mdata


def _check_real(name: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number >= {minimum}, got {type(value).__name__}.")
    if not float(value) >= minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return float(value)


# --- Patch-seq ----------------------------------------------------------------------------


def synthetic_patchseq(
    n_cells: int = 2000,
    *,
    n_genes: int = 1000,
    n_ephys: int = 40,
    n_morph: int = 20,
    n_cell_types: int = 6,
    frac_missing_morph: float = 0.3,
    frac_missing_ephys: float = 0.1,
    frac_missing_rna: float = 0.05,
    seed: int = 0,
) -> mudata.MuData:
    """Simulate a Patch-seq-like data set: RNA counts, electrophysiology and morphology.

    Cell types sit on a two-level tree (lineages with close sister types); every type
    has an activity vector over gene programs, and a cell adds a small jitter to it and
    draws ``2`` shared continuous factors ``f ~ N(0, 1)`` (think cortical depth and cell
    size) that act on all three modalities. Every cell is simulated in every modality,
    then loses some of them (as in Patch-seq, where morphology often fails to be
    reconstructed); no cell loses all three.

    - **rna**: ``eta = base + a_cell @ W_prog + f @ W_fac``, ``mean = library *
      softmax(eta)``, counts ~ negative binomial with gene-wise inverse dispersion
      (``var["true_dispersion"]``); library sizes are lognormal with a median of 2,500
      UMIs (about 90% of cells between 1.3k and 4.8k).
    - **ephys** and **morph**: in standard units ``z = a_cell @ P + f @ L + noise``,
      where ``a_cell @ P`` is the type signal (sd over cells about 0.9 per ephys feature,
      0.4 per morph feature, varying between features: ``var["type_signal"]``),
      ``f @ L`` the shared factors (loading sd 0.4 and 0.5) and the noise is correlated
      across features (rank-3 + diagonal covariance, total sd about 1.2). Each feature is then put in physical units: ``center + spread * z``
      for signed quantities (e.g. resting potential in mV around -70) or
      ``center * exp(spread * z)`` for positive ones (e.g. firing rate in Hz around 60,
      AP width in ms around 0.9, dendrite length in um around 3,000). Features are
      therefore on very different scales and some are right-skewed.

    Parameters
    ----------
    n_cells
        Number of cells in the union of the modalities.
    n_genes
        Number of genes (``"rna"`` features).
    n_ephys
        Number of electrophysiology features; cycles through 13 measures (repeats are
        the same measure from another sweep, suffixed ``_1``, ``_2``, ...).
    n_morph
        Number of morphology features; cycles through 11 measures likewise.
    n_cell_types
        Number of cell types, in ``round(sqrt(n_cell_types))`` lineages.
    frac_missing_morph, frac_missing_ephys, frac_missing_rna
        Fraction of cells that lack each modality (rounded to a number of cells, exact).
        Cells lacking ephys and cells lacking morph are drawn independently (so some
        lack both and are RNA-only); cells lacking RNA are drawn among those that keep
        ephys or morph, so every cell keeps at least one modality. The three fractions
        must sum to at most 2.
    seed
        Seed of the random number generator; the same seed gives identical data.

    Returns
    -------
    MuData with

    - ``mod["rna"]``: ``X`` CSR float32 integer counts; ``var["true_dispersion"]``.
    - ``mod["ephys"]``, ``mod["morph"]``: ``X`` dense float32 in physical units;
      ``var``: ``measure``, ``unit``, ``center``, ``spread``, ``transform``
      (``"linear"``/``"log"``) and ``type_signal`` (sd of the type term in standard
      units).
    - ``obs`` (categoricals): ``cell_type``, ``modality`` (present set, e.g.
      ``"rna+ephys+morph"``, ``"rna+ephys"``, ``"rna"``); each modality's ``obs`` also
      has ``cell_type``. ``obsmap[mod]`` is 0 where a cell lacks ``mod``.
    - ``obsm["true_latent"]``: program activities and shared factors, float32.
    - ``uns["heldout"][mod]``: ``{"X": ..., "obs_names": ...}`` for each modality some
      cells lack (CSR for ``"rna"``, dense float32 for ``"ephys"``/``"morph"``).
    - ``uns["synthetic_patchseq"]["params"]``: the arguments used.

    Notes
    -----
    Likelihoods: ``{"rna": "nb", "ephys": "gaussian", "morph": "gaussian"}``; log-scale
    features are lognormal, so a Gaussian likelihood fits them best after ``np.log``.
    The missingness is drawn after all measurements, so the same `seed` with other
    ``frac_missing_*`` gives the same cells and values, split differently.

    Examples
    --------
    >>> from mvae_sc.datasets import synthetic_patchseq
    >>> mdata = synthetic_patchseq(500, n_genes=200, seed=0)
    >>> mdata.mod["rna"].n_obs, mdata.mod["ephys"].n_obs, mdata.mod["morph"].n_obs
    (475, 450, 350)
    >>> str(mdata.obs["modality"].cat.categories[0])
    'rna+ephys+morph'
    """
    n_cells = _check_int("n_cells", n_cells, minimum=1)
    n_genes = _check_int("n_genes", n_genes, minimum=1)
    n_ephys = _check_int("n_ephys", n_ephys, minimum=1)
    n_morph = _check_int("n_morph", n_morph, minimum=1)
    n_cell_types = _check_int("n_cell_types", n_cell_types, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    frac_missing_morph = _check_fraction("frac_missing_morph", frac_missing_morph)
    frac_missing_ephys = _check_fraction("frac_missing_ephys", frac_missing_ephys)
    frac_missing_rna = _check_fraction("frac_missing_rna", frac_missing_rna)
    fracs = np.array([frac_missing_rna, frac_missing_ephys, frac_missing_morph])
    n_missing = np.round(fracs * n_cells).astype(np.int64)  # (rna, ephys, morph)
    if n_missing.sum() > 2 * n_cells:
        raise ValueError(
            "`frac_missing_rna + frac_missing_ephys + frac_missing_morph` must be <= 2 so "
            f"that every cell keeps a modality, got {fracs.sum():.3g}; lower one of them."
        )

    rng = np.random.default_rng(seed)

    # --- cell types and latent state --------------------------------------------------
    n_lineages = max(1, int(round(np.sqrt(n_cell_types))))
    lineage_of_type = np.arange(n_cell_types) % n_lineages
    n_programs = max(6, n_cell_types + 2)
    lineage_activity = rng.normal(0.0, 1.0, size=(n_lineages, n_programs))
    type_activity = lineage_activity[lineage_of_type] + rng.normal(
        0.0, _SISTER_SCALE, size=(n_cell_types, n_programs)
    )
    proportions = 0.7 * rng.dirichlet(np.full(n_cell_types, 4.0)) + 0.3 / n_cell_types
    cell_type = rng.choice(n_cell_types, size=n_cells, p=proportions)
    if n_cells >= n_cell_types:  # every type present
        cell_type[rng.choice(n_cells, size=n_cell_types, replace=False)] = np.arange(n_cell_types)
    activity = type_activity[cell_type] + rng.normal(0.0, _CELL_JITTER, size=(n_cells, n_programs))
    factors = rng.normal(0.0, 1.0, size=(n_cells, _N_SHARED_FACTORS))
    true_latent = np.hstack([activity, factors]).astype(np.float32)

    # --- RNA -----------------------------------------------------------------------------
    w_program = _sparse_loadings(rng, n_programs, n_genes, frac=_PROGRAM_GENE_FRAC, scale=1.2)
    w_factor = _sparse_loadings(rng, _N_SHARED_FACTORS, n_genes, frac=_FACTOR_GENE_FRAC, scale=0.6)
    w_rna = np.vstack([w_program, w_factor])  # (n_latent, n_genes)
    gene_base = rng.normal(0.0, 1.2, size=n_genes).astype(np.float32)
    theta = np.exp(rng.normal(np.log(3.0), 0.6, size=n_genes)).astype(np.float32)
    library = np.exp(
        np.log(_MEDIAN_LIBRARY) + _LIBRARY_LOG_SD * rng.normal(0.0, 1.0, size=n_cells)
    ).astype(np.float32)
    rna_parts = []
    for rows in _chunks(n_cells, n_genes):
        mean = true_latent[rows] @ w_rna  # eta, turned into the NB mean in place below
        mean += gene_base
        mean -= mean.max(axis=1, keepdims=True)
        np.exp(mean, out=mean)
        mean *= (library[rows] / mean.sum(axis=1))[:, None]
        row, col, counts = _sample_negative_binomial(rng, mean, theta)
        rna_parts.append(_csr_part(mean.shape[0], row, col, counts))
    rna_x = _assemble_csr(rna_parts, n_genes)

    # --- continuous modalities ----------------------------------------------------------
    continuous: dict[str, np.ndarray] = {}
    variables: dict[str, pd.DataFrame] = {}
    type_spread = type_activity.std()  # program activity sd over types, about 1.1
    for name, n_features, measures in (
        ("ephys", n_ephys, _EPHYS_MEASURES),
        ("morph", n_morph, _MORPH_MEASURES),
    ):
        # a_cell @ P has sd about _TYPE_SIGNAL[name] per feature over cells.
        scale = _TYPE_SIGNAL[name] / (type_spread * np.sqrt(n_programs))
        projection = rng.normal(0.0, scale, size=(n_programs, n_features))
        loading = rng.normal(0.0, _FACTOR_LOADING[name], size=(_N_SHARED_FACTORS, n_features))
        standard = activity @ projection + factors @ loading
        standard += _correlated_noise(rng, n_cells, n_features)
        table = _feature_table(measures, n_features)
        table["type_signal"] = (type_activity[cell_type] @ projection).std(axis=0)
        continuous[name] = _to_physical(standard, table)
        variables[name] = table

    # --- missing modalities ---------------------------------------------------------------
    presence = _drop_missing(n_missing, rng, n_cells)  # (n_cells, 3): rna, ephys, morph

    # --- assemble --------------------------------------------------------------------------
    type_names = np.array([f"type_{t}" for t in range(n_cell_types)], dtype=object)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(type_names[cell_type], categories=type_names),
            "modality": _presence_labels(presence, _PATCHSEQ_MODS),
        },
        index=pd.Index(_names("cell", n_cells, min_width=5)),
    )
    variables["rna"] = pd.DataFrame(
        {"true_dispersion": theta}, index=pd.Index(_names("gene", n_genes))
    )
    matrices = {"rna": rna_x, "ephys": continuous["ephys"], "morph": continuous["morph"]}
    mdata = _assemble(matrices, variables, presence, obs, ["cell_type"])
    mdata.obsm["true_latent"] = true_latent
    mdata.uns["synthetic_patchseq"] = {
        "params": {
            "n_cells": n_cells,
            "n_genes": n_genes,
            "n_ephys": n_ephys,
            "n_morph": n_morph,
            "n_cell_types": n_cell_types,
            "frac_missing_morph": frac_missing_morph,
            "frac_missing_ephys": frac_missing_ephys,
            "frac_missing_rna": frac_missing_rna,
            "seed": seed,
        }
    }
    logger.debug("simulated %d Patch-seq cells, presence per modality %s", n_cells, presence.sum(0))
    return mdata


# --- wearable sensors ---------------------------------------------------------------------


def synthetic_sensors(
    n_cells: int = 2000,
    *,
    n_accel: int = 30,
    n_ppg: int = 20,
    n_states: int = 5,
    noise_range: tuple[float, float] = (0.1, 3.0),
    frac_missing: float = 0.0,
    seed: int = 0,
) -> mudata.MuData:
    """Simulate a two-sensor wearable data set whose PPG quality varies per window.

    Each observation ("cell") is a recording window in one of ``n_states`` states
    (activities). The state has a center in a ``3``-dimensional continuous latent space
    (centers ~ N(0, I)); a window's latent is its state's center plus N(0, 0.4^2 I).
    Both sensors see the same latent through their own random linear maps, scaled so that
    each feature's signal has sd 1 over windows (standard units). Noise is added in
    standard units, then features are put in physical units (``center + spread * z``,
    e.g. heart rate in bpm around 75, cadence in steps/min around 80). 90% of the noise
    variance lies in the signal subspace (an artifact that looks like a change of state,
    so it does not average away over features), 10% is independent per feature.

    - **accel**: noise sd ``0.6`` (relative to each feature's signal sd) in every window.
    - **ppg**: noise sd ``obs["ppg_noise"]`` (same meaning), drawn per window uniformly
      in `noise_range`. With the defaults a linear classifier of the state reaches about
      0.7 accuracy from accel in every window; from PPG about 0.75 at a noise below 0.6
      and about 0.33 at a noise of 2.4 to 3 (chance 0.2): little information is left.

    Parameters
    ----------
    n_cells
        Number of windows.
    n_accel
        Number of accelerometer features; cycles through 6 measures (repeats, e.g. from
        another axis, suffixed ``_1``, ``_2``, ...).
    n_ppg
        Number of PPG features; cycles through 6 measures likewise.
    n_states
        Number of latent states (``obs["state"]``).
    noise_range
        ``(low, high)``, 0 <= low <= high: range of the per-window PPG noise sd,
        relative to the signal sd of each PPG feature.
    frac_missing
        Fraction of windows that lack one sensor (half of them accel, half PPG; their
        values are held out). Default 0: every window has both.
    seed
        Seed of the random number generator; the same seed gives identical data.

    Returns
    -------
    MuData with

    - ``mod["accel"]``, ``mod["ppg"]``: ``X`` dense float32 in physical units;
      ``var``: ``measure``, ``unit``, ``center``, ``spread``, ``transform``.
    - ``obs``: ``state`` (categorical), ``ppg_noise`` (float, for every window, also
      those without PPG), ``modality`` (categorical ``"accel+ppg"``, ``"accel"``,
      ``"ppg"``); each modality's ``obs`` also has ``state`` and ``ppg_noise``.
    - ``obsm["true_latent"]``: the continuous latent, float32 (n_cells, 4).
    - ``uns["heldout"][mod]``: dense held-out values when ``frac_missing > 0``.
    - ``uns["synthetic_sensors"]["params"]``: the arguments used.

    Examples
    --------
    >>> from mvae_sc.datasets import synthetic_sensors
    >>> mdata = synthetic_sensors(400, seed=0)
    >>> mdata.mod["accel"].shape, mdata.mod["ppg"].shape
    ((400, 30), (400, 20))
    >>> bool(mdata.obs["ppg_noise"].between(0.1, 3.0).all())
    True
    """
    n_cells = _check_int("n_cells", n_cells, minimum=1)
    n_accel = _check_int("n_accel", n_accel, minimum=1)
    n_ppg = _check_int("n_ppg", n_ppg, minimum=1)
    n_states = _check_int("n_states", n_states, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    frac_missing = _check_fraction("frac_missing", frac_missing)
    if isinstance(noise_range, (str, bytes)) or not hasattr(noise_range, "__len__"):
        raise TypeError(f"`noise_range` must be a (low, high) pair, got {noise_range!r}.")
    if len(noise_range) != 2:
        raise ValueError(f"`noise_range` must be a (low, high) pair, got {noise_range!r}.")
    low = _check_real("noise_range[0]", noise_range[0])
    high = _check_real("noise_range[1]", noise_range[1])
    if low > high:
        raise ValueError(f"`noise_range` must have low <= high, got {noise_range!r}.")

    rng = np.random.default_rng(seed)

    # --- latent state ---------------------------------------------------------------------
    centers = rng.normal(0.0, 1.0, size=(n_states, _N_SENSOR_LATENT))
    state = rng.integers(0, n_states, size=n_cells)
    if n_cells >= n_states:
        state[rng.choice(n_cells, size=n_states, replace=False)] = np.arange(n_states)
    latent = centers[state] + rng.normal(0.0, _STATE_WITHIN_SD, size=(n_cells, _N_SENSOR_LATENT))
    ppg_noise = rng.uniform(low, high, size=n_cells)

    # --- sensors --------------------------------------------------------------------------
    matrices: dict[str, np.ndarray] = {}
    variables: dict[str, pd.DataFrame] = {}
    latent_cov = np.cov(latent, rowvar=False).reshape(_N_SENSOR_LATENT, _N_SENSOR_LATENT)
    latent_chol = np.linalg.cholesky(latent_cov)
    for name, n_features, measures, noise_sd in (
        ("accel", n_accel, _ACCEL_MEASURES, np.full(n_cells, _ACCEL_NOISE)),
        ("ppg", n_ppg, _PPG_MEASURES, ppg_noise),
    ):
        loading = rng.normal(0.0, 1.0, size=(_N_SENSOR_LATENT, n_features))
        # Signal sd of each feature over windows: sqrt(w' Cov(latent) w); scale it to 1.
        signal_sd = np.sqrt(np.einsum("kf,kl,lf->f", loading, latent_cov, loading))
        loading /= signal_sd
        standard = latent @ loading
        # Noise, sd 1 per feature before scaling: a share in the signal subspace (an
        # artifact that mimics a change of state, not averaged away over features) plus
        # independent noise.
        artifact = rng.normal(0.0, 1.0, size=(n_cells, _N_SENSOR_LATENT)) @ latent_chol.T
        noise = np.sqrt(_ARTIFACT_SHARE) * (artifact @ loading)
        noise += np.sqrt(1.0 - _ARTIFACT_SHARE) * rng.normal(0.0, 1.0, size=(n_cells, n_features))
        standard += noise_sd[:, None] * noise
        table = _feature_table(measures, n_features)
        matrices[name] = _to_physical(standard, table)
        variables[name] = table

    # --- missing sensors --------------------------------------------------------------------
    presence = np.ones((n_cells, 2), dtype=bool)
    n_missing = int(round(frac_missing * n_cells))
    chosen = rng.choice(n_cells, size=n_missing, replace=False)
    presence[chosen[: n_missing // 2], 0] = False  # lack accel
    presence[chosen[n_missing // 2 :], 1] = False  # lack ppg

    # --- assemble ---------------------------------------------------------------------------
    state_names = np.array([f"state_{s}" for s in range(n_states)], dtype=object)
    obs = pd.DataFrame(
        {
            "state": pd.Categorical(state_names[state], categories=state_names),
            "ppg_noise": ppg_noise.astype(np.float32),
            "modality": _presence_labels(presence, _SENSOR_MODS),
        },
        index=pd.Index(_names("window", n_cells, min_width=5)),
    )
    mdata = _assemble(matrices, variables, presence, obs, ["state", "ppg_noise"])
    mdata.obsm["true_latent"] = latent.astype(np.float32)
    mdata.uns["synthetic_sensors"] = {
        "params": {
            "n_cells": n_cells,
            "n_accel": n_accel,
            "n_ppg": n_ppg,
            "n_states": n_states,
            "noise_range": [low, high],
            "frac_missing": frac_missing,
            "seed": seed,
        }
    }
    logger.debug("simulated %d sensor windows (%d missing one sensor)", n_cells, n_missing)
    return mdata
