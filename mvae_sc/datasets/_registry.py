"""Registry-backed loaders for real data sets: one JSON card per data set.

Cards live in ``data_registry/`` at the repository root; wheels ship them as
``mvae_sc/data_registry`` (see pyproject's force-include). See ``data_registry/README.md``
for the card fields and the checksum policy.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import mudata
import pooch

from ..io import read_10x_multiome

logger = logging.getLogger(__name__)

__all__ = ["available", "load"]

CARD_FIELDS = (
    "name",
    "title",
    "description",
    "source",
    "url",
    "filename",
    "sha256",
    "size_bytes",
    "license",
    "format",
    "modalities",
    "labels",
    "citation",
)
#: Optional card fields (absent means null).
OPTIONAL_CARD_FIELDS = ("md5",)
FORMATS = ("10x_multiome_h5", "h5mu")

_HEX_DIGITS = {"sha256": 64, "md5": 32}
_HEX = {alg: re.compile(rf"^[0-9a-f]{{{n}}}$") for alg, n in _HEX_DIGITS.items()}
_URL = re.compile(r"^https://[^\s/]+\.[^\s/]+/\S+$")


def _registry_dir() -> Path:
    """The folder holding the cards: inside the installed package (wheels), else the
    repository root (editable installs)."""
    package_dir = Path(__file__).resolve().parents[1]  # .../mvae_sc
    for candidate in (package_dir / "data_registry", package_dir.parent / "data_registry"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"No data_registry folder found next to {package_dir} or in its parent; the "
        "installation is incomplete. Reinstall mvae-sc (the wheel ships mvae_sc/data_registry)."
    )


def _validate_card(card: Any, source: str) -> dict[str, Any]:
    """Check one card's fields and values; raise ValueError naming the problem."""
    if not isinstance(card, dict):
        raise ValueError(f"Card {source} must be a JSON object, got {type(card).__name__}.")
    missing = [field for field in CARD_FIELDS if field not in card]
    if missing:
        raise ValueError(
            f"Card {source} is missing fields {missing}; every card needs {list(CARD_FIELDS)}."
        )
    unknown = sorted(set(card) - set(CARD_FIELDS) - set(OPTIONAL_CARD_FIELDS))
    if unknown:
        raise ValueError(f"Card {source} has unknown fields {unknown}.")
    for field in ("name", "title", "description", "filename", "license", "citation"):
        if not isinstance(card[field], str) or not card[field].strip():
            raise ValueError(f"Card {source}: {field!r} must be a non-empty string.")
    for field in ("source", "url"):
        if not isinstance(card[field], str) or not _URL.match(card[field]):
            raise ValueError(
                f"Card {source}: {field!r} must be an https:// URL, got {card[field]!r}."
            )
    if "/" in card["filename"] or "\\" in card["filename"]:
        raise ValueError(
            f"Card {source}: 'filename' must be a bare file name, got {card['filename']!r}."
        )
    for alg, pattern in _HEX.items():
        value = card.get(alg)
        if value is not None and not (isinstance(value, str) and pattern.match(value)):
            raise ValueError(
                f"Card {source}: {alg!r} must be null or {_HEX_DIGITS[alg]} lower-case hex "
                f"digits, got {value!r}."
            )
    size = card["size_bytes"]
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ValueError(
            f"Card {source}: 'size_bytes' must be null or a positive integer, got {size!r}."
        )
    if card["format"] not in FORMATS:
        raise ValueError(
            f"Card {source}: 'format' must be one of {list(FORMATS)}, got {card['format']!r}."
        )
    modalities = card["modalities"]
    if not (
        isinstance(modalities, list)
        and modalities
        and all(isinstance(m, str) and m for m in modalities)
    ):
        raise ValueError(f"Card {source}: 'modalities' must be a non-empty list of names.")
    return card


def _read_cards() -> dict[str, dict[str, Any]]:
    registry = _registry_dir()
    cards: dict[str, dict[str, Any]] = {}
    for card_path in sorted(registry.glob("*.json")):
        with card_path.open(encoding="utf-8") as handle:
            card = _validate_card(json.load(handle), card_path.name)
        if card["name"] in cards:
            raise ValueError(f"Two cards in {registry} are named {card['name']!r}.")
        cards[card["name"]] = card
    return cards


def _get_card(name: str) -> dict[str, Any]:
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a string, got {type(name).__name__}.")
    cards = _read_cards()
    if name not in cards:
        raise ValueError(
            f"Unknown data set {name!r}. Known data sets: {sorted(cards)} "
            "(see mvae_sc.datasets.available())."
        )
    return cards[name]


def available() -> list[str]:
    """List the names of the registered real data sets.

    Returns
    -------
    Sorted card names, each accepted by :func:`load`.

    Examples
    --------
    >>> from mvae_sc.datasets import available
    >>> "pbmc10k_multiome" in available()
    True
    """
    return sorted(_read_cards())


def _normalize_hash(known_hash: str) -> str:
    """'sha256:<hex>', 'md5:<hex>' or a bare 64-hex sha256 -> 'alg:<hex>' (lower case)."""
    if not isinstance(known_hash, str):
        raise TypeError(f"`known_hash` must be a string, got {type(known_hash).__name__}.")
    value = known_hash.strip().lower()
    alg, _, digest = value.rpartition(":")
    alg = alg or "sha256"
    if alg not in _HEX or not _HEX[alg].match(digest):
        raise ValueError(
            f"`known_hash` must look like 'sha256:<64 hex digits>' (or 'md5:<32 hex digits>'), "
            f"got {known_hash!r}."
        )
    return f"{alg}:{digest}"


def _expected_hash(card: dict[str, Any], known_hash: str | None) -> str | None:
    if known_hash is not None:
        return _normalize_hash(known_hash)
    if card.get("sha256"):
        return f"sha256:{card['sha256']}"
    if card.get("md5"):
        return f"md5:{card['md5']}"
    return None


def _read(path: Path, card_format: str) -> mudata.MuData:
    if path.suffix == ".h5mu" or (path.suffix != ".h5" and card_format == "h5mu"):
        with mudata.set_options(pull_on_update=False):
            return mudata.read_h5mu(path)
    return read_10x_multiome(path)


def load(
    name: str,
    *,
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    known_hash: str | None = None,
) -> mudata.MuData:
    """Load a registered real data set as a MuData, downloading it if needed.

    Parameters
    ----------
    name
        Card name, one of :func:`available`.
    path
        A local copy of the file. It is checked against the card's checksum (or
        `known_hash`) when one exists, and read as ``.h5mu`` or 10x HDF5 by its extension
        (else by the card's ``format``). Nothing is downloaded.
    cache_dir
        Where downloads are kept, as ``<cache_dir>/<name>/<filename>``; defaults to
        ``pooch.os_cache("mvae_sc")``. A cached file whose checksum matches is reused
        without network access.
    known_hash
        Checksum to verify against instead of the card's, as ``"sha256:<hex>"`` (or
        ``"md5:<hex>"``). Required to download a data set whose card has no checksum.

    Returns
    -------
    The data set, e.g. ``mod["rna"]`` and ``mod["atac"]`` for a 10x multiome file
    (see :func:`mvae_sc.io.read_10x_multiome`).

    Raises
    ------
    ValueError
        Unknown `name`; a checksum mismatch; or a download of a card with no checksum and
        no `known_hash`.
    FileNotFoundError
        `path` does not exist.

    Examples
    --------
    >>> from mvae_sc.datasets import load
    >>> mdata = load("pbmc3k_multiome")  # doctest: +SKIP
    >>> mdata = load("pbmc10k_multiome", path="pbmc_granulocyte_sorted_10k_filtered_feature_bc_matrix.h5")  # doctest: +SKIP
    """
    card = _get_card(name)
    expected = _expected_hash(card, known_hash)

    if path is not None:
        file_path = Path(path)
        if not file_path.is_file():
            raise FileNotFoundError(f"`path` {str(file_path)!r} does not exist.")
        if expected is None:
            logger.info("card %r has no checksum; reading %s unverified", name, file_path)
        else:
            alg, digest = expected.split(":")
            actual = pooch.file_hash(str(file_path), alg=alg)
            if actual != digest:
                raise ValueError(
                    f"Checksum mismatch for {str(file_path)!r}: expected {alg} {digest} "
                    f"(data set {name!r}), got {actual}. The file is corrupt, incomplete or "
                    f"another release; download it again from {card['url']}, or pass "
                    "known_hash= if you trust this copy."
                )
        return _read(file_path, card["format"])

    if expected is None:
        raise ValueError(
            f"Data set {name!r} has no checksum in its card, so it is not downloaded "
            "unverified. Pass known_hash='sha256:<hex>' (the sha256 of a copy you trust, e.g. "
            f"from `sha256sum {card['filename']}`), or download {card['url']} yourself and "
            "pass path=."
        )
    cache_root = Path(cache_dir) if cache_dir is not None else Path(pooch.os_cache("mvae_sc"))
    file_path = pooch.retrieve(
        url=card["url"],
        known_hash=expected,
        fname=card["filename"],
        path=cache_root / card["name"],
        progressbar=False,
    )
    return _read(Path(file_path), card["format"])
