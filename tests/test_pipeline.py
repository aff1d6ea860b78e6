"""The trained system through the CLI: bundle contents, quality on the temporal split, batch recommendation."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import MOVIELENS, newest_manifest, recsys

from training.bundle import verify_bundle
from training.dataset import Dataset


def test_demo_bundle_is_complete_and_verified(demo_home):
    manifest = newest_manifest(demo_home)
    verified = verify_bundle(demo_home / "bundles" / manifest["version"])
    assert verified.version == manifest["version"]
    assert manifest["training_cutoff_ts"] <= manifest["data_end_ts"]
    assert manifest["index"]["type"] == "flat_ip"  # 2,000 items: exact search


def test_onnx_ranker_matches_lightgbm_on_held_out_requests(demo_home):
    parity = newest_manifest(demo_home)["metrics"]["onnx_parity"]
    assert parity["passed"]
    assert parity["requests"] > 100
    assert parity["max_abs_diff"] <= 1e-3
    assert parity["top10_mismatch_share"] <= 0.01


def test_two_stage_beats_popularity_and_retrieval_on_ndcg(demo_home):
    methods = newest_manifest(demo_home)["metrics"]["evaluation"]["methods"]
    two_stage = methods["two-stage"]["ndcg@10"]
    assert two_stage > methods["retrieval"]["ndcg@10"]
    assert two_stage > methods["popularity"]["ndcg@10"]
    assert methods["two-stage"]["users"] > 100


def test_evaluate_command_reproduces_the_training_report(demo_home):
    out = recsys("evaluate", "--home", str(demo_home)).stdout
    methods = newest_manifest(demo_home)["metrics"]["evaluation"]["methods"]
    row = next(line for line in out.splitlines() if line.startswith("two-stage"))
    assert float(row.split()[-1]) == pytest.approx(methods["two-stage"]["ndcg@10"], abs=1e-4)


def test_recommend_batch_uses_only_the_past_and_excludes_seen_items(demo_home, tmp_path):
    dataset = Dataset.load(demo_home / "data")
    manifest = newest_manifest(demo_home)
    as_of = manifest["training_cutoff_ts"]
    users = sorted(dataset.interactions["user_id"].unique())[:20] + ["someone-new"]
    (tmp_path / "users.txt").write_text("\n".join(users))
    out = tmp_path / "recs.csv"
    recsys("recommend-batch", "--users", str(tmp_path / "users.txt"), "--as-of", str(as_of), "--k", "10",
           "--out", str(out), "--home", str(demo_home))
    recs = pd.read_csv(out, dtype={"user_id": str, "item_id": str})
    assert list(recs.columns) == ["user_id", "item_id", "rank", "score"]
    before = dataset.interactions[dataset.interactions["ts"] < as_of]
    for user in users:
        mine = recs[recs["user_id"] == user]
        assert list(mine["rank"]) == list(range(1, 11)), user
        assert mine["item_id"].is_unique
        assert not set(mine["item_id"]) & set(before.loc[before["user_id"] == user, "item_id"]), user


def test_recommend_batch_refuses_a_time_the_bundle_has_seen_past(demo_home, tmp_path):
    manifest = newest_manifest(demo_home)
    (tmp_path / "users.txt").write_text("u001\n")
    result = recsys("recommend-batch", "--users", str(tmp_path / "users.txt"),
                    "--as-of", str(manifest["training_cutoff_ts"] - 86_400), "--out", str(tmp_path / "r.csv"),
                    "--home", str(demo_home), check=False)
    assert result.returncode == 1
    assert "training cutoff" in result.stderr
    assert "Traceback" not in result.stderr


def test_features_historical_keeps_every_entity_row(demo_home, tmp_path):
    manifest = newest_manifest(demo_home)
    when = pd.Timestamp(manifest["training_cutoff_ts"], unit="s", tz="UTC")
    entity_df = pd.DataFrame({"user_id": ["u001", "u001", "nobody", "u002"],
                              "event_timestamp": [when, when, when, when - pd.Timedelta(days=400)]})
    entity_df.to_parquet(tmp_path / "entities.parquet")
    recsys("features", "historical", "--entity-df", str(tmp_path / "entities.parquet"),
           "--out", str(tmp_path / "out.parquet"), "--home", str(demo_home))
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert len(out) == 4
    assert out.loc[0, "u_events_total"] == out.loc[1, "u_events_total"] > 0  # duplicate rows both kept
    assert pd.isna(out.loc[2, "u_events_total"])  # no such user
    assert pd.isna(out.loc[3, "u_events_total"])  # before any of the user's rows


def test_features_historical_rejects_a_frame_without_timestamps(demo_home, tmp_path):
    pd.DataFrame({"user_id": ["u001"]}).to_csv(tmp_path / "bad.csv", index=False)
    result = recsys("features", "historical", "--entity-df", str(tmp_path / "bad.csv"), "--out",
                    str(tmp_path / "o.csv"), "--home", str(demo_home), check=False)
    assert result.returncode == 1
    assert "bad.csv" in result.stderr and "event_timestamp" in result.stderr


def test_data_import_names_file_and_line_of_bad_input(tmp_path):
    bad = tmp_path / "interactions.csv"
    bad.write_text("user_id,item_id,ts\nu1,i1,2024-01-01T00:00:00Z\nu2,i2,yesterday\n")
    result = recsys("data", "import", "--interactions", str(bad), "--home", str(tmp_path / "h"), check=False)
    assert result.returncode == 1
    assert "interactions.csv" in result.stderr and "line 3" in result.stderr and "'ts'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "h" / "data").exists()


@pytest.mark.skipif(not MOVIELENS.exists(), reason=f"MovieLens not found at {MOVIELENS} (../shared absent)")
def test_movielens_imports_through_the_cli(tmp_path):
    recsys("data", "import", "--movielens", str(MOVIELENS), "--home", str(tmp_path))
    meta = json.loads((tmp_path / "data" / "meta.json").read_text())
    assert meta["source"] == "movielens"
    assert len(pd.read_parquet(tmp_path / "data" / "interactions.parquet")) == 100_836


@pytest.mark.skipif(not MOVIELENS.exists(), reason=f"MovieLens not found at {MOVIELENS} (../shared absent)")
def test_recommend_batch_on_imported_movielens_as_of_the_end(tmp_path):
    home = str(tmp_path)
    recsys("data", "import", "--movielens", str(MOVIELENS), "--home", home)
    recsys("train", "--home", home)
    dataset = Dataset.load(tmp_path / "data")
    as_of = dataset.end_ts + 1
    users = sorted(dataset.interactions["user_id"].unique())[:5] + ["someone-new"]
    (tmp_path / "users.txt").write_text("\n".join(users))
    recsys("recommend-batch", "--users", str(tmp_path / "users.txt"), "--as-of", str(as_of), "--k", "20",
           "--out", str(tmp_path / "recs.csv"), "--home", home)
    recs = pd.read_csv(tmp_path / "recs.csv", dtype={"user_id": str, "item_id": str})
    for user in users:
        mine = recs[recs["user_id"] == user]
        assert list(mine["rank"]) == list(range(1, 21)) and mine["item_id"].is_unique, user
        had = set(dataset.interactions.loc[dataset.interactions["user_id"] == user, "item_id"])
        assert not set(mine["item_id"]) & had, user
    assert newest_manifest(tmp_path)["metrics"]["onnx_parity"]["passed"]
