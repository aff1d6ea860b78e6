"""Turn a user's CSV/Parquet files (or the MovieLens layout) into a normalised :class:`Dataset`.

Every later stage trusts the schema documented in :mod:`training.dataset`, so all checking happens
here, once. Each problem is raised as a :class:`DataError` that names the file, the line (CSV) or row
(Parquet) and the column, so that a user can fix the file from the message alone.

Choices worth knowing:

- CSV cells are read as text and converted column by column, so string ids keep their exact spelling
  (``"007"`` stays ``"007"``) while numeric ids from Parquet print without ``.0``. A CSV line number
  is the data row's index + 2 (the header is line 1), which assumes no blank or multi-line rows.
- Timestamps may be unix seconds (int or float, floored) or ISO-8601 strings, mixed in one column.
  Strings without a zone are taken as UTC; strings with an offset are converted to UTC.
- A missing ``weight`` cell becomes 1.0 and a missing ``rating`` cell stays NaN; missing item
  features are kept as missing, so ``release_ts`` is nullable ``Int64`` when any value is missing
  and plain ``int64`` otherwise.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from training.dataset import UNKNOWN_CATEGORY, Dataset

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")
TS_FORMATS = "unix seconds or ISO-8601 UTC"
# Timestamps must fit datetime64[ns], which later stages use; this also catches milliseconds.
MIN_TS = int(pd.Timestamp.min.ceil("s").timestamp())
MAX_TS = int(pd.Timestamp.max.floor("s").timestamp())
# MovieLens marks a movie without genres with this placeholder; its category becomes UNKNOWN_CATEGORY.
NO_GENRES = "(no genres listed)"

_EPOCH = pd.Timestamp(0, tz="UTC")
_SECOND = pd.Timedelta(seconds=1)
_ZONE_SUFFIX = r"(?:[Zz]|[+-]\d{2}:?\d{2})$"
_TITLE_YEAR = r"\((\d{4})(?:[-\u2013]\d{4})?\)\s*$"  # "(1995)" or a range "(2006\u20132007)"
_INTERACTION_COLUMNS = ("user_id", "item_id", "ts", "weight", "rating")
_ITEM_COLUMNS = ("item_id", "category", "price", "release_ts")


def _is_csv(path: Path) -> bool:
    return path.name.lower().endswith(CSV_SUFFIXES)


def _position(path: Path, row: int) -> str:
    return f"line {row}" if _is_csv(path) else f"row {row}"


class DataError(ValueError):
    """A problem in an input file, located precisely enough to fix it by hand.

    ``row`` is the number shown in the message: the file line for CSV, the 1-based row for Parquet.
    """

    def __init__(self, path: Path, row: int | None, column: str | None, message: str) -> None:
        self.path = path
        self.row = row
        self.column = column
        self.message = message
        location = [_position(path, row)] if row is not None else []
        if column is not None:
            location.append(f"column {column!r}")
        parts = [str(path), ", ".join(location)] if location else [str(path)]
        super().__init__(": ".join([*parts, message]))


@dataclass
class _Table:
    """A raw frame plus what is needed to point at its cells in error messages."""

    path: Path
    frame: pd.DataFrame
    # normalised column name -> the name in the file, for files whose columns get renamed
    source_names: dict[str, str] = field(default_factory=dict)

    def number(self, index: int) -> int:
        """The 0-based data row ``index`` as a reader of the file counts: CSV line (header is 1) or row."""
        return index + (2 if _is_csv(self.path) else 1)

    def error(self, index: int | None, column: str | None, message: str) -> DataError:
        row = None if index is None else self.number(index)
        name = None if column is None else self.source_names.get(column, column)
        return DataError(self.path, row, name, message)

    def rename(self, mapping: dict[str, str]) -> None:
        self.frame = self.frame.rename(columns=mapping)
        self.source_names.update({new: old for old, new in mapping.items()})

    def require(self, columns: list[str]) -> None:
        missing = [column for column in columns if column not in self.frame.columns]
        if missing:
            found = ", ".join(map(str, self.frame.columns))
            raise self.error(None, missing[0], f"required column is missing (found: {found})")


def _read_table(path: Path) -> _Table:
    """Read a CSV or Parquet file by suffix, turning every reader failure into a DataError."""
    if not (_is_csv(path) or path.name.lower().endswith(PARQUET_SUFFIXES)):
        expected = ", ".join(CSV_SUFFIXES + PARQUET_SUFFIXES)
        raise DataError(path, None, None, f"unsupported file type (expected {expected})")
    if not path.exists():
        raise DataError(path, None, None, "file not found")
    frame = _read_csv(path) if _is_csv(path) else _read_parquet(path)
    if len(frame) == 0:
        raise DataError(path, None, None, "no data rows")
    return _Table(path, frame)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        with warnings.catch_warnings():
            # With index_col=False pandas only warns when the first data row is wider than the header.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(path, dtype=str, index_col=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as exc:
        raise DataError(path, None, None, "empty file (no header and no data rows)") from exc
    except pd.errors.ParserWarning as exc:
        raise DataError(path, 2, None, "malformed CSV: more fields than the header has") from exc
    except pd.errors.ParserError as exc:
        text = str(exc)
        ragged = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
        if ragged:
            expected, line, saw = ragged.groups()
            raise DataError(
                path, int(line), None, f"malformed CSV: expected {expected} fields, saw {saw}"
            ) from exc
        line_match = re.search(r"line (\d+)", text)
        line = int(line_match.group(1)) if line_match else None
        raise DataError(path, line, None, f"malformed CSV: {text.strip()}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(path, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (OSError, EOFError) as exc:
        raise DataError(path, None, None, f"cannot read file: {exc}") from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DataError(path, None, None, f"cannot read as Parquet: {exc}") from exc
    # A frame saved with a named index (e.g. set_index("user_id")) keeps that column in the index.
    named_index = any(name is not None for name in frame.index.names)
    frame = frame.reset_index(drop=not named_index)
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].to_numpy()  # plain values: ints (float if missing) or strings
    return frame


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _cell(values: pd.Series, index: int) -> str:
    """A cell as messages quote it: numpy scalars shown as plain Python values (2.5, not np.float64(2.5))."""
    value = values.iloc[index]
    return repr(value.item() if isinstance(value, np.generic) else value)


def _text(table: _Table, column: str, *, allow_missing: bool) -> pd.Series:
    """Strings from a string or integer column; integral floats print as ints so 7, 7.0 and "7" agree."""
    values = table.frame[column]
    missing = values.isna().to_numpy()
    present = values[~missing]
    if pd.api.types.is_bool_dtype(values):
        raise table.error(_first(~missing), column, "expected a string or an integer, got a boolean")
    if pd.api.types.is_float_dtype(values):
        fractional = (present.to_numpy() % 1) != 0
        if fractional.any():
            index = int(np.flatnonzero(~missing)[_first(fractional)])
            raise table.error(index, column, f"expected a string or an integer, got {_cell(values, index)}")
        text = present.astype("int64").astype(str)
    elif pd.api.types.is_integer_dtype(values):
        text = present.astype("int64").astype(str)
    elif pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        not_str = ~present.map(lambda value: isinstance(value, str)).to_numpy(dtype=bool)
        if not_str.any():
            index = int(np.flatnonzero(~missing)[_first(not_str)])
            kind = type(values.iloc[index]).__name__
            raise table.error(index, column, f"expected a string or an integer, got {kind}")
        text = present.astype(str).str.strip()
    else:
        raise table.error(None, column, f"expected strings or integers, got {values.dtype}")
    result = pd.Series(None, index=values.index, dtype=object)
    result[~missing] = text
    blank = missing | (result == "").to_numpy()
    if not allow_missing and blank.any():
        raise table.error(_first(blank), column, "missing or empty value")
    return result.where(~blank, None)


def _numbers(table: _Table, column: str) -> np.ndarray:
    """Float64 values, NaN where missing; text that is not a finite number is an error."""
    values = table.frame[column]
    missing = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values):
        raise table.error(_first(~missing), column, "expected a number, got a boolean")
    if pd.api.types.is_numeric_dtype(values):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
    else:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    bad = ~missing & ~np.isfinite(numbers)
    if bad.any():
        index = _first(bad)
        raise table.error(index, column, f"cannot parse {_cell(values, index)} as a finite number")
    return numbers


def _iso_seconds(texts: pd.Series) -> np.ndarray:
    """Unix seconds (float, NaN where unparsable) from ISO-8601 strings."""
    seconds = np.full(len(texts), np.nan)
    zoned = texts.str.contains(_ZONE_SUFFIX, regex=True).to_numpy(dtype=bool)
    # Parsed apart: in one call pandas applies an offset seen earlier to later strings without a zone.
    for group in (zoned, ~zoned):
        if group.any():
            parsed = pd.to_datetime(texts[group], format="ISO8601", utc=True, errors="coerce")
            seconds[group] = ((parsed - _EPOCH) // _SECOND).to_numpy(dtype="float64", na_value=np.nan)
    return seconds


def _timestamps(table: _Table, column: str, *, allow_missing: bool) -> pd.Series:
    """Unix seconds as int64 (nullable Int64 if missing cells are allowed and present)."""
    values = table.frame[column]
    missing = values.isna().to_numpy()
    if pd.api.types.is_datetime64_any_dtype(values):
        moments = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        seconds = ((moments - _EPOCH) // _SECOND).to_numpy(dtype="float64", na_value=np.nan)
    elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        seconds = values.to_numpy(dtype="float64", na_value=np.nan)
    else:
        seconds = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        texts = np.isnan(seconds) & ~missing
        if texts.any():
            seconds[texts] = _iso_seconds(values[texts].astype(str).str.strip())
    unparsable = np.isnan(seconds) & ~missing
    out_of_range = ~missing & ((seconds < MIN_TS) | (seconds > MAX_TS))
    bad = unparsable | out_of_range | (missing & (not allow_missing))
    if bad.any():
        index = _first(bad)
        raw = _cell(values, index)
        if missing[index]:
            message = f"missing timestamp ({TS_FORMATS})"
        elif unparsable[index]:
            message = f"cannot parse {raw} as a timestamp ({TS_FORMATS})"
        else:
            message = f"timestamp {raw} is out of range: unix seconds expected (milliseconds?)"
        raise table.error(index, column, message)
    floored = pd.Series(np.floor(seconds), index=values.index)
    return floored.astype("Int64") if missing.any() else floored.astype("int64")


def _feature(table: _Table, column: str) -> pd.Series | None:
    """A numeric or categorical (str) column as is; None (with a warning) for anything else."""
    values = table.frame[column]
    if pd.api.types.is_numeric_dtype(values):
        return values
    if pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        present = values.dropna()
        if present.map(lambda value: isinstance(value, str)).all():
            if _is_csv(table.path):
                # CSV has no types: a column whose every cell is a number is numeric.
                numbers = pd.to_numeric(values, errors="coerce")
                if numbers.notna().sum() == len(present):
                    return numbers
            return values.astype(object)
        kinds = sorted({type(value).__name__ for value in present if not isinstance(value, str)})
        reason = f"holds {', '.join(kinds)} values"
    else:
        reason = f"has type {values.dtype}"
    warnings.warn(
        f"{table.path}: dropping column {column!r}: it {reason}, which is neither numeric nor categorical",
        stacklevel=2,
    )
    return None


def _with_features(table: _Table, frame: pd.DataFrame, known: tuple[str, ...]) -> pd.DataFrame:
    for column in table.frame.columns:
        if column not in known:
            values = _feature(table, column)
            if values is not None:
                frame[column] = values
    return frame


def _interactions(table: _Table) -> pd.DataFrame:
    """Normalised interactions in file order (sorting waits so errors can name file rows)."""
    table.require(["user_id", "item_id", "ts"])
    frame = pd.DataFrame(
        {
            "user_id": _text(table, "user_id", allow_missing=False),
            "item_id": _text(table, "item_id", allow_missing=False),
            "ts": _timestamps(table, "ts", allow_missing=False),
        }
    )
    weight = _numbers(table, "weight") if "weight" in table.frame.columns else np.ones(len(frame))
    frame["weight"] = np.where(np.isnan(weight), 1.0, weight)
    if "rating" in table.frame.columns:
        frame["rating"] = _numbers(table, "rating")
    return _with_features(table, frame, _INTERACTION_COLUMNS)


def _entities(table: _Table, id_column: str) -> pd.DataFrame:
    """Normalised users or items: unique ids plus features; item's known columns get their types."""
    table.require([id_column])
    ids = _text(table, id_column, allow_missing=False)
    duplicated = ids.duplicated().to_numpy()
    if duplicated.any():
        index = _first(duplicated)
        first = _first((ids == ids.iloc[index]).to_numpy())
        message = f"duplicate id {ids.iloc[index]!r} (first at {_position(table.path, table.number(first))})"
        raise table.error(index, id_column, message)
    frame = pd.DataFrame({id_column: ids})
    columns = table.frame.columns
    if id_column == "item_id":
        if "category" in columns:
            frame["category"] = _text(table, "category", allow_missing=True)
        if "price" in columns:
            frame["price"] = _numbers(table, "price")
        if "release_ts" in columns:
            frame["release_ts"] = _timestamps(table, "release_ts", allow_missing=True)
    return _with_features(table, frame, _ITEM_COLUMNS if id_column == "item_id" else (id_column,))


def _check_known(table: _Table, frame: pd.DataFrame, column: str, entities: _Table, ids: pd.Series) -> None:
    """Every interaction must refer to a user/item of the given file; name the first that does not."""
    unknown = ~frame[column].isin(ids).to_numpy()
    if unknown.any():
        index = _first(unknown)
        raise table.error(index, column, f"{_cell(frame[column], index)} is not in {entities.path}")


def _build(interactions: _Table, users: _Table | None, items: _Table | None, meta: dict) -> Dataset:
    """The shared path of every import: normalise, cross-check ids, derive missing tables, sort."""
    frame = _interactions(interactions)
    entities = {}
    for column, table in (("user_id", users), ("item_id", items)):
        if table is None:
            entities[column] = pd.DataFrame({column: sorted(frame[column].unique())}, dtype=object)
        else:
            entities[column] = _entities(table, column)
            _check_known(interactions, frame, column, table, entities[column][column])
    return Dataset(
        interactions=frame.sort_values("ts", kind="stable").reset_index(drop=True),
        users=entities["user_id"],
        items=entities["item_id"],
        meta=meta,
    )


def import_files(interactions: Path, users: Path | None = None, items: Path | None = None) -> Dataset:
    """Import a user's own CSV/Parquet files; users/items are derived from the interactions if omitted."""
    paths = {"interactions": interactions, "users": users, "items": items}
    tables = {name: _read_table(Path(path)) for name, path in paths.items() if path is not None}
    meta = {
        "source": "import",
        "files": {name: str(path) for name, path in paths.items() if path is not None},
    }
    return _build(tables["interactions"], tables.get("users"), tables.get("items"), meta)


def load_movielens(directory: Path) -> Dataset:
    """Import a MovieLens "latest-small" directory (ratings.csv, movies.csv) through the import_files path.

    Items keep ``title`` and the raw ``genres``; ``category`` is the first genre (``"unknown"`` when
    none is listed) and ``release_ts`` is Jan 1 (UTC) of the title's "(YYYY)", nullable ``Int64``
    because a few titles carry no year.
    """
    directory = Path(directory)
    ratings = _read_table(directory / "ratings.csv")
    ratings.require(["userId", "movieId", "rating", "timestamp"])
    ratings.rename({"userId": "user_id", "movieId": "item_id", "timestamp": "ts"})
    movies = _read_table(directory / "movies.csv")
    movies.require(["movieId", "title", "genres"])
    movies.rename({"movieId": "item_id"})
    genres = movies.frame["genres"].fillna("").str.strip()
    first_genre = genres.str.split("|").str[0]
    movies.frame["category"] = first_genre.where(~first_genre.isin(["", NO_GENRES]), UNKNOWN_CATEGORY)
    year = movies.frame["title"].str.extract(_TITLE_YEAR, expand=False)
    movies.frame["release_ts"] = (year + "-01-01T00:00:00Z").where(year.notna(), None)
    return _build(ratings, None, movies, {"source": "movielens", "path": str(directory)})
