"""The model bundle: published atomically, verified against its checksums, found by version order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.bundle import (
    MANIFEST,
    RANKER_NATIVE,
    REQUIRED_FILES,
    RETRIEVAL_INDEX,
    BundleError,
    Manifest,
    latest_bundle,
    list_bundles,
    publish,
    staging_dir,
    verify_bundle,
)


def manifest(version: str) -> Manifest:
    return Manifest(
        version=version,
        created_at=1_767_225_600.5,
        data_start_ts=1_767_225_600,
        data_end_ts=1_768_953_385,
        training_cutoff_ts=1_768_435_200,
        ranker_features=["u_events_1d", "retrieval_score"],
        categories=["c00", "unknown"],
        index={"type": "flat_ip", "n": 3, "dim": 2},
        metrics={"two-stage": {"recall@10": 0.25}},
        fingerprints={"data": "abc"},
    )


def stage(bundles: Path, version: str, extra: tuple[str, ...] = (RANKER_NATIVE,), skip: str | None = None) -> Path:
    staging = staging_dir(bundles, version)
    for name in (*REQUIRED_FILES, *extra):
        if name != skip:
            (staging / name).write_bytes(f"{version}:{name}".encode())
    return staging


def publish_one(bundles: Path, version: str) -> tuple[Path, Manifest]:
    m = manifest(version)
    return publish(stage(bundles, version), m), m


def test_publish_then_verify_returns_the_manifest(tmp_path: Path) -> None:
    path, published = publish_one(tmp_path, "v20260101-000000-aaaaaaaa")
    assert path == tmp_path / "v20260101-000000-aaaaaaaa"
    assert not (tmp_path / ".staging-v20260101-000000-aaaaaaaa").exists()
    read = verify_bundle(path)
    assert read == published
    assert read.index == {"type": "flat_ip", "n": 3, "dim": 2}
    assert read.metrics == {"two-stage": {"recall@10": 0.25}}
    # Every file but the manifest is checksummed, extra ones included.
    assert set(read.files) == {*REQUIRED_FILES, RANKER_NATIVE}
    assert MANIFEST not in read.files


def test_a_modified_file_fails_its_checksum(tmp_path: Path) -> None:
    path, _ = publish_one(tmp_path, "v20260101-000000-aaaaaaaa")
    (path / RETRIEVAL_INDEX).write_bytes(b"tampered")
    with pytest.raises(BundleError, match=f"checksum.*{RETRIEVAL_INDEX}"):
        verify_bundle(path)


@pytest.mark.parametrize("name", [RETRIEVAL_INDEX, RANKER_NATIVE])
def test_a_file_deleted_after_publish_is_named(tmp_path: Path, name: str) -> None:
    path, _ = publish_one(tmp_path, "v20260101-000000-aaaaaaaa")
    (path / name).unlink()
    with pytest.raises(BundleError, match=f"missing.*{name}"):
        verify_bundle(path)


@pytest.mark.parametrize("name", REQUIRED_FILES)
def test_publish_refuses_a_bundle_missing_a_required_file(tmp_path: Path, name: str) -> None:
    staging = stage(tmp_path, "v20260101-000000-aaaaaaaa", skip=name)
    with pytest.raises(BundleError, match=name):
        publish(staging, manifest("v20260101-000000-aaaaaaaa"))
    assert list_bundles(tmp_path) == []
    assert not (tmp_path / "v20260101-000000-aaaaaaaa").exists()


def test_a_manifest_that_omits_a_required_file_is_rejected(tmp_path: Path) -> None:
    path, _ = publish_one(tmp_path, "v20260101-000000-aaaaaaaa")
    data = json.loads((path / MANIFEST).read_text())
    del data["files"][RETRIEVAL_INDEX]
    (path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=RETRIEVAL_INDEX):
        verify_bundle(path)


def test_a_directory_without_manifest_or_with_a_broken_one_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle"):
        verify_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        verify_bundle(tmp_path)


def test_staging_directories_are_not_listed(tmp_path: Path) -> None:
    stage(tmp_path, "v20260101-000000-aaaaaaaa")  # files still being written
    assert list_bundles(tmp_path) == []
    # Interrupted between writing the manifest and the rename: still not published.
    interrupted = stage(tmp_path, "v20260102-000000-bbbbbbbb")
    (interrupted / MANIFEST).write_text(json.dumps({"version": "v20260102-000000-bbbbbbbb"}))
    assert list_bundles(tmp_path) == []
    with pytest.raises(BundleError):
        latest_bundle(tmp_path)
    path, _ = publish_one(tmp_path, "v20260103-000000-cccccccc")
    assert list_bundles(tmp_path) == [path]


def test_latest_bundle_is_the_newest_version_not_the_last_written(tmp_path: Path) -> None:
    newest, _ = publish_one(tmp_path, "v20260301-120000-bbbbbbbb")
    oldest, _ = publish_one(tmp_path, "v20260101-000000-aaaaaaaa")
    middle, _ = publish_one(tmp_path, "v20260201-235959-cccccccc")
    assert list_bundles(tmp_path) == [oldest, middle, newest]
    assert latest_bundle(tmp_path) == newest


def test_no_bundle_yet_gives_a_helpful_error(tmp_path: Path) -> None:
    assert list_bundles(tmp_path / "does-not-exist") == []
    for directory in (tmp_path, tmp_path / "does-not-exist"):
        with pytest.raises(BundleError, match="no bundle yet.*recsys train"):
            latest_bundle(directory)
