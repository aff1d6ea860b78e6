"""False-alarm rate and detection delay of the drift alert (monitoring/drift.py).

Three sources:

- ``synthetic`` (default): 16 features shaped like the ranker's (continuous, skewed, integer
  counts, mostly-zero counts) plus a score, 775 reference requests;
  windows are fresh draws from the same distributions;
- ``--home DIR``: the real reference rows of a trained work directory (``recsys demo --no-serve``),
  recomputed as training does; windows are resampled from them;
- ``--home DIR --logs FILE``: the bundle's frozen reference, and windows resampled from the ranker
  samples the API logged while serving (e.g. ``recsys simulate`` traffic): the served distribution
  against the reference.

False alarms: windows of 50..500 requests, no drift injected; a window alarms when any series
drifts. Detection: one feature shifted by 0.5 of its standard deviation (integer-valued series are
rounded after the shift, so a count stays a count and a shift below 0.5 is no shift at all),
requests added one by one; the delay is the number of requests when that feature is first flagged
(checked every 10 requests, up to 2,000; None: never).

    python bench/drift_detection.py [--home recsys-work [--logs recsys-work/logs/impressions.jsonl]]
                                    [--windows 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitoring.drift import MIN_COUNT, compare, count_values  # noqa: E402
from monitoring.drift_reference import DriftReference, bins_for  # noqa: E402

N_REFERENCE = 775
MAX_REQUESTS = 2000


def synthetic_population(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 17] values shaped like the ranker's inputs and score."""
    columns = [
        rng.poisson(0.3, n), rng.poisson(3, n), rng.poisson(12, n), rng.poisson(40, n),
        rng.exponential(2, n), rng.poisson(0.2, n), rng.poisson(5, n), rng.poisson(20, n),
        rng.lognormal(3, 1, n), rng.gamma(2, 0.5, n), rng.poisson(60, n), rng.beta(2, 20, n),
        rng.uniform(0, 60, n), rng.lognormal(2, 0.7, n), rng.beta(1, 5, n), rng.normal(0.5, 0.1, n),
        rng.normal(0, 1, n),
    ]
    return np.column_stack(columns).astype(np.float64)


def reference_of(values: np.ndarray, names: list[str]) -> DriftReference:
    return DriftReference([bins_for(name, values[:, j]) for j, name in enumerate(names)])


def false_alarms(reference: DriftReference, draw: Callable[[int], np.ndarray], windows: int,
                 rng: np.random.Generator) -> tuple[int, int]:
    alarms = 0
    for _ in range(windows):
        size = int(rng.integers(MIN_COUNT, 501))
        if any(s.drifting for s in compare(reference, count_values(reference, draw(size).tolist()), "w")):
            alarms += 1
    return alarms, windows


def detection_delay(reference: DriftReference, draw: Callable[[int], np.ndarray], feature: int,
                    shift: float) -> int | None:
    values = draw(MAX_REQUESTS)
    column = values[:, feature]
    integer = bool(np.all(column == np.round(column)))
    values[:, feature] = np.round(column + shift) if integer else column + shift  # a count stays a count
    for n in range(MIN_COUNT, MAX_REQUESTS + 1, 10):
        counts = count_values(reference, values[:n].tolist())
        if compare(reference, counts, "w")[feature].drifting:
            return n
    return None


def real_reference_rows(home: Path) -> tuple[np.ndarray, list[str]]:
    """The reference rows (one sampled candidate per request, as of serving start) of the home's newest bundle."""
    from feature_repo.store import open_store
    from monitoring.drift_reference import SCORE, sampled_rows
    from services.settings import Settings
    from serving.model import load_model
    from training.bundle import latest_bundle
    from training.dataset import Dataset
    from training.pipeline import serving_sample

    settings = Settings(home=home)
    model = load_model(latest_bundle(settings.bundles_dir))
    store = open_store(settings.profile, settings.features_dir, settings.project, settings.redis_url)
    features, scores, sizes = serving_sample(Dataset.load(settings.data_dir), model.candidates, store,
                                             model.ranker.score)
    rows = sampled_rows(sizes)
    values = np.column_stack([features[rows].astype(np.float64), scores[rows]])
    return values, [*model.manifest.ranker_features, SCORE]


def logged_samples(path: Path, names: list[str]) -> np.ndarray:
    """The ranker samples of an impression log as rows (series order)."""
    from serving.event_log import read_records

    samples = [r["ranker_sample"] for r in read_records(path) if r.get("ranker_sample")]
    return np.array([[s["features"][n] for n in names[:-1]] + [s["score"]] for s in samples], dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, help="Work directory with a trained bundle (default: synthetic).")
    parser.add_argument("--logs", type=Path, help="With --home: draw windows from this impression log's samples.")
    parser.add_argument("--windows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.home and args.logs:
        from monitoring.drift_reference import DriftReference
        from training.bundle import DRIFT_REFERENCE, latest_bundle

        reference = DriftReference.load(latest_bundle(args.home / "bundles") / DRIFT_REFERENCE)
        names = reference.names
        values = logged_samples(args.logs, names)
    elif args.home:
        values, names = real_reference_rows(args.home)
        reference = reference_of(values, names)
    else:
        names = [f"f{j}" for j in range(17)]
        values = synthetic_population(rng, N_REFERENCE)
        reference = reference_of(values, names)
    if args.home:
        draw = lambda n: values[rng.integers(0, len(values), n)].copy()  # noqa: E731
    else:
        draw = lambda n: synthetic_population(rng, n)  # noqa: E731
    alarms, windows = false_alarms(reference, draw, args.windows, rng)
    delays = {name: detection_delay(reference, draw, j, 0.5 * float(np.std(values[:, j])))
              for j, name in enumerate(names)}
    found = sorted(d for d in delays.values() if d is not None)
    print(json.dumps({
        "source": str(args.logs or args.home or "synthetic"), "rows": len(values),
        "reference_requests": sum(reference.series[0].counts),
        "false_alarm_windows": alarms, "windows": windows, "false_alarm_rate": alarms / windows,
        "detection_delay_requests": delays, "detected": f"{len(found)}/{len(names)}",
        "median_delay": float(np.median(found)) if found else None, "worst_delay": max(found) if found else None,
    }, indent=2))


if __name__ == "__main__":
    main()
