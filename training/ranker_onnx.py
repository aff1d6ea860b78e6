"""The ranker as ONNX: export from LightGBM, the serving-side scorer, and the parity gate.

Serving runs the ranker through ONNX Runtime (about 1.6x faster than LightGBM's own predict at
equal threads on this machine, shared/research/perf.md). The price is precision: the ONNX tree
ensemble compares features to float32 thresholds while LightGBM compares in float64, so an input
lying between a float64 threshold and its float32 rounding would take the other branch. The export
therefore first snaps every threshold down to the largest float32 not above it: for float32
inputs (which the ranker only ever gets) every split decides exactly as before, and the float32
threshold in the ONNX graph is that same number. What remains is float32 summation of leaf
values; the parity check measures it on held-out requests and fails the build when it matters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnxruntime as ort

MAX_ABS_DIFF = 1e-3
MAX_TOP10_MISMATCH_SHARE = 0.01
ROW_TOLERANCE = 1e-5
# Sum the trees in float64 chunks of this many, which keeps float32 accumulation error small.
SUM_SPLIT = 25


class ParityError(RuntimeError):
    """The ONNX ranker does not reproduce LightGBM closely enough to serve."""


def float32_thresholds(booster: lgb.Booster) -> lgb.Booster:
    """The same trees with each numerical split threshold t replaced by the largest float32 <= t.

    For a float32 input x, ``x <= t`` holds exactly when ``x <= that float32`` does, so predictions on
    float32 inputs do not change; categorical splits (their "threshold" is an index) are left alone.
    """
    # "tree_sizes" gives each tree's length in bytes, which the new numbers change; without it the
    # trees are parsed one after the other.
    lines = [line for line in booster.model_to_string().split("\n") if not line.startswith("tree_sizes=")]
    thresholds = [i for i, line in enumerate(lines) if line.startswith("threshold=")]
    decision_types = [i for i, line in enumerate(lines) if line.startswith("decision_type=")]
    for t, d in zip(thresholds, decision_types, strict=True):  # one of each per tree
        categorical = [int(v) & 1 for v in lines[d].split("=", 1)[1].split()]
        values = lines[t].split("=", 1)[1].split()
        lines[t] = "threshold=" + " ".join(
            value if is_categorical else repr(_float32_at_most(float(value)))
            for value, is_categorical in zip(values, categorical, strict=True)
        )
    return lgb.Booster(model_str="\n".join(lines))


def _float32_at_most(value: float) -> float:
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def export_onnx(booster: lgb.Booster, n_features: int, path: Path) -> None:
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_lightgbm(
        float32_thresholds(booster), initial_types=[("features", FloatTensorType([None, n_features]))],
        target_opset=15, zipmap=False, split=SUM_SPLIT,
    )
    path.write_bytes(model.SerializeToString())


class OnnxRanker:
    """Scores a [n, F] float32 feature matrix; one intra-op thread (processes scale, threads fight)."""

    def __init__(self, path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def score(self, features: np.ndarray) -> np.ndarray:
        if len(features) == 0:
            return np.empty(0, dtype=np.float32)
        (scores,) = self.session.run(None, {self.input_name: np.ascontiguousarray(features, np.float32)})
        return scores.reshape(-1)


@dataclass(frozen=True)
class ParityReport:
    rows: int
    requests: int
    max_abs_diff: float
    share_rows_above_1e5: float
    top10_mismatch_share: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= MAX_ABS_DIFF and self.top10_mismatch_share <= MAX_TOP10_MISMATCH_SHARE

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_parity(booster: lgb.Booster, onnx: OnnxRanker, features: np.ndarray,
                 groups: np.ndarray) -> ParityReport:
    """Compare ONNX and native scores on requests (``groups`` = rows per request, in order)."""
    native = booster.predict(features.astype(np.float64), num_threads=1)
    served = onnx.score(features).astype(np.float64)
    diff = np.abs(native - served)
    mismatched = 0
    start = 0
    for size in groups:
        a, b = native[start:start + size], served[start:start + size]
        k = min(10, size)
        if set(np.argsort(-a, kind="stable")[:k]) != set(np.argsort(-b, kind="stable")[:k]):
            mismatched += 1
        start += size
    return ParityReport(
        rows=len(features),
        requests=len(groups),
        max_abs_diff=float(diff.max(initial=0.0)),
        share_rows_above_1e5=float((diff > ROW_TOLERANCE).mean()) if len(diff) else 0.0,
        top10_mismatch_share=mismatched / max(len(groups), 1),
    )
