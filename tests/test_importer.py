"""Tests for training.importer: user files become the normalised schema, and bad files fail precisely."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.dataset import Dataset
from training.importer import DataError, import_files, load_movielens

MOVIELENS = Path("/work/shared/data/ml-latest-small")
JAN_2_2024 = 1704164645  # 2024-01-02T03:04:05Z


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def expect_error(match: str, *paths: Path | None) -> DataError:
    with pytest.raises(DataError, match=re.escape(match)) as info:
        import_files(*paths)
    return info.value


def test_csv_round_trip_with_int_ids_and_unix_ts(tmp_path: Path) -> None:
    path = write(
        tmp_path, "interactions.csv", "user_id,item_id,ts,rating\n2,10,300,4.5\n1,11,100,3\n1,10,200,5\n"
    )
    data = import_files(path)
    frame = data.interactions
    assert list(frame.columns) == ["user_id", "item_id", "ts", "weight", "rating"]
    assert frame["ts"].dtype == np.int64 and frame["ts"].tolist() == [100, 200, 300]
    assert frame["user_id"].tolist() == ["1", "1", "2"]
    assert frame["item_id"].tolist() == ["11", "10", "10"]
    assert frame["weight"].dtype == np.float64 and (frame["weight"] == 1.0).all()
    assert frame["rating"].tolist() == [3.0, 5.0, 4.5]
    assert data.users["user_id"].tolist() == ["1", "2"]
    assert data.items["item_id"].tolist() == ["10", "11"]
    assert data.meta == {"source": "import", "files": {"interactions": str(path)}}
    assert (data.start_ts, data.end_ts) == (100, 300)


def test_dataset_saved_from_import_loads_back(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "user_id,item_id,ts,weight\nu1,i1,5,2.5\n")
    data = import_files(path)
    data.save(tmp_path / "out")
    loaded = Dataset.load(tmp_path / "out")
    pd.testing.assert_frame_equal(loaded.interactions, data.interactions)
    assert loaded.meta == data.meta


def test_csv_string_ids_keep_their_spelling(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "user_id,item_id,ts\n007, a b ,1\nalice,7,2\n")
    frame = import_files(path).interactions
    assert frame["user_id"].tolist() == ["007", "alice"]
    assert frame["item_id"].tolist() == ["a b", "7"]


def test_gzipped_csv(tmp_path: Path) -> None:
    path = tmp_path / "interactions.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("user_id,item_id,ts\n1,2,3\n")
    assert import_files(path).interactions["ts"].tolist() == [3]


@pytest.mark.parametrize("suffix", [".parquet", ".pq"])
def test_parquet_round_trip_with_int_ids(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"interactions{suffix}"
    pd.DataFrame(
        {"user_id": [3, 1], "item_id": [1.0, 2.0], "ts": [20.7, 10], "weight": [2.0, 0.5]}
    ).to_parquet(path)
    frame = import_files(path).interactions
    assert frame["user_id"].tolist() == ["1", "3"]
    assert frame["item_id"].tolist() == ["2", "1"]  # float ids print as integers, without ".0"
    assert frame["ts"].dtype == np.int64 and frame["ts"].tolist() == [10, 20]
    assert frame["weight"].tolist() == [0.5, 2.0]
    assert "rating" not in frame.columns


def test_parquet_round_trip_with_str_ids_and_datetime_ts(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    moments = pd.to_datetime(["2024-01-02T03:04:05Z", "2024-01-02T03:04:06Z"], utc=True)
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "ts": moments}).to_parquet(path)
    frame = import_files(path).interactions
    assert frame["ts"].tolist() == [JAN_2_2024, JAN_2_2024 + 1]
    assert frame["user_id"].tolist() == ["a", "b"]


def test_iso_and_unix_ts_mixed_in_one_column(tmp_path: Path) -> None:
    text = (
        "user_id,item_id,ts\n"
        "u,a,2024-01-02T03:04:05Z\n"
        f"u,b,{JAN_2_2024 + 1}\n"
        f"u,c,{JAN_2_2024 + 2}.9\n"
        "u,d,2024-01-02T05:04:08+02:00\n"
        "u,e,2024-01-02 03:04:09\n"
        "u,f,2024-01-03\n"
    )
    frame = import_files(write(tmp_path, "interactions.csv", text)).interactions
    assert frame["item_id"].tolist() == list("abcdef")
    assert frame["ts"].tolist() == [JAN_2_2024 + offset for offset in range(5)] + [1704240000]


def test_offset_does_not_leak_onto_later_naive_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    ts = ["2024-01-02T05:04:05+02:00", "2024-01-02T03:04:06"]
    pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "ts": ts}).to_parquet(path)
    assert import_files(path).interactions["ts"].tolist() == [JAN_2_2024, JAN_2_2024 + 1]


def test_extra_numeric_and_categorical_columns_are_carried(tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,item_id,ts,device,dwell\n1,1,1,ios,2.5\n2,1,2,web,\n")
    users = write(tmp_path, "u.csv", "user_id,age,country\n1,31,DE\n2,40,\n")
    data = import_files(interactions, users)
    assert data.interactions["device"].tolist() == ["ios", "web"]
    assert data.interactions["dwell"].dtype == np.float64
    assert data.users["age"].dtype == np.int64 and data.users["age"].tolist() == [31, 40]
    assert data.users["country"].iloc[0] == "DE" and pd.isna(data.users["country"].iloc[1])


def test_unsupported_parquet_columns_are_dropped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    frame = pd.DataFrame({"item_id": ["a"], "tags": [["x", "y"]], "blob": [b"\x00"], "score": [0.5]})
    frame.to_parquet(path)
    interactions = write(tmp_path, "i.csv", "user_id,item_id,ts\n1,a,1\n")
    with pytest.warns(UserWarning) as record:
        items = import_files(interactions, items=path).items
    messages = " ".join(str(warning.message) for warning in record)
    assert "'tags'" in messages and "'blob'" in messages
    assert list(items.columns) == ["item_id", "score"]


def test_known_item_columns_get_their_types(tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,item_id,ts\n1,a,1\n1,b,2\n")
    path = tmp_path / "items.parquet"
    items = {
        "item_id": ["a", "b"],
        "category": [3, 4],
        "price": [1, 2],
        "release_ts": ["2024-01-02T03:04:05Z", "7"],
    }
    pd.DataFrame(items).to_parquet(path)
    frame = import_files(interactions, items=path).items
    assert frame["category"].tolist() == ["3", "4"]
    assert frame["price"].dtype == np.float64
    assert frame["release_ts"].dtype == np.int64 and frame["release_ts"].tolist() == [JAN_2_2024, 7]
    assert frame["item_id"].tolist() == ["a", "b"]


def test_users_and_items_files_keep_entities_without_interactions(tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,item_id,ts\n1,a,1\n")
    users = write(tmp_path, "u.csv", "user_id\n1\n2\n")
    items = write(tmp_path, "items.csv", "item_id,category\na,x\nb,y\n")
    data = import_files(interactions, users, items)
    assert data.users["user_id"].tolist() == ["1", "2"]
    assert data.items["category"].tolist() == ["x", "y"]
    assert data.meta["files"] == {"interactions": str(interactions), "users": str(users), "items": str(items)}


HEADER = "user_id,item_id,ts,rating,weight\n"
GOOD = "1,1,100,4,1\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GOOD * 15 + "1,1,abc,4,1\n", "line 17, column 'ts': cannot parse 'abc' as a timestamp"),
        (GOOD * 2 + "1,1,,4,1\n", "line 4, column 'ts': missing timestamp"),
        (GOOD + "1,1,1e15,4,1\n", "line 3, column 'ts': timestamp '1e15' is out of range"),
        (GOOD * 3 + "1,1,100,great,1\n", "line 5, column 'rating': cannot parse 'great' as a finite number"),
        (GOOD + "1,1,100,4,heavy\n", "line 3, column 'weight': cannot parse 'heavy' as a finite number"),
        (GOOD + ",1,100,4,1\n", "line 3, column 'user_id': missing or empty value"),
        (GOOD * 4 + '1," ",100,4,1\n', "line 6, column 'item_id': missing or empty value"),
        (GOOD * 5 + "1,1,100,4,1,9\n", "line 7: malformed CSV: expected 5 fields, saw 6"),
        ("1,1,100,4,1,9\n" + GOOD, "line 2: malformed CSV: more fields than the header has"),
        ("", "no data rows"),
    ],
)
def test_malformed_interactions_csv(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, "interactions.csv", HEADER + body)
    error = expect_error(f"{path}: {expected}", path)
    assert error.path == path


def test_error_carries_its_location(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "user_id,item_id,ts\n" + "1,1,1\n" * 15 + "1,1,abc\n")
    error = expect_error("cannot parse", path)
    assert (error.row, error.column) == (17, "ts")
    expected = (
        f"{path}: line 17, column 'ts': cannot parse 'abc' as a timestamp (unix seconds or ISO-8601 UTC)"
    )
    assert str(error) == expected


def test_missing_required_column(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "user_id,item_id,time\n1,1,1\n")
    error = expect_error(
        f"{path}: column 'ts': required column is missing (found: user_id, item_id, time)", path
    )
    assert error.row is None


def test_zero_byte_file(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.csv", "")
    expect_error(f"{path}: empty file", path)


def test_file_not_found_and_unsupported_suffix(tmp_path: Path) -> None:
    expect_error(f"{tmp_path / 'nope.csv'}: file not found", tmp_path / "nope.csv")
    path = write(tmp_path, "interactions.json", "[]")
    expect_error(f"{path}: unsupported file type", path)


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = write(tmp_path, "interactions.parquet", "not parquet")
    expect_error(f"{path}: cannot read as Parquet", path)


def test_parquet_errors_name_one_based_rows(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    pd.DataFrame({"user_id": ["a", "b", "c"], "item_id": ["x", "y", None], "ts": [1, 2, 3]}).to_parquet(path)
    error = expect_error(f"{path}: row 3, column 'item_id': missing or empty value", path)
    assert error.row == 3


def test_parquet_fractional_float_id_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    pd.DataFrame({"user_id": [1.0, 2.5], "item_id": ["x", "y"], "ts": [1, 2]}).to_parquet(path)
    expect_error(f"{path}: row 2, column 'user_id': expected a string or an integer, got 2.5", path)


def test_unknown_user_in_users_file(tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,item_id,ts\n1,a,1\n9,a,0\n")
    users = write(tmp_path, "users.csv", "user_id\n1\n2\n")
    expect_error(f"{interactions}: line 3, column 'user_id': '9' is not in {users}", interactions, users)


def test_unknown_item_in_items_file(tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,item_id,ts\n1,a,1\n1,b,0\n")
    items = write(tmp_path, "items.csv", "item_id\na\n")
    expect_error(
        f"{interactions}: line 3, column 'item_id': 'b' is not in {items}", interactions, None, items
    )


def test_duplicate_id_in_users_file(tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,item_id,ts\n1,a,1\n")
    users = write(tmp_path, "users.csv", "user_id\n1\n2\n1\n")
    expect_error(
        f"{users}: line 4, column 'user_id': duplicate id '1' (first at line 2)", interactions, users
    )


def test_empty_users_file(tmp_path: Path) -> None:
    interactions = write(tmp_path, "i.csv", "user_id,item_id,ts\n1,a,1\n")
    users = write(tmp_path, "users.csv", "user_id\n")
    expect_error(f"{users}: no data rows", interactions, users)


def test_movielens_missing_file_is_a_data_error(tmp_path: Path) -> None:
    write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'movies.csv'}: file not found")):
        load_movielens(tmp_path)


def test_movielens_errors_use_the_file_column_names(tmp_path: Path) -> None:
    write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,soon\n")
    write(tmp_path, "movies.csv", "movieId,title,genres\n1,Toy Story (1995),Animation\n")
    with pytest.raises(DataError, match=re.escape("line 2, column 'timestamp': cannot parse 'soon'")):
        load_movielens(tmp_path)


def test_movielens_small_layout(tmp_path: Path) -> None:
    write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n1,2,4.0,20\n1,1,3.5,10\n")
    movies = (
        'movieId,title,genres\n1,"Toy Story (1995)",Adventure|Animation\n2,Babylon 5,(no genres listed)\n'
    )
    write(tmp_path, "movies.csv", movies)
    data = load_movielens(tmp_path)
    assert data.interactions["item_id"].tolist() == ["1", "2"]
    assert data.interactions["rating"].tolist() == [3.5, 4.0]
    assert data.items["category"].tolist() == ["Adventure", "unknown"]
    assert data.items["genres"].tolist() == ["Adventure|Animation", "(no genres listed)"]
    assert data.items["release_ts"].dtype == "Int64"
    assert data.items["release_ts"].iloc[0] == 788918400 and pd.isna(data.items["release_ts"].iloc[1])
    assert data.meta == {"source": "movielens", "path": str(tmp_path)}


def test_movielens_latest_small() -> None:
    if not (MOVIELENS / "ratings.csv").exists():
        pytest.skip(f"MovieLens latest-small not found at {MOVIELENS}")
    data = load_movielens(MOVIELENS)
    assert len(data.interactions) == 100836
    assert len(data.users) == 610
    assert len(data.items) == 9742
    ts = data.interactions["ts"]
    assert ts.dtype == np.int64 and ts.is_monotonic_increasing
    with_genres = data.items[data.items["genres"] != "(no genres listed)"]
    assert (with_genres["category"].str.len() > 0).all()
    assert with_genres["category"].iloc[0] == "Adventure"  # Toy Story: Adventure|Animation|...
    assert data.items["release_ts"].notna().sum() > 9700


def test_parquet_categorical_columns_become_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "interactions.parquet"
    frame = pd.DataFrame({"user_id": [1, 2], "item_id": ["x", "y"], "ts": [1, 2], "device": ["ios", None]})
    frame.astype({"user_id": "category", "device": "category"}).to_parquet(path)
    data = import_files(path).interactions
    assert data["user_id"].tolist() == ["1", "2"]
    assert data["device"].iloc[0] == "ios" and pd.isna(data["device"].iloc[1])
