"""Compare mvae_sc with scvi-tools' MULTIVI on the same mosaic multiome data.

Usage::

    python benchmarks/compare_multivi.py                         # synthetic, 5000 cells
    python benchmarks/compare_multivi.py --smoke                 # 600 cells, 3 epochs each
    python benchmarks/compare_multivi.py --dataset my.h5mu --label-key cell_type --batch-key sample
    python benchmarks/compare_multivi.py --dataset pbmc_filtered_feature_bc_matrix.h5
    python benchmarks/compare_multivi.py --dataset shared        # every file in ../shared/data

Run it with one compute thread per process, as the project machines do::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/compare_multivi.py

Needs the ``[bench]`` extra (``pip install -e ".[bench]"``, which installs scvi-tools).

What it does
------------
Data. ``--dataset synthetic`` simulates ``synthetic_multiome(n_cells, n_batches=2)``:
60% paired, 20% RNA-only, 20% ATAC-only cells, with the dropped measurements kept as
held-out truth. ``--dataset PATH`` reads real multiome data: a ``.h5mu`` file, a Cell Ranger
ARC ``filtered_feature_bc_matrix.h5`` (:func:`mvae_sc.io.read_10x_multiome`), an ``.h5ad``
with genes and peaks side by side and a ``var`` column of their types, as the NeurIPS
2021 multiome file (:func:`mvae_sc.io.split_modalities`), an RNA and an ATAC ``.h5ad``
given comma-separated (``pbmc-RNA.h5ad,pbmc-ATAC.h5ad``; ``--dataset shared`` pairs such
files itself), or the name of a data registry card (:func:`mvae_sc.datasets.load`: its
checksummed cache, else a download). What the command line does not name is looked up:
the modalities (``rna``, ``gex``, ... and ``atac``, ``peaks``, ..., any case), the raw
counts (X when it holds whole numbers, else a ``counts`` layer; normalised data are
refused with the option to pass), the cell types (``cell_type``, ``celltype``,
``seurat_annotations``, ...; without them the label rows are n/a)
and the batches (``batch``, ``sample``, ...; without them, one batch); what was used is
recorded in the report. The script keeps at most ``--n-cells`` cells (random, seeded; 0
keeps all), makes repeated feature names unique (``var_names_make_unique``), drops
features seen in fewer than ``--min-feature-frac`` of the cells (as the MultiVI tutorial
does), then hides ATAC from 20% of the paired cells and RNA from another 20%
(:func:`mvae_sc.datasets.hide_modality`), which gives the same 60/20/20 mosaic with
held-out truth. ``--dataset shared`` runs every ``.h5mu``, ``.h5`` and ``.h5ad`` file
under ``../shared/data`` (sub-folders too), skipping with a message any it cannot read.

Models. Both at latent size 20 and hidden width 256, otherwise at their own defaults,
each with its own early stopping (mvae_sc: validation ELBO, patience 20; MultiVI:
validation reconstruction loss, patience 50). ``--max-epochs N`` caps both (an equal
budget); ``--multivi-max-epochs N`` caps MultiVI only; ``--no-early-stopping`` runs the
full budget. MultiVI gets the data the way it expects it: scvi-tools' MuData path needs
every cell in every modality, so missing modalities are padded with zero rows (what
``scvi.data.organize_multiome_anndatas`` does; MultiVI detects a missing modality by an
all-zero row), the cell's modality (paired / expression / accessibility) is the main
``batch_key`` as MultiVI's documentation asks (its adversary then mixes modalities) and
the experimental batch is a ``categorical_covariate_keys`` entry. MultiVI's imputations
come from its own ``get_normalized_accessibility`` (with region factors, as mvae_sc's
``impute``) and ``get_normalized_expression``, decoded under the "paired" category
(``transform_batch``); the observed-category variants are kept in the JSON.

On synthetic data the simulator's truth gives two more figures: the within-type
factors' R² from each latent (the mean over the continuous factors of
``metrics.linear_r2``, a 5-fold cross-validated ridge regression: how much real
within-type variation the latent kept),
and, as notes, the true latent's own cell-type silhouette, batch entropy, iLISI and batch
predictability: the references for those rows. The true latent has no batch effect, so
its batch mixing is what a perfect correction gives when cell types are not spread
evenly over the batches; more compact than the truth means variation was dropped.

Each method is trained in its own child process (this script with ``--method``), so its
peak RSS is its own. The child writes the latent spaces and imputations; this process
computes every metric with the same code (``mvae_sc.metrics``).

Outputs in ``--out-dir`` (default ``benchmarks/results/``):
``compare_multivi_<dataset>_n<cells>.json`` (everything), ``.md`` (a table, methods as
columns) and ``.png`` (bar chart of the quality metrics).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "results"
METHODS = ("mvae_sc", "multivi")
N_LATENT = 20
N_HIDDEN = 256
HIDE_FRAC = 0.2
SMOKE_CELLS = 600
SMOKE_EPOCHS = 3

# Columns written by `load_dataset` into obs: what every later step reads.
LABEL, BATCH, MODALITY = "_bench_label", "_bench_batch", "_bench_modality"
READ_INFO = "_bench_read"  # uns: what was read from a real file, and from where

# Names tried, in this order, where the command line does not say (real data).
RNA_MODS = ("rna", "gex", "gene expression", "expression")
ATAC_MODS = ("atac", "peaks", "accessibility", "chromatin")
LABEL_KEYS = (
    "cell_type",
    "celltype",
    "CellType",
    "cell_types",
    "celltype.l2",
    "celltype.l1",
    "predicted.celltype.l2",  # Seurat's reference mapping (Azimuth)
    "predicted.celltype.l1",
    "seurat_annotations",  # Signac's 10x PBMC multiome vignette
    "cell.type",
    "cell_ontology_class",
    "annotation",
    "cell_label",
    "labels",
    "label",
)
BATCH_KEYS = ("batch", "sample", "batch_id", "sample_id", "donor", "donor_id")
COUNT_LAYERS = ("counts", "raw_counts", "raw")
DATA_SUFFIXES = (".h5mu", ".h5", ".h5ad")
#: Words in the name of an .h5ad that holds one modality (``pbmc10k-RNA.h5ad`` beside
#: ``pbmc10k-ATAC.h5ad``, as GLUE's and many tutorials' files are shared): the one-word
#: names of the modalities above.
FILE_MODALITY_WORDS = {
    mod: tuple(name for name in names if " " not in name)
    for mod, names in (("rna", RNA_MODS), ("atac", ATAC_MODS))
}
NO_KEY = "none"

# (key, row label, better: "up" / "down" / None, quality metric shown in the figure)
ROWS: list[tuple[str, str, str | None, bool]] = [
    ("ari", "Leiden ARI vs cell type", "up", True),
    ("nmi", "Leiden NMI vs cell type", "up", True),
    ("silhouette_label", "Cell-type silhouette (rescaled)", "up", True),
    ("knn_rna_only_to_atac_only", "kNN label agreement, RNA-only -> ATAC-only", "up", True),
    ("batch_entropy", "Batch entropy (50 NN)", "up", True),
    ("ilisi", "iLISI (rescaled)", "up", True),
    ("batch_predictability", "Batch predictability (balanced acc.)", "down", True),
    ("modality_entropy", "Modality mixing entropy (50 NN)", "up", True),
    (
        "foscttm_paired_within_batch",
        "FOSCTTM, paired cells, each modality alone, within batch",
        "down",
        True,
    ),
    ("atac_auroc_rna_only", "ATAC imputation AUROC, RNA-only cells", "up", True),
    ("rna_pearson_gene_atac_only", "RNA imputation Pearson per gene, ATAC-only cells", "up", True),
    ("rna_pearson_cell_atac_only", "RNA imputation Pearson per cell, ATAC-only cells", "up", True),
    ("within_type_factor_r2", "Within-type factors, R² from z (simulator's truth)", "up", True),
    ("epochs", "Epochs run (max)", None, False),
    ("train_seconds", "Training wall time (s)", "down", False),
    ("seconds_per_epoch", "Time per epoch (s)", "down", False),
    ("peak_rss_mb_after_data", "Peak RSS before training: imports + data (MB)", "down", False),
    ("peak_rss_mb_train", "Peak RSS after training (MB)", "down", False),
    ("peak_rss_mb", "Peak RSS incl. inference (MB)", "down", False),
]
ARROW = {"up": "↑", "down": "↓", None: ""}
# rows that need cell-type labels
LABEL_ROWS = ("ari", "nmi", "silhouette_label", "knn_rna_only_to_atac_only")


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------


def _presence(mdata, mod: str) -> np.ndarray:
    return np.asarray(mdata.obsmap[mod]).ravel() > 0


def _modality_labels(mdata) -> np.ndarray:
    rna, atac = _presence(mdata, "rna"), _presence(mdata, "atac")
    return np.where(rna & atac, "paired", np.where(rna, "rna_only", "atac_only"))


def _find_modality(mdata, wanted: str | None, aliases: tuple[str, ...], option: str) -> str:
    """The modality named `wanted`, else the first of `aliases` present (any case)."""
    if wanted is not None:
        if wanted not in mdata.mod:
            raise ValueError(f"no modality {wanted!r} ({option}); the file has {list(mdata.mod)}")
        return wanted
    by_lower = {name.lower(): name for name in mdata.mod}
    for alias in aliases:
        if alias in by_lower:
            return by_lower[alias]
    raise ValueError(
        f"no modality named any of {list(aliases)} (any case); the file has "
        f"{list(mdata.mod)}. Name it with {option}."
    )


def _obs_keys(mdata, mods: tuple[str, ...]) -> list[str]:
    keys = list(mdata.obs.columns)
    for mod in mods:
        keys += [k for k in mdata.mod[mod].obs.columns if k not in keys]
    return keys


def _obs_column(mdata, key: str, mods: tuple[str, ...]) -> pd.Series | None:
    """An obs column of the MuData, or of its modalities `mods` (the first first), aligned
    to cells."""
    if key in mdata.obs.columns:
        return mdata.obs[key]
    values = pd.Series(np.nan, index=mdata.obs_names, dtype=object)
    found = False
    for mod in mods:
        if f"{mod}:{key}" in mdata.obs.columns:
            column = mdata.obs[f"{mod}:{key}"].astype(object)
        elif key in mdata.mod[mod].obs.columns:
            column = mdata.mod[mod].obs[key].astype(object).reindex(mdata.obs_names)
        else:
            continue
        found = True
        values = values.where(values.notna(), column)
    return values if found else None


def _find_column(
    mdata, key: str | None, candidates: tuple[str, ...], option: str, mods: tuple[str, ...]
) -> tuple[str | None, pd.Series | None]:
    """(key, column): `key` itself (an error if it is missing), nothing for ``none``, or
    the first of `candidates` present when `key` is None."""
    if key is not None and key.lower() == NO_KEY:
        return None, None
    if key is not None:
        column = _obs_column(mdata, key, mods)
        if column is None:
            raise ValueError(
                f"no obs column {key!r} ({option}) in the MuData or its modalities; columns: "
                f"{_obs_keys(mdata, mods)}. Pass {option} {NO_KEY} to run without it."
            )
        return key, column
    for candidate in candidates:
        column = _obs_column(mdata, candidate, mods)
        if column is not None:
            return candidate, column
    return None, None


def _is_counts(x) -> bool:
    """Non-negative whole numbers (checked on at most 200,000 stored values)."""
    values = x.data if sparse.issparse(x) else np.asarray(x).ravel()
    values = np.asarray(values[:200_000], dtype=np.float64)
    return bool(np.all(values >= 0) and np.all(np.abs(values - np.round(values)) < 1e-6))


def _counts(adata, layer: str | None, mod: str, option: str) -> tuple[str, object]:
    """(where, matrix): the raw counts of one modality: `layer`, else X when it holds
    counts, else the first of COUNT_LAYERS that does. An error says what is there."""
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(
                f"modality {mod!r} has no layer {layer!r} ({option}); layers: {list(adata.layers)}"
            )
        where, x = f"layers[{layer!r}]", adata.layers[layer]
    elif _is_counts(adata.X):
        return "X", adata.X
    else:
        found = [name for name in COUNT_LAYERS if name in adata.layers]
        if not found:
            raise ValueError(
                f"modality {mod!r}: X holds non-integer values (normalised?) and there is no "
                f"layer {list(COUNT_LAYERS)}; both methods need raw counts. Name the layer "
                f"with {option} (layers: {list(adata.layers)})."
            )
        where, x = f"layers[{found[0]!r}]", adata.layers[found[0]]
    if not _is_counts(x):
        raise ValueError(
            f"modality {mod!r}: {where} holds non-integer or negative values, "
            "not raw counts; both methods need raw counts."
        )
    return where, x


def _read_file(source: str, pick=None):
    """A .h5mu file, a Cell Ranger ARC .h5 file, an .h5ad of genes and peaks side by side
    (a ``var`` column of feature types, as the NeurIPS 2021 multiome file) or a data
    registry name, as a MuData.

    ``pick(n_obs)``, if given, returns the rows to keep (or None for all); an .h5ad is then
    read backed and only those rows are loaded, so a large atlas file is not held whole
    twice while it is split.
    """
    import anndata
    import mudata

    import mvae_sc
    from mvae_sc.io import read_multiome, split_modalities

    if "," in source:  # one .h5ad per modality: cells in both are the paired ones
        paths = [Path(part) for part in source.split(",")]
        named = {_file_modality(p): p for p in paths}
        if set(named) != {"rna", "atac"} or any(p.suffix != ".h5ad" for p in paths):
            raise ValueError(
                f"{source!r}: give one RNA and one ATAC .h5ad, comma-separated, each named "
                f"with one of the words {FILE_MODALITY_WORDS} (e.g. pbmc-RNA.h5ad,pbmc-ATAC.h5ad)"
            )
        with mudata.set_options(pull_on_update=False):
            return mudata.MuData({mod: anndata.read_h5ad(p) for mod, p in named.items()})
    path = Path(source)
    if path.suffix == ".h5ad" and pick is not None:
        backed = anndata.read_h5ad(path, backed="r")
        keep = pick(backed.n_obs)
        adata = backed.to_memory() if keep is None else backed[keep].to_memory()
        backed.file.close()
        return split_modalities(adata)
    if path.suffix in DATA_SUFFIXES or path.exists():
        return read_multiome(path)
    if source in mvae_sc.datasets.available():
        return mvae_sc.datasets.load(source)  # the registry's cache, checksum-verified
    raise ValueError(
        f"{source!r} is neither a file (.h5mu, .h5ad or a Cell Ranger ARC .h5) nor a data "
        f"set of the registry ({mvae_sc.datasets.available()})"
    )


def _true_latent(mdata) -> tuple[pd.DataFrame, list[str]] | None:
    """The simulator's truth of a simulated file, by cell, with its column names."""
    columns = mdata.uns.get("synthetic_multiome", {}).get("true_latent_columns")
    if columns is None or "true_latent" not in mdata.obsm:
        return None
    values = np.asarray(mdata.obsm["true_latent"])
    return pd.DataFrame(values, index=mdata.obs_names), [str(c) for c in columns]


def _read_real(source: str, args: argparse.Namespace):
    import anndata
    import mudata

    import mvae_sc

    rng = np.random.default_rng(args.seed)

    def pick(n_obs: int) -> np.ndarray | None:  # the cells kept: --n-cells at random, or all
        if args.n_cells and n_obs > args.n_cells:
            return np.sort(rng.choice(n_obs, size=args.n_cells, replace=False))
        return None

    mdata = _read_file(source, pick)
    rna = _find_modality(mdata, args.rna_mod, RNA_MODS, "--rna-mod")
    atac = _find_modality(mdata, args.atac_mod, ATAC_MODS, "--atac-mod")
    label_key, labels = _find_column(mdata, args.label_key, LABEL_KEYS, "--label-key", (rna, atac))
    batch_key, batches = _find_column(mdata, args.batch_key, BATCH_KEYS, "--batch-key", (rna, atac))
    keep = pick(mdata.n_obs)  # None where _read_file has already kept those cells
    names = mdata.obs_names if keep is None else mdata.obs_names[keep]
    mods, used = {}, {}
    for name, source_mod, layer, option in (
        ("rna", rna, args.rna_layer, "--rna-layer"),
        ("atac", atac, args.atac_layer, "--atac-layer"),
    ):
        adata = mdata.mod[source_mod]
        adata = adata[adata.obs_names.isin(names)]
        where, x = _counts(adata, layer, source_mod, option)
        adata = anndata.AnnData(
            sparse.csr_matrix(x, dtype=np.float32), obs=adata.obs.copy(), var=adata.var.copy()
        )
        adata.var_names_make_unique()  # gene symbols repeat in real files
        if args.min_feature_frac > 0:
            n_cells_seen = np.asarray((adata.X > 0).sum(axis=0)).ravel()
            adata = adata[:, n_cells_seen >= args.min_feature_frac * adata.n_obs].copy()
        mods[name] = adata
        used[name] = f"mod[{source_mod!r}].{where}"
    obs = pd.DataFrame(index=names)
    obs[LABEL] = None if labels is None else labels.reindex(names).to_numpy()
    obs[BATCH] = "all" if batches is None else batches.reindex(names).astype(str).to_numpy()
    truth = _true_latent(mdata)
    with mudata.set_options(pull_on_update=False):
        mdata = mudata.MuData(mods, obs=obs)
    if truth is not None:  # a simulated file (realistic_h5mu.py) keeps its truth
        values, columns = truth
        mdata.obsm["true_latent"] = values.loc[names].to_numpy()
        mdata.uns["synthetic_multiome"] = {"true_latent_columns": columns}
    # Hide ATAC from 20% of the paired cells, then RNA from 20% of the original paired
    # cells among those still paired (0.2 / 0.8 of them): 60/20/20 with held-out truth.
    mdata = mvae_sc.datasets.hide_modality(mdata, "atac", frac=HIDE_FRAC, seed=args.seed)
    mdata = mvae_sc.datasets.hide_modality(
        mdata, "rna", frac=HIDE_FRAC / (1 - HIDE_FRAC), seed=args.seed + 1
    )
    mdata.uns[READ_INFO] = {"counts": used, "label_key": label_key, "batch_key": batch_key}
    return mdata


def load_dataset(args: argparse.Namespace):
    """The benchmark MuData, with obs LABEL, BATCH, MODALITY and held-out truth."""
    import mudata

    import mvae_sc

    mudata.set_options(pull_on_update=False)
    if args.dataset == "synthetic":
        mdata = mvae_sc.datasets.synthetic_multiome(args.n_cells, n_batches=2, seed=args.seed)
        mdata.obs[LABEL] = mdata.obs["cell_type"].astype(str)
        mdata.obs[BATCH] = mdata.obs["batch"].astype(str)
    else:
        mdata = _read_real(args.dataset, args)
    mdata.obs[MODALITY] = _modality_labels(mdata)
    return mdata


def _name_words(path: Path) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", path.stem.lower()) if w]


def _file_modality(path: Path) -> str | None:
    """'rna' or 'atac' when the file's name says which one modality it holds, else None."""
    found = {
        mod for mod, words in FILE_MODALITY_WORDS.items() if set(words) & set(_name_words(path))
    }
    return found.pop() if len(found) == 1 else None


def _without_modality_words(path: Path) -> str:
    every = {w for words in FILE_MODALITY_WORDS.values() for w in words}
    return "_".join(w for w in _name_words(path) if w not in every)


def dataset_name(args: argparse.Namespace) -> str:
    if args.dataset == "synthetic":
        return "synthetic"
    if "," in args.dataset:  # a pair of one-modality files
        return _without_modality_words(Path(args.dataset.split(",")[0])) or "multiome"
    return Path(args.dataset).stem


def _fingerprint(mdata) -> str:
    text = (
        "\n".join(mdata.obs_names)
        + "|"
        + "|".join(f"{m}:{a.n_obs}x{a.n_vars}" for m, a in mdata.mod.items())
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------
# child: train one method, write its latents and imputations
# ----------------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    """This process's own peak RSS in MB.

    On Linux, ``ru_maxrss`` survives ``execve``: a child started by ``subprocess`` reports
    at least its parent's peak at the time, which here holds the data and, for the
    second method, the first one's metrics. ``VmHWM`` in /proc/self/status belongs to
    the child's own address space, so it is used where it exists.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # kB
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux, bytes on macOS
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


def _epoch_budget(args: argparse.Namespace, method: str) -> int | None:
    budget = args.max_epochs
    if method == "multivi" and args.multivi_max_epochs is not None:
        budget = args.multivi_max_epochs if budget is None else min(budget, args.multivi_max_epochs)
    return budget


def _validation_curve(values) -> dict:
    """The monitored validation loss per epoch and its best epoch (1-based), or {}.

    A run that ended at its budget with the best epoch near the end had not converged;
    with patience P its own early stopping could not have ended it before best + P.
    """
    if values is None:
        return {}
    curve = np.asarray(values, dtype=np.float64).ravel()
    curve = curve[np.isfinite(curve)]
    if curve.size == 0:
        return {}
    return {"validation_curve": curve.tolist(), "best_epoch": int(np.argmin(curve)) + 1}


def _model_seed(args: argparse.Namespace) -> int:
    """The seed of the models' initialisation and training (the data use ``--seed``)."""
    return args.seed if args.model_seed is None else args.model_seed


def mvae_sc_arrays(model, mdata) -> dict[str, np.ndarray]:
    """What :func:`compute_metrics` scores, from a trained mvae_sc model: the joint
    latent, each modality's latent of the paired cells, and the held-out cells'
    imputations."""
    import mvae_sc

    paired = mdata.obs[MODALITY].to_numpy() == "paired"
    atac_truth = mvae_sc.datasets.heldout(mdata, "atac")
    rna_truth = mvae_sc.datasets.heldout(mdata, "rna")
    return {
        "latent": model.get_latent_representation(),
        "latent_rna_paired": model.get_latent_representation(modality="rna", indices=paired),
        "latent_atac_paired": model.get_latent_representation(modality="atac", indices=paired),
        "imputed_atac": model.impute("atac", indices=atac_truth.obs_names),
        "imputed_rna": model.impute("rna", indices=rna_truth.obs_names),
    }


def train_mvae_sc(mdata, args: argparse.Namespace) -> tuple[dict, dict]:
    import mvae_sc

    mvae_sc.MVAE.setup_mudata(mdata, batch_key=BATCH if mdata.obs[BATCH].nunique() > 1 else None)
    options = {} if args.adversary_weight is None else {"adversary_weight": args.adversary_weight}
    if args.alignment_weight is not None:
        options["alignment_weight"] = args.alignment_weight
    if args.alignment_measure is not None:
        options["alignment_measure"] = args.alignment_measure
    model = mvae_sc.MVAE(
        mdata, n_latent=N_LATENT, n_hidden=N_HIDDEN, seed=_model_seed(args), **options
    )
    max_epochs = _epoch_budget(args, "mvae_sc")
    rss_data = _peak_rss_mb()
    start = time.perf_counter()
    model.train(
        max_epochs=max_epochs,
        early_stopping=not args.no_early_stopping,
        seed=_model_seed(args),
        adversary_balance=args.adversary_balance,
        **({"weight_averaging": None} if args.no_weight_averaging else {}),
        enable_progress_bar=False,
    )
    train_seconds = time.perf_counter() - start
    rss_train = _peak_rss_mb()
    epochs = len(model.history)
    arrays = mvae_sc_arrays(model, mdata)
    info = {
        "epochs": epochs,
        "max_epochs": max_epochs,
        "early_stopping": not args.no_early_stopping,
        "stopped_early": None,
        "train_seconds": train_seconds,
        "peak_rss_mb_after_data": rss_data,
        "peak_rss_mb_train": rss_train,
        "settings": {
            "precision": f"{model.precision} (train's default on this machine)",
            "n_latent": N_LATENT,
            "n_hidden": N_HIDDEN,
            "n_layers": 2,
            "likelihoods": "rna: nb, atac: bernoulli (defaults)",
            "fusion": "poe",
            "batch": f"batch_key={BATCH!r} (one-hot into the decoders)",
            "adversary_weight": (
                model.module.adversary_weight if model.module.discriminator is not None else None
            ),
            "adversary_balance": model.adversary_weights is not None,
            "alignment_weight": model.module.alignment_weight,
            "alignment_measure": model.module.alignment_measure,
            "weight_averaging": not args.no_weight_averaging,
            "early_stopping": "validation ELBO, patience 20, best weights restored",
            "imputation": "impute(target): decoded from the modalities each cell has; "
            "RNA as expression per 10k, ATAC probability incl. region factor",
        },
    }
    if max_epochs is None:  # the budget train() chose, by the library's own rules
        import torch

        from mvae_sc.model import default_batch_size, default_max_epochs

        n_train = math.ceil(0.9 * mdata.n_obs)
        batch_size = default_batch_size(n_train, gpu=torch.cuda.is_available())
        info["max_epochs"] = default_max_epochs(n_train // batch_size)
    info["stopped_early"] = bool(epochs < info["max_epochs"])
    info.update(_validation_curve(model.history["validation_loss"]))
    if model.adversary_weights is not None:
        # each cell type's mean weight in the balanced adversary, per batch
        weights = model.adversary_weights.loc[mdata.obs_names].to_numpy()
        table = pd.Series(weights).groupby(
            [mdata.obs[BATCH].to_numpy(), mdata.obs[LABEL].to_numpy()]
        )
        info["adversary_weight_by_batch_and_type"] = {
            f"{b} / {t}": float(w) for (b, t), w in table.mean().items()
        }
    return info, arrays


def _padded_mudata(mdata):
    """MuData with every cell in both modalities: zero rows where a modality is missing.

    scvi-tools' MuData path requires fully paired modalities ("pad the unpaired
    modalities"); MultiVI marks a modality missing for a cell whose row sums to zero, as
    in ``scvi.data.organize_multiome_anndatas``.
    """
    import anndata as ad
    import mudata

    n_obs = mdata.n_obs
    mods = {}
    for mod in ("rna", "atac"):
        adata = mdata.mod[mod]
        rows = adata.obs_names.get_indexer(mdata.obs_names)  # -1 where absent
        present = np.flatnonzero(rows >= 0)
        selector = sparse.csr_matrix(
            (np.ones(present.size, dtype=np.float32), (present, rows[present])),
            shape=(n_obs, adata.n_obs),
        )
        x = (selector @ sparse.csr_matrix(adata.X, dtype=np.float32)).tocsr()
        mods[mod] = ad.AnnData(
            X=x, obs=pd.DataFrame(index=mdata.obs_names), var=adata.var[[]].copy()
        )
    obs = mdata.obs[[LABEL, BATCH, MODALITY]].copy()
    # MultiVI's modality vocabulary (organize_multiome_anndatas): paired / expression /
    # accessibility.
    obs["_multivi_modality"] = (
        obs[MODALITY]
        .map({"paired": "paired", "rna_only": "expression", "atac_only": "accessibility"})
        .astype("category")
    )
    obs[BATCH] = obs[BATCH].astype("category")
    with mudata.set_options(pull_on_update=False):
        padded = mudata.MuData(mods, obs=obs)
    return padded


def train_multivi(mdata, args: argparse.Namespace) -> tuple[dict, dict]:
    import logging

    import scvi

    import mvae_sc

    scvi.settings.verbosity = logging.WARNING
    scvi.settings.seed = _model_seed(args)
    padded = _padded_mudata(mdata)
    # A measured cell with an all-zero row would count as missing for MultiVI.
    zero_rows = {
        mod: int(
            (np.asarray(padded.mod[mod].X.sum(axis=1)).ravel() == 0)[_presence(mdata, mod)].sum()
        )
        for mod in ("rna", "atac")
    }
    n_batches = padded.obs[BATCH].nunique()
    scvi.model.MULTIVI.setup_mudata(
        padded,
        batch_key="_multivi_modality",
        categorical_covariate_keys=[BATCH] if n_batches > 1 else None,
        modalities={"rna_layer": "rna", "atac_layer": "atac"},
    )
    model = scvi.model.MULTIVI(padded, n_latent=N_LATENT, n_hidden=N_HIDDEN)
    max_epochs = _epoch_budget(args, "multivi")
    train_kwargs = {} if max_epochs is None else {"max_epochs": max_epochs}
    rss_data = _peak_rss_mb()
    start = time.perf_counter()
    model.train(
        early_stopping=not args.no_early_stopping,
        enable_progress_bar=False,
        **train_kwargs,
    )
    train_seconds = time.perf_counter() - start
    rss_train = _peak_rss_mb()
    epochs = len(model.history["elbo_train"])
    budget = max_epochs if max_epochs is not None else 500  # MULTIVI.train's default
    modality = padded.obs[MODALITY].to_numpy()
    paired = np.flatnonzero(modality == "paired")
    atac_truth = mvae_sc.datasets.heldout(mdata, "atac")
    rna_truth = mvae_sc.datasets.heldout(mdata, "rna")
    atac_cells = padded.obs_names.get_indexer(atac_truth.obs_names)
    rna_cells = padded.obs_names.get_indexer(rna_truth.obs_names)
    arrays = {
        "latent": model.get_latent_representation(),
        "latent_rna_paired": model.get_latent_representation(modality="expression", indices=paired),
        "latent_atac_paired": model.get_latent_representation(
            modality="accessibility", indices=paired
        ),
        # Accessibility probability times the region factors (as mvae_sc's impute): AUROC
        # over all (cell, peak) entries depends on the per-peak scale. Decoded under the
        # "paired" modality category, the only one whose decoders were trained on both
        # modalities (the decoder never reconstructs ATAC for an "expression" cell, nor RNA
        # for an "accessibility" cell).
        "imputed_atac": model.get_normalized_accessibility(
            indices=atac_cells, transform_batch="paired", normalize_regions=True, return_numpy=True
        ),
        "imputed_atac__no_region_factors": model.get_normalized_accessibility(
            indices=atac_cells, transform_batch="paired", return_numpy=True
        ),
        "imputed_atac__observed_modality_batch": model.get_normalized_accessibility(
            indices=atac_cells, normalize_regions=True, return_numpy=True
        ),
        "imputed_rna": model.get_normalized_expression(
            indices=rna_cells, transform_batch="paired", return_numpy=True
        ),
        "imputed_rna__observed_modality_batch": model.get_normalized_expression(
            indices=rna_cells, return_numpy=True
        ),
    }
    info = {
        "epochs": epochs,
        "max_epochs": budget,
        "early_stopping": not args.no_early_stopping,
        "stopped_early": bool(epochs < budget),
        "measured_cells_with_zero_counts": zero_rows,
        "train_seconds": train_seconds,
        "peak_rss_mb_after_data": rss_data,
        "peak_rss_mb_train": rss_train,
        "settings": {
            "precision": "32-true (scvi-tools' default)",
            "n_latent": N_LATENT,
            "n_hidden": N_HIDDEN,
            "n_layers_encoder/decoder": 2,
            "likelihoods": "rna: zinb, atac: bernoulli (defaults)",
            "modality_weights": "equal",
            "modality_penalty": "Jeffreys",
            "batch": "batch_key='_multivi_modality' (paired/expression/accessibility; "
            "adversarial mixing over it), experimental batch as categorical covariate",
            "missing modality": "zero-padded rows (MultiVI detects all-zero rows)",
            "early_stopping": "validation reconstruction loss, patience 50",
            "imputation": "get_normalized_accessibility(transform_batch='paired', "
            "normalize_regions=True); get_normalized_expression(transform_batch='paired')",
            "foscttm_latents": "get_latent_representation(modality='expression' / 'accessibility')",
        },
    }
    info.update(_validation_curve(model.history.get("reconstruction_loss_validation")))
    return info, arrays


def child_main(args: argparse.Namespace) -> None:
    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)
    mdata = load_dataset(args)
    train = train_mvae_sc if args.method == "mvae_sc" else train_multivi
    info, arrays = train(mdata, args)
    info["peak_rss_mb"] = _peak_rss_mb()
    info["torch_threads"] = torch.get_num_threads()
    info["fingerprint"] = _fingerprint(mdata)
    info["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    np.savez(
        args.child_out + ".npz", **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    )
    with open(args.child_out + ".json", "w") as fh:
        json.dump(info, fh)


# ----------------------------------------------------------------------------------------
# parent: run children, compute metrics, report
# ----------------------------------------------------------------------------------------


def _child_command(args: argparse.Namespace, method: str, out: str) -> list[str]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--method",
        method,
        "--child-out",
        out,
        "--dataset",
        args.dataset,
        "--n-cells",
        str(args.n_cells),
        "--seed",
        str(args.seed),
        "--min-feature-frac",
        str(args.min_feature_frac),
    ]
    for flag, value in (
        ("--label-key", args.label_key),
        ("--batch-key", args.batch_key),
        ("--rna-mod", args.rna_mod),
        ("--atac-mod", args.atac_mod),
        ("--model-seed", args.model_seed),
        ("--adversary-weight", args.adversary_weight),
        ("--alignment-weight", args.alignment_weight),
        ("--alignment-measure", args.alignment_measure),
        ("--max-epochs", args.max_epochs),
        ("--multivi-max-epochs", args.multivi_max_epochs),
        ("--rna-layer", args.rna_layer),
        ("--atac-layer", args.atac_layer),
    ):
        if value is not None:
            command += [flag, str(value)]
    if args.no_early_stopping:
        command.append("--no-early-stopping")
    if args.adversary_balance:
        command.append("--adversary-balance")
    if args.no_weight_averaging:
        command.append("--no-weight-averaging")
    return command


def run_method(args: argparse.Namespace, method: str, workdir: str) -> tuple[dict, dict]:
    out = os.path.join(workdir, method)
    command = _child_command(args, method, out)
    print(f"[compare_multivi] training {method} in a child process ...", flush=True)  # noqa: T201
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    with open(out + ".json") as fh:
        info = json.load(fh)
    info["child_wall_seconds"] = wall
    with np.load(out + ".npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return info, arrays


def _true_factors(mdata) -> np.ndarray | None:
    """The simulator's continuous within-type factors (synthetic data only)."""
    truth = _true_latent(mdata)
    if truth is None:
        return None
    values, columns = truth
    keep = [i for i, name in enumerate(columns) if name.startswith("factor_")]
    return values.to_numpy()[:, keep]


def true_latent_silhouette(mdata, seed: int) -> float | None:
    """The cell-type silhouette of the simulator's true latent, where the data carry it
    (synthetic data): the reference for that row."""
    from mvae_sc import metrics

    if _true_factors(mdata) is None:
        return None
    labels = mdata.obs[LABEL].astype(str).to_numpy()
    true_latent = np.asarray(mdata.obsm["true_latent"], dtype=np.float64)
    return metrics.silhouette_label(true_latent, labels, seed=seed)


def _batch_mixing(latent: np.ndarray, batches: np.ndarray, seed: int) -> dict:
    """Batch entropy, iLISI and batch predictability of an embedding; {} with one batch."""
    from mvae_sc import metrics

    if len(pd.unique(batches)) < 2:
        return {}
    return {
        "batch_entropy": metrics.batch_entropy(latent, batches),
        "ilisi": metrics.ilisi(latent, batches),
        "batch_predictability": metrics.batch_predictability(latent, batches, seed=seed),
    }


def _foscttm(arrays: dict, batches: np.ndarray) -> dict:
    """FOSCTTM of the paired cells, each modality encoded alone: within each batch (the
    table's row) and pooled over batches. Pooled, the score depends on batch correction:
    batches left apart add cells to the fraction's denominator that never compete with a
    true match (about 1/n_batches of the within-batch score), mixed batches add cells of
    the same state that do. Within a batch only the alignment of the modalities counts.
    Batches with fewer than 2 paired cells are left out of the within-batch score; with
    one batch both scores are the same."""
    from mvae_sc import metrics

    rna = arrays["latent_rna_paired"].astype(np.float64)
    atac = arrays["latent_atac_paired"].astype(np.float64)
    batches = batches.astype(str)
    names, counts = np.unique(batches, return_counts=True)
    keep = np.isin(batches, names[counts >= 2])
    return {
        "foscttm_paired": metrics.foscttm(rna, atac),
        "foscttm_paired_within_batch": metrics.foscttm(rna[keep], atac[keep], groups=batches[keep]),
    }


def compute_metrics(mdata, arrays: dict, seed: int) -> dict:
    import mvae_sc
    from mvae_sc import metrics

    labels = mdata.obs[LABEL].to_numpy()
    batches = mdata.obs[BATCH].to_numpy()
    modality = mdata.obs[MODALITY].to_numpy()
    latent = arrays["latent"].astype(np.float64)
    labelled = pd.notna(mdata.obs[LABEL]).to_numpy()
    z, y = latent[labelled], labels[labelled].astype(str)
    result: dict[str, float | None] = dict.fromkeys(LABEL_ROWS)
    if len(np.unique(y)) > 1:  # data without cell types: the label rows stay n/a
        clustering = metrics.leiden_ari_nmi(z, y, seed=seed)
        result["ari"], result["nmi"] = clustering["ari"], clustering["nmi"]
        result["leiden_resolution"] = clustering["resolution"]
        result["silhouette_label"] = metrics.silhouette_label(z, y, seed=seed)
        ro = labelled & (modality == "rna_only")
        ao = labelled & (modality == "atac_only")
        if ro.any() and ao.any():
            result["knn_rna_only_to_atac_only"] = metrics.knn_label_agreement(
                latent[ro], labels[ro], latent[ao], labels[ao]
            )
    mixing = _batch_mixing(latent, batches, seed)
    if mixing:
        result.update(mixing, batch_predictability_chance=1.0 / len(pd.unique(batches)))
    else:
        for key in ("batch_entropy", "ilisi", "batch_predictability"):
            result[key] = None
    result["modality_entropy"] = metrics.batch_entropy(latent, modality)
    result.update(_foscttm(arrays, batches[modality == "paired"]))
    factors = _true_factors(mdata)
    result["within_type_factor_r2"] = (
        None if factors is None else float(metrics.linear_r2(latent, factors, seed=seed).mean())
    )
    atac_truth = mvae_sc.datasets.heldout(mdata, "atac").X
    rna_truth = mvae_sc.datasets.heldout(mdata, "rna").X
    for key, values in arrays.items():
        if not key.startswith("imputed_"):
            continue
        suffix = key.split("__", 1)[1] if "__" in key else ""
        tag = f"__{suffix}" if suffix else ""
        if key.startswith("imputed_atac"):
            result[f"atac_auroc_rna_only{tag}"] = metrics.imputation_auroc(atac_truth, values)
        else:
            result[f"rna_pearson_gene_atac_only{tag}"] = metrics.imputation_pearson(
                rna_truth, values
            )
            result[f"rna_pearson_cell_atac_only{tag}"] = metrics.imputation_pearson(
                rna_truth, values, axis="cell"
            )
    return result


def feature_mean_reference(mdata) -> dict:
    """The imputation rows' scores when every held-out cell is predicted by the observed
    cells' feature means (each peak's detection rate; the pooled expression profile):
    what the rows give without any information about the cell. The per-gene Pearson of
    a prediction that is the same for every cell is undefined, so it has no reference."""
    import mvae_sc
    from mvae_sc import metrics

    atac_truth = mvae_sc.datasets.heldout(mdata, "atac").X
    rna_truth = mvae_sc.datasets.heldout(mdata, "rna").X
    atac, rna = mdata.mod["atac"].X, mdata.mod["rna"].X
    rate = np.asarray((atac > 0).mean(axis=0), dtype=np.float32)  # (1, peaks)
    profile = np.asarray(rna.sum(axis=0), dtype=np.float32)
    return {
        "atac_auroc_rna_only_feature_means": metrics.imputation_auroc(
            atac_truth, np.repeat(rate, atac_truth.shape[0], axis=0)
        ),
        "rna_pearson_cell_atac_only_feature_means": metrics.imputation_pearson(
            rna_truth, np.repeat(profile / profile.sum(), rna_truth.shape[0], axis=0), axis="cell"
        ),
    }


def machine_info() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "NUMBA_NUM_THREADS": os.environ.get("NUMBA_NUM_THREADS"),
    }


def git_state() -> dict:
    """Commit of this repository and whether tracked files differ from it (mvae_sc code)."""

    def git(*command: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", *command], cwd=REPO, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return done.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status)}


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    names = [
        "mvae-sc",
        "scvi-tools",
        "torch",
        "lightning",
        "anndata",
        "mudata",
        "scanpy",
        "numpy",
        "scipy",
        "scikit-learn",
    ]
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def _fmt(value, key: str) -> str:
    if value is None:
        return "n/a"
    if key == "epochs":
        return str(value)
    if key in ("train_seconds", "peak_rss_mb_after_data", "peak_rss_mb_train", "peak_rss_mb"):
        return f"{value:.0f}"
    if key == "seconds_per_epoch":
        return f"{value:.2f}"
    if key.startswith("foscttm_paired"):  # small numbers: 0.003 vs 0.0026 matters
        return f"{value:.4f}"
    return f"{value:.3f}"


def _table_values(report: dict) -> dict[str, dict]:
    values = {}
    for method, run in report["methods"].items():
        row = dict(run["metrics"])
        row.update(
            epochs=f"{run['epochs']} ({run['max_epochs']})",
            train_seconds=run["train_seconds"],
            seconds_per_epoch=run["train_seconds"] / max(1, run["epochs"]),
            peak_rss_mb_after_data=run["peak_rss_mb_after_data"],
            peak_rss_mb_train=run["peak_rss_mb_train"],
            peak_rss_mb=run["peak_rss_mb"],
        )
        values[method] = row
    return values


def write_markdown(report: dict, path: Path) -> None:
    values = _table_values(report)
    methods = list(values)
    threads = ", ".join(f"{m} {report['methods'][m]['torch_threads']}" for m in methods)
    devices = ", ".join(sorted({report["methods"][m]["device"] for m in methods}))
    lines = [
        f"# mvae_sc vs MultiVI: {report['dataset']}, {report['n_cells']} cells",
        "",
        f"Command: `{report['command']}`  ",
        f"Data: {report['data']['description']}  ",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cpu_cores']} cores, "
        f"torch threads {threads}, device {devices}, "
        f"GPU {report['machine']['gpu'] or 'none'}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v) + "  ",
        f"Code: commit {(report.get('git') or {}).get('commit') or 'not recorded (see notes)'}"
        + (" (with uncommitted changes)" if (report.get("git") or {}).get("dirty") else "")
        + "  ",
        "",
        "| metric | better | " + " | ".join(methods) + " |",
        "| --- | :---: | " + " | ".join("---:" for _ in methods) + " |",
    ]
    for key, label, better, _ in ROWS:
        cells = []
        for method in methods:
            value = values[method].get(key)
            cells.append(value if isinstance(value, str) else _fmt(value, key))
        numeric = [values[m].get(key) for m in methods]
        if better and all(isinstance(v, int | float) for v in numeric) and len(set(numeric)) > 1:
            best = (max if better == "up" else min)(numeric)
            cells = [f"**{c}**" if v == best else c for c, v in zip(cells, numeric, strict=True)]
        lines.append(f"| {label} | {ARROW[better]} | " + " | ".join(cells) + " |")
    chance = report["methods"][methods[0]]["metrics"].get("batch_predictability_chance")
    notes = [
        "",
        "Notes:",
        "",
        f"- Best value per row in bold. Batch predictability: chance is {chance:.2f}."
        if chance
        else "- Best value per row in bold. One batch: batch metrics n/a.",
        "- Both methods: latent 20, hidden 256, their own defaults otherwise, each with its own "
        "early stopping on a 10% validation split (mvae_sc: ELBO, patience 20; MultiVI: "
        "reconstruction loss, patience 50). Epochs: run (budget).",
        "- MultiVI set up as its docs ask: missing modalities zero-padded, the cell's modality "
        "(paired/expression/accessibility) as `batch_key`, the experimental batch as a "
        "categorical covariate. FOSCTTM uses `get_latent_representation(modality='expression'"
        "/'accessibility')`; imputation `get_normalized_accessibility(normalize_regions=True)` "
        "and `get_normalized_expression()`, both with `transform_batch='paired'` (decoded as a "
        "paired cell: the only modality category whose decoders learned both modalities).",
    ]
    extras = []
    for method in methods:
        for key, value in report["methods"][method]["metrics"].items():
            if "__" in key and value is not None:
                extras.append(f"{method} `{key}` = {value:.3f}")
    if extras:
        notes.append("- Variants (not in the table): " + "; ".join(extras) + ".")
    pooled = {m: values[m].get("foscttm_paired") for m in methods}
    if chance and all(v is not None for v in pooled.values()):
        notes.append(
            "- FOSCTTM pooled over batches (not in the table): "
            + ", ".join(f"{m} {_fmt(v, 'foscttm_paired')}" for m, v in pooled.items())
            + ". Pooled, the score depends on batch correction, not only on how the "
            "modalities align: left apart, the other batches' cells never compete with a "
            "cell's true match but still count in the fraction's denominator; mixed, their "
            "cells of the same state do compete. The table's row scores each paired cell "
            "against its own batch's cells."
        )
    for note in report.get("notes", []):
        notes.append(f"- {note}")
    notes.append(
        "- Time is the training call only (`train()`), single process; peak RSS is the child "
        "process's own peak (`VmHWM` on Linux; data + model; 'incl. inference' adds latents "
        "and imputations)."
    )
    path.write_text("\n".join(lines + notes) + "\n")


def write_figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = _table_values(report)
    methods = list(values)
    rows = [
        (key, f"{label} {ARROW[better]}")
        for key, label, better, quality in ROWS
        if quality and any(values[m].get(key) is not None for m in methods)
    ]
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(rows) * len(methods) + 1.5))
    height = 0.8 / len(methods)
    positions = np.arange(len(rows))
    colors = {"mvae_sc": "#1f77b4", "multivi": "#ff7f0e"}
    for i, method in enumerate(methods):
        data = [values[method].get(key) or 0.0 for key, _ in rows]
        bars = ax.barh(
            positions + (i - (len(methods) - 1) / 2) * height,
            data,
            height=height,
            label=method,
            color=colors.get(method),
        )
        for bar, value in zip(bars, data, strict=True):
            ax.text(
                value + 0.01,
                bar.get_y() + bar.get_height() / 2,
                f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}",
                va="center",
                fontsize=7,
            )
    ax.set_yticks(positions, [label for _, label in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("score (↑ higher is better, ↓ lower is better)")
    title = f"mvae_sc vs MultiVI: {report['dataset']}, {report['n_cells']} cells"
    ax.set_title("\n".join(textwrap.wrap(title, 55)), fontsize=10)  # long file names
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(args: argparse.Namespace, argv: list[str]) -> dict:
    name = dataset_name(args)
    mdata = load_dataset(args)
    counts = mdata.obs[MODALITY].value_counts().to_dict()
    description = (
        f"{mdata.n_obs} cells ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
        f"{mdata.mod['rna'].n_vars} genes, {mdata.mod['atac'].n_vars} peaks, "
        f"{mdata.obs[BATCH].nunique()} batch(es), "
        + (f"{n_types} cell types" if (n_types := mdata.obs[LABEL].nunique()) else "no labels")
    )
    print(f"[compare_multivi] {name}: {description}", flush=True)  # noqa: T201
    report: dict = {
        "dataset": name,
        "n_cells": int(mdata.n_obs),
        "seed": args.seed,
        "model_seed": _model_seed(args),
        "command": " ".join(["python", "benchmarks/compare_multivi.py", *argv]),
        "data": {
            "source": args.dataset,
            "description": description,
            "modalities": counts,
            **mdata.uns.get(READ_INFO, {}),
        },
        "machine": machine_info(),
        "versions": package_versions(),
        "git": git_state(),
        "settings": {
            "max_epochs": args.max_epochs,
            "multivi_max_epochs": args.multivi_max_epochs,
            "early_stopping": not args.no_early_stopping,
        },
        "methods": {},
        "notes": [],
    }
    if args.multivi_max_epochs is not None:
        report["notes"].append(
            f"MultiVI capped at {args.multivi_max_epochs} epochs (--multivi-max-epochs) so "
            "that it finishes on this machine; its default budget is 500 epochs."
        )
    read = mdata.uns.get(READ_INFO)
    if read:
        report["notes"].append(
            "Read: counts from "
            + ", ".join(read["counts"].values())
            + f"; cell types from {read['label_key'] or 'nowhere (label rows n/a)'}; "
            + f"batches from {read['batch_key'] or 'nowhere (one batch)'}."
        )
    reference = feature_mean_reference(mdata)
    report["notes"].append(
        "Reference: predicting every held-out cell by the observed cells' feature means "
        "(each peak's detection rate, the pooled expression profile) scores ATAC AUROC "
        f"{reference['atac_auroc_rna_only_feature_means']:.3f} and RNA Pearson per cell "
        f"{reference['rna_pearson_cell_atac_only_feature_means']:.3f}: the imputation "
        "rows above these are what the cell's own measurements add."
    )
    if _true_factors(mdata) is not None:  # synthetic data: the truth is known
        true_latent = np.asarray(mdata.obsm["true_latent"], dtype=np.float64)
        reference["silhouette_label_true_latent"] = true_latent_silhouette(mdata, args.seed)
        report["notes"].append(
            "Reference: the simulator's true latent (program activities and within-type "
            "factors) has a cell-type silhouette of "
            f"{reference['silhouette_label_true_latent']:.3f}; an embedding "
            "above it has made cell types more compact than they are, e.g. by dropping the "
            "within-type factors (see the R² row)."
        )
        mixing = _batch_mixing(true_latent, mdata.obs[BATCH].to_numpy(), args.seed)
        reference.update({f"{key}_true_latent": value for key, value in mixing.items()})
        if mixing:
            report["notes"].append(
                "Reference: the true latent has no batch effect; its batch entropy is "
                f"{reference['batch_entropy_true_latent']:.3f}, its iLISI "
                f"{reference['ilisi_true_latent']:.3f} and its batch predictability "
                f"{reference['batch_predictability_true_latent']:.3f}, what a perfect "
                "correction gives with these batches' cell-type composition."
            )
    report["reference"] = reference
    fingerprint = _fingerprint(mdata)
    with tempfile.TemporaryDirectory(prefix="compare_multivi_") as workdir:
        for method in args.methods:
            info, arrays = run_method(args, method, workdir)
            if info["fingerprint"] != fingerprint:
                raise RuntimeError(f"{method}'s child saw different data ({info['fingerprint']})")
            print(f"[compare_multivi] metrics for {method} ...", flush=True)  # noqa: T201
            info["metrics"] = compute_metrics(mdata, arrays, args.seed)
            info["seconds_per_epoch"] = info["train_seconds"] / max(1, info["epochs"])
            report["methods"][method] = info
            # what is done so far survives a run cut short (a time limit on a GPU lease)
            partial = _stem_path(report, args.out_dir, args.smoke, ".partial.json")
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(_round(report), indent=1) + "\n")
    return report


def _round(obj):
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return round(float(obj), 4)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _stem_path(report: dict, out_dir: Path, smoke: bool, suffix: str) -> Path:
    stem = f"compare_multivi_{report['dataset']}_n{report['n_cells']}" + ("_smoke" if smoke else "")
    return Path(out_dir) / f"{stem}{suffix}"


def write_outputs(report: dict, out_dir: Path, smoke: bool) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [_stem_path(report, out_dir, smoke, f".{ext}") for ext in ("json", "md", "png")]
    _stem_path(report, out_dir, smoke, ".partial.json").unlink(missing_ok=True)
    report = _round(report)
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, paths[1])
    write_figure(report, paths[2])
    return paths


def merge_reports(reports: list[dict]) -> dict:
    """One report of runs on the same data, each of other methods (e.g. run at the same
    time, or with other budgets): the first run's header, every run's methods, commands
    and notes, and a note naming each method's run. Refused when a method appears twice
    or the data differ (the fingerprint of the cells and features). A run written before
    the within-batch FOSCTTM row, on data of one batch, gets its pooled score there: with
    one batch they are the same."""
    merged = dict(reports[0])
    merged["methods"], commands, notes, origins = {}, [], [], []
    for report in reports:
        for method, result in report["methods"].items():
            if method in merged["methods"]:
                raise ValueError(f"{method} is in more than one report; merge one run of each")
            scores = result["metrics"]
            if (
                "foscttm_paired_within_batch" not in scores
                and scores.get("batch_predictability_chance") is None
                and scores.get("foscttm_paired") is not None
            ):
                scores = {**scores, "foscttm_paired_within_batch": scores["foscttm_paired"]}
                result = {**result, "metrics": scores}
            merged["methods"][method] = result
            commit = ((report.get("git") or {}).get("commit") or "")[:7] or "not recorded"
            origins.append(f"{method} code of {commit}")
        if report["command"] not in commands:
            commands.append(report["command"])
        notes += [note for note in report.get("notes", []) if note not in notes]
    fingerprints = {result["fingerprint"] for result in merged["methods"].values()}
    if len(fingerprints) > 1:
        raise ValueError(f"the reports are of different data (fingerprints {sorted(fingerprints)})")
    merged["command"] = " ; ".join(commands)
    merged["notes"] = notes + [
        f"Merged from {len(reports)} runs on the same data ({', '.join(origins)})."
    ]
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        default="synthetic",
        help="'synthetic'; a .h5mu file; a Cell Ranger ARC filtered_feature_bc_matrix.h5; "
        "an .h5ad with genes and peaks side by side (var['feature_types'] GEX/ATAC or "
        "'Gene Expression'/'Peaks'); an RNA and an ATAC .h5ad, comma-separated "
        "(pbmc-RNA.h5ad,pbmc-ATAC.h5ad); a data registry name (mvae_sc.datasets.available(), "
        "read from its checksummed cache); or 'shared' for every .h5mu, .h5 and .h5ad "
        f"under {SHARED_DATA} (default: synthetic)",
    )
    parser.add_argument(
        "--n-cells",
        type=int,
        default=5000,
        help="cells to simulate, or to subsample real data to (0: all)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data (and models)")
    parser.add_argument(
        "--model-seed",
        type=int,
        default=None,
        help="seed of both models' initialisation and training, to measure run-to-run "
        "noise on the same data (default: --seed)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="methods to run (default: both)",
    )
    parser.add_argument(
        "--label-key",
        default=None,
        help="obs column of cell types (real data; default: the first of "
        f"{', '.join(LABEL_KEYS)} present; '{NO_KEY}': no labels, label rows n/a)",
    )
    parser.add_argument(
        "--batch-key",
        default=None,
        help="obs column of batches (real data; default: the first of "
        f"{', '.join(BATCH_KEYS)} present; '{NO_KEY}': one batch)",
    )
    parser.add_argument(
        "--rna-mod",
        default=None,
        help=f"RNA modality (real data; default: the first of {', '.join(RNA_MODS)}, any case)",
    )
    parser.add_argument(
        "--atac-mod",
        default=None,
        help=f"ATAC modality (real data; default: the first of {', '.join(ATAC_MODS)}, any case)",
    )
    counts_help = (
        "counts layer (real data; default: X when it holds whole numbers, else the first "
        f"layer of {', '.join(COUNT_LAYERS)})"
    )
    parser.add_argument("--rna-layer", default=None, help=f"RNA {counts_help}")
    parser.add_argument("--atac-layer", default=None, help=f"ATAC {counts_help}")
    parser.add_argument(
        "--min-feature-frac",
        type=float,
        default=0.01,
        help="real data: drop features detected in fewer than this fraction of cells",
    )
    parser.add_argument(
        "--adversary-weight",
        type=float,
        default=None,
        help="mvae_sc's MVAE(adversary_weight=...) (default: the library's), to study how "
        "much batch mixing the adversary buys",
    )
    parser.add_argument(
        "--alignment-weight",
        type=float,
        default=None,
        help="mvae_sc's MVAE(alignment_weight=...) (default: the library's): weight of the "
        "penalty on how far apart the single-modality posteriors of paired cells lie",
    )
    parser.add_argument(
        "--alignment-measure",
        choices=("symmetric_kl", "mean_distance"),
        default=None,
        help="mvae_sc's MVAE(alignment_measure=...) (default: the library's): what the "
        "alignment penalty measures",
    )
    parser.add_argument(
        "--adversary-balance",
        action="store_true",
        help="mvae_sc's train(adversary_balance=True): the adversary acts only on cell "
        "types that the other batches also hold",
    )
    parser.add_argument(
        "--no-weight-averaging",
        action="store_true",
        help="mvae_sc's train(weight_averaging=None): the best epoch's weights as they "
        "were, without the moving average",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="epoch budget for both methods (default: each method's own)",
    )
    parser.add_argument(
        "--multivi-max-epochs",
        type=int,
        default=None,
        help="epoch budget for MultiVI only (e.g. to finish on a CPU)",
    )
    parser.add_argument(
        "--no-early-stopping", action="store_true", help="run the whole epoch budget"
    )
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"{SMOKE_CELLS} synthetic cells, {SMOKE_EPOCHS} epochs each",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="only rewrite the .md and .png next to this report .json",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="only merge these report .json files (runs of other methods on the same "
        "data) into one report in --out-dir",
    )
    parser.add_argument("--method", choices=METHODS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.n_cells = SMOKE_CELLS
        args.max_epochs = SMOKE_EPOCHS
    return args


def shared_files(folder: Path) -> list[str]:
    """Every data set under `folder` (sub-folders too): each .h5mu, .h5 and .h5ad file,
    except that two .h5ad files of one folder whose names differ only in the modality's
    word (``pbmc-RNA.h5ad``, ``pbmc-ATAC.h5ad``) are one data set, ``"rna,atac"``."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.rglob("*") if p.suffix in DATA_SUFFIXES and p.is_file())
    pairs: dict[tuple[Path, str], dict[str, Path]] = {}
    for path in files:
        mod = _file_modality(path) if path.suffix == ".h5ad" else None
        if mod is not None:
            pairs.setdefault((path.parent, _without_modality_words(path)), {})[mod] = path
    paired = {
        path: f"{group['rna']},{group['atac']}"
        for group in pairs.values()
        if set(group) == {"rna", "atac"}
        for path in group.values()
    }
    return sorted({paired.get(path, str(path)) for path in files})


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.method is not None:
        child_main(args)
        return
    if args.render is not None:
        report = json.loads(args.render.read_text())
        write_markdown(report, args.render.with_suffix(".md"))
        write_figure(report, args.render.with_suffix(".png"))
        return
    if args.merge is not None:
        report = merge_reports([json.loads(path.read_text()) for path in args.merge])
        for path in write_outputs(report, args.out_dir, smoke=False):
            print(f"[compare_multivi] wrote {path}")  # noqa: T201
        return
    if "multivi" in args.methods:
        try:
            import scvi  # noqa: F401
        except ImportError:
            sys.exit("MultiVI needs scvi-tools: pip install -e '.[bench]' (or --methods mvae_sc)")
    if args.smoke and args.dataset != "synthetic":
        sys.exit("--smoke runs on the synthetic data only")
    if args.dataset == "shared":
        files = shared_files(SHARED_DATA)
        if not files:
            kinds = " / ".join(DATA_SUFFIXES)
            print(f"[compare_multivi] no {kinds} file under {SHARED_DATA}; nothing to compare")  # noqa: T201
            return
        datasets = files
    else:
        datasets = [args.dataset]
    for dataset in datasets:
        run_args = argparse.Namespace(**{**vars(args), "dataset": dataset})
        try:
            report = compare(run_args, argv)
        except (ValueError, KeyError, subprocess.CalledProcessError) as error:
            if len(datasets) == 1:
                raise
            print(f"[compare_multivi] skipping {dataset}: {error}")  # noqa: T201
            continue
        paths = write_outputs(report, args.out_dir, args.smoke)
        for path in paths:
            print(f"[compare_multivi] wrote {path}")  # noqa: T201
        print(Path(args.out_dir, f"{paths[0].stem}.md").read_text())  # noqa: T201


if __name__ == "__main__":
    main()
