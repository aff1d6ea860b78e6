"""The model bundle: one directory per version holding everything serving needs, checksummed.

Training writes a bundle; serving, batch recommendation and the CLI read it. This module is the
format's single definition for both sides, and it must stay free of torch (serving imports it).

Layout of ``bundles/<version>/``:

- ``manifest.json``: version, creation time, time bounds of the data used, feature order,
  categories, metrics, fingerprints and the sha256 of every other file (written last);
- ``item_ids.json`` / ``item_vectors.npy``: item embeddings, row ``i`` is item ``item_ids[i]``;
- ``user_ids.json`` / ``user_vectors.npy``: precomputed query-tower outputs per known user;
- ``retrieval.faiss``: the ANN index over the item vectors (ids = row numbers);
- ``ranker.onnx``: the LightGBM ranker in ONNX form (what serving runs);
- ``ranker.lgb.txt``: the native LightGBM model (parity checks, the naive path);
- ``popular_items.json``: the recent-popularity source and fallback, most popular first, with counts;
- ``covisitation.npz``: the co-visitation neighbour lists of the ``covis`` candidate source;
- ``drift_reference.json`` (optional): reference bins and counts for drift monitoring, written by
  the caller's ``extra_artifacts`` hook (``monitoring/drift_reference.py``); checksummed like the rest.

A bundle is written into a hidden staging directory and renamed into place, so a reader never
sees half a bundle; :func:`verify_bundle` rejects one whose files do not match the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT_VERSION = 2  # 2: candidate sources (covisitation.npz, Manifest.candidates)
MANIFEST = "manifest.json"
ITEM_IDS = "item_ids.json"
ITEM_VECTORS = "item_vectors.npy"
USER_IDS = "user_ids.json"
USER_VECTORS = "user_vectors.npy"
RETRIEVAL_INDEX = "retrieval.faiss"
RANKER_ONNX = "ranker.onnx"
RANKER_NATIVE = "ranker.lgb.txt"
POPULAR_ITEMS = "popular_items.json"
COVISITATION = "covisitation.npz"
DRIFT_REFERENCE = "drift_reference.json"
REQUIRED_FILES = (ITEM_IDS, ITEM_VECTORS, USER_IDS, USER_VECTORS, RETRIEVAL_INDEX, RANKER_ONNX, POPULAR_ITEMS,
                  COVISITATION)


class BundleError(RuntimeError):
    """A bundle is missing, incomplete or corrupt."""


@dataclass
class Manifest:
    version: str
    created_at: float
    data_start_ts: int
    data_end_ts: int
    # Models saw interactions strictly before this instant (labels included).
    training_cutoff_ts: int
    ranker_features: list[str]
    categories: list[str]
    index: dict
    # Candidate source settings (training/candidates.py CandidateSettings).
    candidates: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    fingerprints: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def new_version(fingerprint: str) -> str:
    return time.strftime("v%Y%m%d-%H%M%S", time.gmtime()) + f"-{fingerprint[:8]}"


def staging_dir(bundles_dir: Path, version: str) -> Path:
    """Where a bundle's files are written before :func:`publish` makes them visible."""
    path = bundles_dir / f".staging-{version}"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def publish(staging: Path, manifest: Manifest) -> Path:
    """Checksum the staged files, write the manifest and atomically move the bundle into place."""
    missing = [name for name in REQUIRED_FILES if not (staging / name).exists()]
    if missing:
        raise BundleError(f"{staging}: cannot publish, missing {missing}")
    manifest.files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.name != MANIFEST}
    (staging / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    final = staging.parent / manifest.version
    os.replace(staging, final)
    return final


def verify_bundle(path: Path) -> Manifest:
    """The bundle's manifest, after checking that every listed file exists and matches its checksum."""
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise BundleError(f"{path}: not a bundle (no {MANIFEST})")
    try:
        manifest = Manifest(**json.loads(manifest_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {manifest.format_version}, this code reads {FORMAT_VERSION}")
    for name in REQUIRED_FILES:
        if name not in manifest.files:
            raise BundleError(f"{path}: manifest lists no {name}")
    for name, expected in manifest.files.items():
        file = path / name
        if not file.exists():
            raise BundleError(f"{path}: missing file {name}")
        if sha256_file(file) != expected:
            raise BundleError(f"{path}: checksum mismatch for {name}")
    return manifest


def list_bundles(bundles_dir: Path) -> list[Path]:
    """Published bundles, oldest first (versions sort by creation time)."""
    if not bundles_dir.exists():
        return []
    return sorted(
        p for p in bundles_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists()
    )


def latest_bundle(bundles_dir: Path) -> Path:
    bundles = list_bundles(bundles_dir)
    if not bundles:
        raise BundleError(f"{bundles_dir}: no bundle yet; run `recsys train` (or `recsys demo --no-serve`)")
    return bundles[-1]


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value))


def read_json(path: Path) -> object:
    return json.loads(path.read_text())
