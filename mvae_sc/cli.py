"""The ``mvae-sc`` command: ``demo`` (simulate, train, write results) and ``train``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("mvae_sc")


def write_h5mu_atomic(mdata, path: Path) -> None:
    """Write ``mdata`` to a temporary file beside ``path`` and rename it into place, so
    an interrupted run never leaves a half-written .h5mu."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        mdata.write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _integrate(mdata, args: argparse.Namespace, out_dir: Path, *, color: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    import mvae_sc

    layer = getattr(args, "layer", None)
    layers = {name: layer for name in ("rna", "atac") if name in mdata.mod and layer}
    mvae_sc.MVAE.setup_mudata(mdata, layers=layers, batch_key=args.batch_key)
    model = mvae_sc.MVAE(mdata, n_latent=args.n_latent)
    logger.info("%s", model)
    model.train(max_epochs=args.max_epochs, seed=args.seed, enable_progress_bar=not args.quiet)
    model.get_latent_representation()
    for name in model.registry.modalities:
        model.get_latent_representation(modality=name)
    sc.pp.neighbors(mdata, use_rep="X_mvae", random_state=args.seed)
    sc.tl.umap(mdata, random_state=args.seed)
    sc.tl.leiden(mdata, flavor="igraph", n_iterations=2, directed=False, random_state=args.seed)
    model.save(out_dir / "model", overwrite=True)
    fig = mvae_sc.pl.umap_overview(mdata, color=[c for c in color if c in mdata.obs] + ["leiden"])
    fig.savefig(out_dir / "umap.png", dpi=120)
    plt.close(fig)
    ax = mvae_sc.pl.history(model)
    ax.figure.savefig(out_dir / "history.png", dpi=120)
    plt.close(ax.figure)


def _demo(args: argparse.Namespace) -> None:
    import mudata

    import mvae_sc

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    mudata.set_options(pull_on_update=False)
    mdata = mvae_sc.datasets.synthetic_multiome(args.n_cells, n_batches=2, seed=args.seed)
    args.batch_key = "batch"
    _integrate(mdata, args, out_dir, color=["cell_type", "modality", "batch"])
    write_h5mu_atomic(mdata, out_dir / "demo.h5mu")
    logger.info(
        "wrote %s, %s and %s", out_dir / "demo.h5mu", out_dir / "umap.png", out_dir / "model"
    )


def _train(args: argparse.Namespace) -> None:
    import mudata

    from mvae_sc.io import read_multiome

    mudata.set_options(pull_on_update=False)
    mdata = read_multiome(args.input)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _integrate(mdata, args, out_dir, color=[c for c in (args.color or []) if c])
    write_h5mu_atomic(mdata, out_dir / "integrated.h5mu")
    logger.info("wrote %s", out_dir / "integrated.h5mu")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvae-sc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--n-latent", type=int, default=20, help="latent dimensions (20)")
    common.add_argument(
        "--max-epochs", type=int, default=None, help="default: chosen from the cell count"
    )
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--quiet", action="store_true", help="no progress bar")
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="simulate a mosaic multiome set, train, write demo.h5mu + umap.png",
    )
    demo.add_argument("--out", default="mvae_sc_demo", help="output folder (mvae_sc_demo)")
    demo.add_argument("--n-cells", type=int, default=3000, help="cells to simulate (3000)")
    demo.set_defaults(max_epochs=100)
    demo.set_defaults(func=_demo)
    train = sub.add_parser(
        "train", parents=[common], help="integrate multiome data (.h5mu, Cell Ranger .h5, .h5ad)"
    )
    train.add_argument(
        "input",
        help="an .h5mu with 'rna' and/or 'atac' raw counts, a Cell Ranger ARC "
        "filtered_feature_bc_matrix.h5, or an .h5ad with genes and peaks side by side "
        "(var['feature_types'] GEX/ATAC)",
    )
    train.add_argument(
        "--layer", default=None, help="the layer of raw counts (e.g. counts), if X is normalised"
    )
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--batch-key", default=None, help="column of mdata.obs with the batch")
    train.add_argument("--color", nargs="*", help="obs columns to colour the UMAP by")
    train.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mvae-sc`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
