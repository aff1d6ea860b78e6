"""The background batching worker behind the log writers and the real-time feature pusher."""

from __future__ import annotations

import threading

from serving.batching_worker import BatchingWorker
from serving.event_log import FeedbackRecord, LogWriter, read_records


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
