"""The background batching worker behind the log writers and the real-time feature pusher."""

from __future__ import annotations

import json
import os
import threading
import time

from serving.batching_worker import BatchingWorker
from serving.event_log import FeedbackRecord, ImpressionRecord, LogWriter, SlateEntry, read_records


def test_close_drains_every_queued_item_in_order():
    seen: list[int] = []
    worker = BatchingWorker("t", seen.extend, capacity=10_000)
    for n in range(5_000):
        assert worker.submit(n)
    worker.close()
    assert seen == list(range(5_000)) and worker.dropped == 0


def test_a_full_queue_refuses_and_counts_instead_of_blocking():
    release = threading.Event()
    handled: list[int] = []

    def slow(items: list[int]) -> None:
        release.wait()
        handled.extend(items)

    worker = BatchingWorker("t", slow, capacity=3, max_batch=1)
    accepted = [worker.submit(n) for n in range(10)]  # the thread holds one item; the queue takes 3 more
    assert accepted.count(False) == worker.dropped >= 6
    release.set()
    worker.close()
    assert len(handled) == accepted.count(True)


def test_window_groups_items_that_arrive_close_together():
    batches: list[list[int]] = []
    worker = BatchingWorker("t", batches.append, window_s=0.2)
    for n in range(20):
        worker.submit(n)
    worker.close()
    assert sum(batches, []) == list(range(20)) and len(batches) <= 2


def test_log_writer_appends_json_lines_and_loses_nothing_on_close(tmp_path):
    writer = LogWriter(tmp_path / "feedback.jsonl")
    for n in range(1_000):
        writer.write(FeedbackRecord(request_id=f"r{n}", ts=float(n), user_id="u", item_id="i", event="click", value=1))
    writer.close()
    records = list(read_records(tmp_path / "feedback.jsonl"))
    assert [r["request_id"] for r in records] == [f"r{n}" for n in range(1_000)]
    assert writer.written == 1_000 and writer.dropped == 0


def test_an_impression_the_fast_encoder_refuses_is_still_written_whole(tmp_path):
    """A client's context may hold an integer over 64 bits, which orjson refuses: the record goes
    through the json module instead of being lost or killing the writer thread."""
    writer = LogWriter(tmp_path / "impressions.jsonl")
    slate = [SlateEntry("i1", 1, 0.5, 1.0, "ann")]
    for n, context in enumerate([{"page": "home"}, {"big": 2**70}, {"page": "search"}]):
        writer.write(ImpressionRecord(request_id=f"r{n}", ts=float(n), user_id="u", model_version="v",
                                      policy={"name": "greedy", "params": {}}, arm=None, slate=slate, context=context))
    writer.close()
    records = list(read_records(tmp_path / "impressions.jsonl"))
    assert [r["context"] for r in records] == [{"page": "home"}, {"big": 2**70}, {"page": "search"}]
    assert records[1]["slate"] == [{"item_id": "i1", "position": 1, "score": 0.5, "propensity": 1.0, "source": "ann"}]
    assert writer.written == 3 and writer.dropped == 0


def test_a_stalled_disk_never_blocks_the_caller_and_every_drop_is_counted(tmp_path):
    """The log is a named pipe nobody reads yet: the writer thread blocks once the pipe's buffer is
    full, as it would on a stalled disk. Callers must keep returning at once, and what is refused is
    counted; once the "disk" drains, every accepted record is there."""
    fifo = tmp_path / "impressions.jsonl"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = LogWriter(fifo, capacity=100)
    slowest, accepted = 0.0, 0
    for n in range(5_000):
        started = time.perf_counter()
        accepted += writer.write(FeedbackRecord(request_id=f"r{n}", ts=float(n), user_id="u" * 200, item_id="i",
                                                event="click", value=1))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 1.0, f"a write waited {slowest:.2f} s for the disk"
    assert writer.dropped == 5_000 - accepted > 0

    chunks: list[bytes] = []

    def drain() -> None:  # the disk catches up: read until the writer closes its end
        os.set_blocking(reader, True)
        while chunk := os.read(reader, 1 << 16):
            chunks.append(chunk)

    draining = threading.Thread(target=drain)
    draining.start()
    writer.close()
    draining.join(timeout=30)
    lines = b"".join(chunks).decode().splitlines()
    assert len(lines) == accepted == writer.written
    assert len({json.loads(line)["request_id"] for line in lines}) == accepted
