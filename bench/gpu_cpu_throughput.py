"""CPU training throughput of gpu.train: 1 process vs 2 gloo processes (torchrun), medians of repeated runs.

    .venv/bin/python bench/gpu_cpu_throughput.py [--repeats 3] [--steps 60]

Each run is ``python -m gpu.train --synthetic ...`` and reports the median step time of its own steps
(the first step excluded); this prints every run and the median over runs. The setups take turns,
so each sees the same background load; the load average is printed too: on a shared 2-core box
other jobs move these numbers, so compare ratios taken together.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(processes: int, threads: int, args: list[str]) -> dict:
    launcher = ["-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--master_addr=127.0.0.1",
                f"--master_port={free_port()}"] if processes > 1 else []
    out = subprocess.run([sys.executable, *launcher, "-m", "gpu.train", *args], cwd=ROOT, check=True, text=True,
                         capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--synthetic", default="20000,50000,200000")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    train_args = ["--synthetic", args.synthetic, "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
                  "--log-every", "0"]
    print(f"gpu.train {' '.join(train_args)}; load average before: {os.getloadavg()}")
    setups = [(1, 2, "1 process, 2 threads"), (1, 1, "1 process, 1 thread"), (2, 1, "2 gloo processes, 1 thread each")]
    runs: dict[str, list[dict]] = {name: [] for *_, name in setups}
    for _ in range(args.repeats):  # interleaved, so that every setup sees the same background load
        for processes, threads, name in setups:
            runs[name].append(run(processes, threads, train_args))
    for name, done in runs.items():
        rates = [r["samples_per_s"] for r in done]
        print(f"{name:34s} samples/s median {statistics.median(rates):9,.0f}  runs {[round(x) for x in rates]}  "
              f"step ms {statistics.median(r['step_ms_median'] for r in done):.1f}  "
              f"peak RSS rank 0 {done[0]['peak_memory_mib_rank0']:.0f} MiB")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
