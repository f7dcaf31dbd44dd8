"""Where a training step's time goes at realistic feature counts: gathering the
minibatch from CSR (and making it dense on the device), the forward pass, the backward pass and the optimiser step, and, over
forward + backward, which operators take the time (matrix products, the likelihoods'
special functions, the rest).

Usage:
    python benchmarks/profile_step.py [--cells 4000] [--genes 20000] [--peaks 50000]
                                      [--batch-size 128] [--steps 20] [--data-on-device]
                                      [--precision 32-true|bf16-mixed]
                                      [--out benchmarks/results/profile_step.json]

The model is the default one (``MVAE(mdata)`` after ``setup_mudata(batch_key="batch")``:
PoE, 20 latent dimensions, 256 hidden units, the adversary on), stepped the way
``TrainingPlan`` steps it (joint posterior plus one sampled single-expert term, fused
AdamW; with ``--precision bf16-mixed`` the forward pass under bfloat16 autocast, as
Lightning runs it, ``train``'s default on CPUs with native bfloat16).
Phases are wall-clock means over ``--steps`` steps after three warm-up steps, on the
default device, with the host allocator set as ``train`` sets it
(:func:`mvae_sc.train.reuse_freed_memory`) and, for comparison, as glibc leaves it by
default, with the page faults per step of each, and with float32 matrix products on
tensor cores as ``train`` runs them (:func:`mvae_sc.train.tensor_core_matmuls`; GPU
only). Operator shares come from a further set of steps under ``torch.profiler`` (self
time of each ATen operator, so nothing is counted twice).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np

# ATen operators by what they do; anything else is "other" (elementwise arithmetic,
# reductions, copies, layer norm, ...).
CATEGORIES = {
    "matrix products (linear layers)": ("addmm", "aten::mm", "bmm", "matmul"),
    "likelihood special functions": (
        "lgamma", "digamma", "log", "exp", "softplus", "sigmoid", "xlogy", "softmax",
        "binary_cross_entropy",
    ),
    "optimiser": ("_foreach", "adam"),
}  # fmt: skip


def _category(op: str) -> str:
    for name, keys in CATEGORIES.items():
        if any(key in op for key in keys):
            return name
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--peaks", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--data-on-device",
        action="store_true",
        help="copy the data to the GPU first and gather minibatches there (as "
        "train(data_on_device=True))",
    )
    parser.add_argument(
        "--precision",
        choices=["32-true", "bf16-mixed"],
        default="32-true",
        help="bf16-mixed: the forward pass under bfloat16 autocast, as Lightning runs it",
    )
    parser.add_argument("--out", default="benchmarks/results/profile_step.json")
    args = parser.parse_args()

    import mudata
    import torch
    from lightning.fabric.utilities.apply_func import move_data_to_device

    import mvae_sc
    from mvae_sc.data.loader import densify_batch
    from mvae_sc.train import TrainingPlan, reuse_freed_memory, tensor_core_matmuls

    mudata.set_options(pull_on_update=False)
    mdata = mvae_sc.datasets.synthetic_multiome(
        args.cells, n_genes=args.genes, n_peaks=args.peaks, seed=0
    )
    mvae_sc.MVAE.setup_mudata(mdata, batch_key="batch")
    model = mvae_sc.MVAE(mdata)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = model.module.to(device).train()
    optimiser = TrainingPlan(module).configure_optimizers()  # AdamW as in training
    rng = np.random.default_rng(0)
    data = model._data.to(device) if args.data_on_device else model._data
    bf16 = args.precision == "bf16-mixed"

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(times: dict | None) -> None:
        t0 = time.perf_counter()
        batch = data.minibatch(rng.choice(data.n_cells, args.batch_size, replace=False))
        batch = densify_batch(move_data_to_device(batch, device))
        sync()
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = module.loss(batch, kl_weight=0.25, stratified=False, adversary_scale=1.0)
        sync()
        t2 = time.perf_counter()
        out["loss"].backward()
        sync()
        t3 = time.perf_counter()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
        sync()
        t4 = time.perf_counter()
        if times is not None:
            for key, value in zip(
                ("gather minibatch", "forward", "backward", "optimiser step"),
                (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
                strict=True,
            ):
                times.setdefault(key, []).append(value)

    def measure() -> tuple[dict, float]:
        for _ in range(3):
            step(None)
        times: dict[str, list[float]] = {}
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(args.steps):
            step(times)
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
        phases = {k: round(1000 * float(np.mean(v)), 1) for k, v in times.items()}
        return {**phases, "total": round(sum(phases.values()), 1)}, round(faults)

    with tensor_core_matmuls():  # as train() runs
        default_phases, default_faults = measure()  # first: the settings persist afterwards
        with reuse_freed_memory():
            phases, faults = measure()
            with torch.profiler.profile() as prof:
                for _ in range(max(3, args.steps // 4)):
                    step(None)
    total = phases.pop("total")
    by_category: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            cat = _category(event.key)
            by_category[cat] = by_category.get(cat, 0.0) + event.self_cpu_time_total
    profiled = sum(by_category.values())
    report = {
        "command": "python benchmarks/profile_step.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
            for k, v in vars(args).items()
            if k != "out" and v is not False
        ),
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "precision": args.precision,
        "date": time.strftime("%Y-%m-%d"),
        "ms_per_step": {**phases, "total": total},
        "share_of_step": {k: round(v / total, 3) for k, v in phases.items()},
        "page_faults_per_step": faults,
        "ms_per_step_default_allocator": default_phases,
        "page_faults_per_step_default_allocator": default_faults,
        "operator_share_of_profiled_time": {
            k: round(v / profiled, 3) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])
        },
        "top_operators_ms_per_step": {
            e.key: round(e.self_cpu_time_total / 1000 / max(3, args.steps // 4), 1)
            for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()
