"""The impression and feedback logs: their schema, an append-only writer, and the readers.

Logs feed replay, off-policy evaluation, the skew check and retraining, so every record the API
accepts must reach disk, and writing must not make a request wait on the disk. Records go
through a bounded in-memory queue to one background thread that appends JSON lines; if the
queue is full (the disk is far behind), the record is counted as dropped, never silently lost,
and the request goes on. ``close()`` drains the queue, so a graceful shutdown loses nothing.

Impression record (one per /recommend response)::

    request_id, ts, user_id, model_version, policy {name, params}, arm,
    slate [{item_id, position, score, propensity, source}], features {user, items}, timings_ms

Feedback record (one per /feedback call)::

    request_id, ts, user_id, item_id, event, value
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

IMPRESSIONS_FILE = "impressions.jsonl"
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


@dataclass
class FeedbackRecord:
    request_id: str
    ts: float
    user_id: str
    item_id: str
    event: str
    value: float


class LogWriter:
    """Appends records as JSON lines from a background thread; bounded, counted, drained on close."""

    def __init__(self, path: Path, capacity: int = 10_000):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=capacity)
        self._thread = threading.Thread(target=self._run, name=f"log-writer-{path.stem}", daemon=True)
        self._thread.start()

    def write(self, record: ImpressionRecord | FeedbackRecord) -> bool:
        """Queue a record; False (and counted in ``dropped``) if the queue is full."""
        try:
            self._queue.put_nowait(asdict(record))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            while True:
                batch = [self._queue.get()]
                while not self._queue.empty() and len(batch) < 1000:
                    batch.append(self._queue.get_nowait())
                stop = None in batch
                lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in batch if r is not None]
                out.writelines(lines)
                out.flush()
                self.written += len(lines)
                if stop:
                    return


def read_records(path: Path) -> Iterator[dict]:
    """Records of a JSON-lines log, in order; a malformed line raises ValueError naming it."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {number}: not a JSON record ({exc.msg})") from exc
