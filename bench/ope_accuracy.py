"""Accuracy of the OPE estimators on the simulator, where every policy's true value is known.

For each seed: fresh requests on the simulator's tiny world, logged by a softmax policy (exploring
half the requests), then every target policy is estimated from those logs with every estimator.
Prints bias, RMSE and 95% interval coverage per target and estimator (value = expected clicks per
request), then DR's overall coverage. Run from the repository root::

    .venv/bin/python -m bench.ope_accuracy [--seeds 50] [--requests 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench.ope_simulation import Case, run_study, summary

LOGGER = ("softmax", {"temperature": 0.5, "rate": 0.5, "max_explore": 0.5})
TARGETS = {
    "greedy": ("greedy", {}),
    "epsilon_greedy(0.2)": ("epsilon_greedy", {"epsilon": 0.2, "epsilon_min": 0.2}),
    "softmax(T=0.25)": ("softmax", {"temperature": 0.25, "rate": 0.5, "max_explore": 0.5}),
    "softmax(T=1, rate 1)": ("softmax", {"temperature": 1.0, "rate": 1.0, "max_explore": 1.0}),
    "squarecb(gamma=5)": ("squarecb", {"gamma": 5.0, "rate": 0.5, "max_explore": 0.5}),
    "thompson(prior)": ("thompson", {"rate": 0.5, "max_explore": 0.5}),
}


def one_seed(seed: int, n_requests: int) -> list[Case]:
    with tempfile.TemporaryDirectory() as workdir:
        return run_study(Path(workdir), [seed], n_requests, TARGETS, LOGGER)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        cases = [c for part in pool.map(one_seed, range(args.seeds), [args.requests] * args.seeds) for c in part]
    print(f"logger {LOGGER[0]} {LOGGER[1]}; {args.seeds} seeds x {args.requests} requests; value = clicks/request")
    print("| target | truth | estimator | bias | RMSE | 95% coverage |")
    print("|---|---|---|---|---|---|")
    for row in summary(cases):
        print(f"| {row['target']} | {row['truth']:.4f} | {row['estimator']} | {row['bias']:+.4f} | {row['rmse']:.4f} "
              f"| {row['coverage']:.0%} |")
    print("\n| estimator | mean abs bias | RMSE | 95% coverage |")
    print("|---|---|---|---|")
    rows = summary(cases)
    for estimator in dict.fromkeys(r["estimator"] for r in rows):
        mine = [r for r in rows if r["estimator"] == estimator]
        print(f"| {estimator} | {np.mean([abs(r['bias']) for r in mine]):.4f} "
              f"| {np.sqrt(np.mean([r['rmse'] ** 2 for r in mine])):.4f} "
              f"| {np.mean([r['coverage'] for r in mine]):.1%} |")
    dr = np.mean([c.estimates["dr"][1] <= c.truth <= c.estimates["dr"][2] for c in cases])
    ess = {t: np.mean([c.ess for c in cases if c.target == t]) for t in TARGETS}
    print(f"\nDR 95% interval contains the truth in {dr:.1%} of {len(cases)} (target, seed) cases")
    print("mean ESS of the logged rows: " + ", ".join(f"{t} {e:,.0f}" for t, e in ess.items()))
    print(f"{time.perf_counter() - started:.0f} s with {args.workers} workers")


if __name__ == "__main__":
    main()
