"""gpu.train as users run it: one process vs torchrun with 2 gloo processes, resume, and the bundle path."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, free_port, newest_manifest

from training.bundle import verify_bundle

# Global batch 128 (64 per rank), 2 micro-batches per optimizer step, 6 steps.
ARGS = ["--synthetic", "300,500,4000", "--batch-size", "128", "--accum", "2", "--max-steps", "6", "--log-every", "0"]
# Float rounding differs between 1 and 2 processes (matrix shapes, summation order); after 6 Adam steps
# the differences measured here were ~1e-6 on losses and ~2e-5 on vectors.
LOSS_RTOL, VECTOR_ATOL = 1e-5, 1e-4


def gpu_train(*args: str, processes: int = 0, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m gpu.train`` (processes=0) or torchrun with that many gloo processes."""
    launcher = [] if processes == 0 else ["-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                                          "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if processes else None  # one thread per rank on 2 cores
    result = subprocess.run([sys.executable, *launcher, "-m", "gpu.train", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"gpu.train {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory) -> dict[int, np.lib.npyio.NpzFile]:
    """6 optimizer steps without interruption, in one process and in two."""
    out = tmp_path_factory.mktemp("gpu-train")
    gpu_train(*ARGS, "--out", str(out / "one.npz"))
    gpu_train(*ARGS, "--out", str(out / "two.npz"), processes=2)
    return {1: np.load(out / "one.npz"), 2: np.load(out / "two.npz")}


def test_two_gloo_processes_follow_the_single_process_trajectory(straight_runs):
    one, two = straight_runs[1], straight_runs[2]
    assert len(one["step_losses"]) == 6
    np.testing.assert_allclose(two["step_losses"], one["step_losses"], rtol=LOSS_RTOL)
    assert one["step_losses"][-1] < one["step_losses"][0]
    np.testing.assert_allclose(two["user_vectors"], one["user_vectors"], atol=VECTOR_ATOL)
    np.testing.assert_allclose(two["item_vectors"], one["item_vectors"], atol=VECTOR_ATOL)


def test_resuming_from_a_checkpoint_continues_the_same_trajectory(straight_runs, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    gpu_train(*ARGS, "--max-steps", "3", "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "2", processes=2)
    assert (checkpoints / "latest").read_text() == "step-00000003"
    gpu_train(*ARGS, "--checkpoint-dir", str(checkpoints), "--out", str(tmp_path / "resumed.npz"), processes=2)
    resumed, straight = np.load(tmp_path / "resumed.npz"), straight_runs[2]
    for key in ("step_losses", "user_vectors", "item_vectors"):
        np.testing.assert_array_equal(resumed[key], straight[key], err_msg=key)

    refused = gpu_train(*ARGS, "--checkpoint-dir", str(checkpoints), check=False)
    assert refused.returncode == 1
    assert "resume with the same number" in refused.stderr


def test_home_mode_publishes_a_standard_bundle(copy_of_demo_home):
    before = newest_manifest(copy_of_demo_home)["version"]
    gpu_train("--home", str(copy_of_demo_home), "--epochs", "2", "--log-every", "0")
    manifest = newest_manifest(copy_of_demo_home)
    assert manifest["version"] != before
    bundle = copy_of_demo_home / "bundles" / manifest["version"]
    verify_bundle(bundle)
    assert len(manifest["metrics"]["two_tower_losses"]) == 2
    assert manifest["metrics"]["evaluation"]["methods"]["retrieval"]["users"] > 100
    item_vectors = np.load(bundle / "item_vectors.npy")
    np.testing.assert_allclose(np.linalg.norm(item_vectors, axis=1), 1.0, atol=1e-5)
