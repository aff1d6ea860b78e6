"""The impression and feedback logs: their schema, an append-only writer, and the readers.

Logs feed replay, off-policy evaluation, the skew check and retraining, so every record the API
accepts must reach disk, and writing must not make a request wait on the disk. Records go
through a bounded in-memory queue to one background thread that appends JSON lines; if the
queue is full (the disk is far behind), the record is counted as dropped, never silently lost,
and the request goes on. ``close()`` drains the queue, so a graceful shutdown loses nothing.

Impression record (one per /recommend response)::

    request_id, ts, user_id, model_version, policy {name, params}, arm,
    slate [{item_id, position, score, propensity, source}], features {user, items}, timings_ms, k,
    context, candidates {item_ids, scores}, slate_propensity, policy_state, degraded, ranker_sample

``propensity`` is P(this item at this position | request) under the policy; ``slate_propensity``
the probability of the whole slate where the policy defines it; ``policy_state`` the per-request
values needed to replay it (e.g. the decayed epsilon). ``candidates`` are the top-M ranked
candidates with their ranker scores, best first: enough to recompute any policy's propensities
and a reward model's predictions offline. ``ranker_sample`` is one candidate's ranker inputs and
score, ``{"features": {name: value}, "score"}``, picked by the request id (null when ranking fell
back): what drift monitoring counts per request, so ``recsys drift`` recounts the logs as the API
counted live.

Feedback record (one per /feedback call)::

    request_id, ts, user_id, item_id, event, value

For off-policy evaluation the logs flatten (:func:`load_logs`) to one row per shown item::

    request_id, ts, user_id, item_id, position (1-based), reward, propensity [, target_propensity]

where ``reward`` is the largest ``value`` of the item's feedback events of the chosen kinds within
the attribution window after the impression (a retried click counts once). The same rows can be
read from CSV or Parquet (:func:`read_rows`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from serving.batching_worker import BatchingWorker

IMPRESSIONS_FILE = "impressions.jsonl"
# Records are written in batches of what arrived within this window: at 200 requests/s one write and
# one wake-up of the writer thread per 10 records instead of per record (each wake-up takes the GIL).
BATCH_WINDOW_S = 0.05
FEEDBACK_FILE = "feedback.jsonl"


@dataclass
class SlateEntry:
    item_id: str
    position: int  # 1-based
    score: float
    propensity: float
    source: str


@dataclass
class ImpressionRecord:
    request_id: str
    ts: float
    user_id: str
    model_version: str
    policy: dict
    arm: str | None
    slate: list[SlateEntry]
    features: dict = field(default_factory=dict)
    timings_ms: dict = field(default_factory=dict)
    k: int = 10
    context: dict = field(default_factory=dict)
    candidates: dict = field(default_factory=dict)  # {"item_ids": [...], "scores": [...]}, best first
    slate_propensity: float | None = None
    policy_state: dict = field(default_factory=dict)  # per-request values of the policy, e.g. its epsilon
    degraded: bool = False  # a stage fell back (serving/recommender.py): scores may be retrieval scores
    ranker_sample: dict | None = None  # one candidate's ranker inputs and score, for drift monitoring


@dataclass
class FeedbackRecord:
    request_id: str
    ts: float
    user_id: str
    item_id: str
    event: str
    value: float


class LogWriter:
    """Appends records as JSON lines from a background thread; bounded, counted, drained on close.

    Each batch is one ``write`` on a file opened with O_APPEND, so several API worker processes can
    share one log file without interleaving their lines.
    """

    def __init__(self, path: Path, capacity: int = 10_000):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.written = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._worker: BatchingWorker[ImpressionRecord | FeedbackRecord] = BatchingWorker(
            f"log-writer-{path.stem}", self._append, capacity, window_s=BATCH_WINDOW_S)

    @property
    def dropped(self) -> int:
        return self._worker.dropped

    def write(self, record: ImpressionRecord | FeedbackRecord) -> bool:
        """Queue a record; False (and counted in ``dropped``) if the queue is full."""
        return self._worker.submit(record)

    def close(self) -> None:
        self._worker.close()
        os.close(self._fd)

    def _append(self, records: list[ImpressionRecord | FeedbackRecord]) -> None:
        data = b"".join(map(_json_line, records))
        view = memoryview(data)
        while view:  # a regular file takes it all at once unless the disk is full or a signal lands
            view = view[os.write(self._fd, view):]
        self.written += len(records)


def _json_line(record: ImpressionRecord | FeedbackRecord) -> bytes:
    """One record as a JSON line. orjson encodes the dataclasses in place, ~14x faster than the json
    module (0.013 vs 0.18 ms for an impression: CPU the writer thread takes from requests); what it
    refuses (an integer over 64 bits in a client's context) goes through the json module instead."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(record, default=vars, separators=(",", ":")) + "\n").encode()


def read_records(path: Path) -> Iterator[dict]:
    """Records of a JSON-lines log, in order; a malformed line raises ValueError naming it."""
    for _, record in _numbered_records(path):
        yield record


def _numbered_records(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number}: not a JSON record ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {number}: not a JSON object")
            yield number, record


# --- flattened rows for off-policy evaluation ---------------------------------------------------

ROW_COLUMNS = ["request_id", "ts", "user_id", "item_id", "position", "reward", "propensity"]
TARGET_PROPENSITY = "target_propensity"
DEFAULT_WINDOW_S = 3600.0
DEFAULT_EVENTS = ("click",)


@dataclass(frozen=True)
class FlatLogs:
    """Logs ready for OPE: ``rows`` (one per shown item, :data:`ROW_COLUMNS` plus ``source`` and
    ``model_version``, and ``target_propensity`` when given) and ``requests`` (one per request:
    ``request_id, ts, model_version, k, policy, candidate_ids, candidate_scores, recent_items``: the
    user's recent items as served, which seed co-visitation when a bundle rescores), or ``None``
    when the rows came from a CSV/Parquet file, which carries no candidates."""

    rows: pd.DataFrame
    requests: pd.DataFrame | None


def load_logs(path: Path, feedback: Path | None = None, window_s: float = DEFAULT_WINDOW_S,
              events: Iterable[str] = DEFAULT_EVENTS) -> FlatLogs:
    """Flatten impression logs (JSON lines, or a logs directory) and join their rewards, or read
    flattened rows from CSV/Parquet. The feedback log defaults to ``feedback.jsonl`` beside the
    impressions; without one every reward is 0."""
    if path.is_dir():
        path = path / IMPRESSIONS_FILE
    if path.suffix.lower() in (".csv", ".parquet", ".pq"):
        return FlatLogs(read_rows(path), None)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such log")
    rows, requests = flatten_impressions(path)
    feedback = feedback or path.with_name(FEEDBACK_FILE)
    if feedback.exists():
        rows = join_rewards(rows, read_feedback(feedback), window_s, events)
    return FlatLogs(rows, requests)


def flatten_impressions(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, requests) of an impression log; rewards are 0 until :func:`join_rewards`."""
    rows, requests, seen = [], [], set()
    for number, record in _numbered_records(path):
        where = f"{path}: line {number}"
        request_id = str(_field(record, "request_id", where))
        if request_id in seen:
            raise ValueError(f"{where}: request_id {request_id!r} was already logged")
        seen.add(request_id)
        ts = _number(_field(record, "ts", where), f"{where}: ts")
        slate = _field(record, "slate", where)
        if not isinstance(slate, list):
            raise ValueError(f"{where}: slate is not a list")
        for entry in slate:
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: a slate entry is not an object")
            position = _field(entry, "position", where)
            if not isinstance(position, int) or position < 1:
                raise ValueError(f"{where}: slate position must be an integer >= 1, got {position!r}")
            rows.append((request_id, ts, str(_field(record, "user_id", where)), str(_field(entry, "item_id", where)),
                         position, 0.0, _propensity(_field(entry, "propensity", where), f"{where}: propensity"),
                         entry.get("source", ""), str(record.get("model_version", ""))))
        candidates = record.get("candidates") or {}
        ids, scores = candidates.get("item_ids", []), candidates.get("scores", [])
        if len(ids) != len(scores):
            raise ValueError(f"{where}: candidates.item_ids and candidates.scores differ in length")
        requests.append((request_id, ts, str(record.get("model_version", "")), int(record.get("k", len(slate))),
                         record.get("policy") or {}, [str(i) for i in ids], np.asarray(scores, dtype=np.float64),
                         [str(i) for i in ((record.get("features") or {}).get("user") or {}).get("rt_recent_items")
                          or []]))
    columns = [*ROW_COLUMNS, "source", "model_version"]
    request_columns = ["request_id", "ts", "model_version", "k", "policy", "candidate_ids", "candidate_scores",
                       "recent_items"]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(requests, columns=request_columns)


def read_feedback(path: Path) -> pd.DataFrame:
    """Feedback records as a frame: ``request_id, item_id, ts, event, value``."""
    out = []
    for number, record in _numbered_records(path):
        where = f"{path}: line {number}"
        out.append((str(_field(record, "request_id", where)), str(_field(record, "item_id", where)),
                    _number(_field(record, "ts", where), f"{where}: ts"), str(record.get("event", "click")),
                    _number(record.get("value", 1.0), f"{where}: value")))
    return pd.DataFrame(out, columns=["request_id", "item_id", "ts", "event", "value"])


def join_rewards(rows: pd.DataFrame, feedback: pd.DataFrame, window_s: float = DEFAULT_WINDOW_S,
                 events: Iterable[str] = DEFAULT_EVENTS) -> pd.DataFrame:
    """Each row's reward: the largest value of its item's feedback of the given kinds on the same
    request, at most ``window_s`` seconds after the impression (0 without any)."""
    events = list(events)
    feedback = feedback[feedback["event"].isin(events)]
    matched = rows[["request_id", "item_id", "ts"]].reset_index().merge(
        feedback, on=["request_id", "item_id"], suffixes=("", "_feedback"))
    delay = matched["ts_feedback"] - matched["ts"]
    matched = matched[(delay >= 0) & (delay <= window_s)]
    rows = rows.copy()
    rows["reward"] = matched.groupby("index")["value"].max().reindex(rows.index, fill_value=0.0).to_numpy()
    return rows


def read_rows(path: Path) -> pd.DataFrame:
    """Flattened rows from CSV or Parquet, checked: errors name the file, row and column."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    frame = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    missing = [c for c in ROW_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; rows need {', '.join(ROW_COLUMNS)}")
    frame = frame.reset_index(drop=True)
    for column in ("request_id", "user_id", "item_id"):
        frame[column] = frame[column].astype(str)
    for column in ("ts", "position", "reward", "propensity", TARGET_PROPENSITY):
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna()
        if column == "position":
            bad |= (values < 1) | (values != values.round())
        elif column == "propensity":
            bad |= (values <= 0) | (values > 1)
        elif column == TARGET_PROPENSITY:
            bad |= (values < 0) | (values > 1)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}: row {row + 1}: column {column!r}: bad value {frame[column].iloc[row]!r}")
        frame[column] = values.astype(np.int64) if column == "position" else values.astype(np.float64)
    frame["source"] = frame["source"].astype(str) if "source" in frame.columns else ""
    frame["model_version"] = frame["model_version"].astype(str) if "model_version" in frame.columns else ""
    return frame


def _field(record: dict, name: str, where: str):
    if name not in record or record[name] is None:
        raise ValueError(f"{where}: record lacks {name!r}")
    return record[name]


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: not a finite number: {value!r}")
    return float(value)


def _propensity(value, where: str) -> float:
    value = _number(value, where)
    if not 0 < value <= 1:
        raise ValueError(f"{where}: must be in (0, 1], got {value}")
    return value
