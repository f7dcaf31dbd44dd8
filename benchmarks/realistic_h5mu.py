"""Write a synthetic multiome .h5mu shaped like a real 10x Multiome experiment, to run
``compare_multivi.py`` through its real-data path at real feature counts.

Usage::

    python benchmarks/realistic_h5mu.py --out wide3k.h5mu        # 3000 cells, 36k genes, 108k peaks
    python benchmarks/compare_multivi.py --dataset wide3k.h5mu

Every cell is paired (as in a Cell Ranger ARC output), with 36,000 genes and 108,000
peaks by default (GRCh38 has 36,601 genes; the 10x PBMC files about 108,000 peaks), raw
counts in X, and ``obs["cell_type"]`` and ``obs["batch"]`` (2 batches) as an annotated
data set has them (``--batch-shares`` for unequal batches, e.g. ``0.45 0.3 0.15 0.1``;
``--n-cell-types`` and ``--type-shares`` for common and rare cell types, e.g. 12 types
from 25 % of the cells down to 1 %;
``--absent type_0@batch_1`` for batches of different cell-type composition, removing
that type's cells from that batch after simulating; ``--depth 0.3`` for shallow
sequencing, keeping each RNA count and each detected peak with that probability), plus
the simulator's truth
(``obsm["true_latent"]``), from which the comparison scores its within-type R² row
and the true latent's references. ``compare_multivi.py`` then filters features as it
does for real data (1% of cells: about 25,000 genes and 86,000 peaks remain) and hides
modalities to make its 60/20/20 mosaic with held-out truth.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _shares(parser: argparse.ArgumentParser, flag: str, given) -> np.ndarray | None:
    """Shares given on the command line, normalised to sum to 1."""
    if given is None:
        return None
    shares = np.asarray(given, dtype=float)
    if len(shares) < 2 or (shares <= 0).any():
        parser.error(f"{flag} needs two or more positive shares")
    return shares / shares.sum()


def _thin(adata, depth: float, rng: np.random.Generator) -> None:
    """Keep each count of ``adata.X`` (sparse, whole numbers) with probability ``depth``:
    the counts a shallower sequencing run of the same cells gives."""
    x = adata.X.tocsr()
    x.data = rng.binomial(x.data.astype(np.int64), depth).astype(x.dtype)
    x.eliminate_zeros()
    adata.X = x


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-cells", type=int, default=3000)
    parser.add_argument("--n-genes", type=int, default=36_000)
    parser.add_argument("--n-peaks", type=int, default=108_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--n-batches",
        type=int,
        default=2,
        help="number of batches of about equal size (default 2; 1: one batch)",
    )
    parser.add_argument(
        "--batch-shares",
        type=float,
        nargs="+",
        default=None,
        help="one share of the cells per batch, e.g. 0.45 0.3 0.15 0.1 (default: "
        "--n-batches batches of about equal size)",
    )
    parser.add_argument(
        "--n-cell-types",
        type=int,
        default=8,
        help="number of cell types (synthetic_multiome's n_cell_types; default 8)",
    )
    parser.add_argument(
        "--type-shares",
        type=float,
        nargs="+",
        default=None,
        help="one share of the cells per cell type, e.g. 0.25 0.2 ... 0.01 for rare types "
        "(default: the simulator's, about equal)",
    )
    parser.add_argument(
        "--absent",
        nargs="+",
        default=[],
        metavar="TYPE@BATCH",
        help="remove a cell type's cells from one batch after simulating (batches of "
        "different composition), e.g. type_0@batch_1 type_7@batch_0",
    )
    parser.add_argument(
        "--batch-effect",
        type=float,
        default=0.5,
        help="scale of the batch effect (synthetic_multiome's batch_effect; default 0.5)",
    )
    parser.add_argument(
        "--batch-type-specific",
        type=float,
        default=0.0,
        help="share of the batch effect that differs between cell types, in [0, 1] "
        "(synthetic_multiome's batch_type_specific; default 0)",
    )
    parser.add_argument(
        "--depth",
        type=float,
        default=1.0,
        help="sequencing depth relative to the simulator's, in (0, 1]: keep each RNA "
        "count and each detected peak with this probability (binomial thinning, as "
        "sequencing fewer reads does; default 1: all)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.depth <= 1:
        parser.error(f"--depth must be in (0, 1], got {args.depth}")
    absent = [tuple(pair.split("@", 1)) for pair in args.absent]
    if any(len(pair) != 2 for pair in absent):
        parser.error("--absent takes TYPE@BATCH, e.g. type_0@batch_1")
    batch_shares = _shares(parser, "--batch-shares", args.batch_shares)
    type_shares = _shares(parser, "--type-shares", args.type_shares)
    if type_shares is not None and len(type_shares) != args.n_cell_types:
        parser.error(
            f"--type-shares has {len(type_shares)} shares for --n-cell-types "
            f"{args.n_cell_types}; give one per cell type"
        )

    import mudata

    import mvae_sc

    mudata.set_options(pull_on_update=False)
    if args.n_batches < 1:
        parser.error("--n-batches must be 1 or more")
    n_batches = args.n_batches if batch_shares is None else len(batch_shares)

    def simulate(n_cells: int):
        return mvae_sc.datasets.synthetic_multiome(
            n_cells,
            n_genes=args.n_genes,
            n_peaks=args.n_peaks,
            n_cell_types=args.n_cell_types,
            n_batches=n_batches,
            frac_rna_only=0,
            frac_atac_only=0,
            batch_effect=args.batch_effect,
            batch_type_specific=args.batch_type_specific,
            seed=args.seed,
        )

    # unequal groups (batches, cell types or both): simulate more cells than asked, at
    # the simulator's proportions, and keep each group's share of them
    columns, shares = [], np.ones(1)
    for column, given in (("cell_type", type_shares), ("batch", batch_shares)):
        if given is not None:
            columns.append(column)
            shares = np.outer(shares, given).ravel()
    if not columns:
        source = simulate(args.n_cells)
    else:
        sizes = np.round(shares * args.n_cells).astype(int)
        n_simulated = int(np.ceil(args.n_cells * shares.max() * len(shares) * 1.1))
        while True:
            source = simulate(n_simulated)
            groups = np.zeros(source.n_obs, dtype=int)
            for column in columns:
                codes = source.obs[column].cat.codes.to_numpy()
                groups = groups * len(source.obs[column].cat.categories) + codes
            if (np.bincount(groups, minlength=len(shares)) >= sizes).all():
                break
            n_simulated = int(np.ceil(n_simulated * 1.25))
        rng = np.random.default_rng(args.seed)
        keep = np.concatenate(
            [
                rng.choice(np.flatnonzero(groups == g), size, replace=False)
                for g, size in enumerate(sizes)
            ]
        )
        source = source[np.sort(keep)].copy()
    if absent:
        obs = source.obs
        for index, (name, column) in enumerate((("cell type", "cell_type"), ("batch", "batch"))):
            known = set(obs[column].astype(str))
            unknown = sorted({pair[index] for pair in absent} - known)
            if unknown:
                parser.error(f"--absent: no {name} {unknown}; there are {sorted(known)}")
        pairs = obs["cell_type"].astype(str) + "@" + obs["batch"].astype(str)
        source = source[~pairs.isin(args.absent).to_numpy()].copy()
    mods = {name: source.mod[name].copy() for name in ("rna", "atac")}
    for adata in mods.values():
        adata.obs = adata.obs[[]]
        if args.depth < 1:
            _thin(adata, args.depth, np.random.default_rng([args.seed, 1]))
    obs = source.obs[["cell_type", "batch"]].copy()
    out = mudata.MuData(mods, obs=obs)
    # the simulator's truth, which compare_multivi.py scores the within-type R² row on
    out.obsm["true_latent"] = source.obsm["true_latent"]
    columns = source.uns["synthetic_multiome"]["true_latent_columns"]
    out.uns["synthetic_multiome"] = {"true_latent_columns": list(columns)}
    out.write(args.out)
    print(f"wrote {args.out}")  # noqa: T201


if __name__ == "__main__":
    main()
