"""API conventions across the public functions: one positional (data) argument, the
rest keyword-only; a docstring with an Examples section; type hints."""

from __future__ import annotations

import inspect

import pytest

import mvae_sc

PUBLIC = [
    *(getattr(mvae_sc.MVAE, name) for name in dir(mvae_sc.MVAE) if not name.startswith("_")),
    *(getattr(mvae_sc.datasets, name) for name in mvae_sc.datasets.__all__),
    *(getattr(mvae_sc.io, name) for name in mvae_sc.io.__all__),
    mvae_sc.pl.history,
    mvae_sc.pl.umap_overview,
]
FUNCTIONS = [f for f in PUBLIC if inspect.isfunction(f) or inspect.ismethod(f)]


@pytest.mark.parametrize("func", FUNCTIONS, ids=lambda f: f.__qualname__)
def test_one_positional_argument_then_keywords(func):
    params = [
        p for p in inspect.signature(func).parameters.values() if p.name not in ("self", "cls")
    ]
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    # besides the data argument, only the modality a call is about may be positional
    # (heldout(mdata, "atac"), model.impute("rna")); load(dir_path, mdata) reads a file
    # onto data.
    selectors = {"modality", "target", "mdata"}
    extra = [p.name for p in positional[1:] if p.name not in selectors]
    assert not extra and len(positional) <= 2, [p.name for p in positional]
    assert all(
        p.annotation is not inspect.Parameter.empty for p in params if p.kind != p.VAR_KEYWORD
    )


@pytest.mark.parametrize("func", FUNCTIONS, ids=lambda f: f.__qualname__)
def test_docstring_has_examples(func):
    assert func.__doc__ and "Examples" in func.__doc__, func.__qualname__
