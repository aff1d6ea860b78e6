"""Achieved rate of the in-batch score products of gpu.train, against the device's peak.

    python bench/gpu_score_matmul.py [--batches 1024,8192,65536 --dims 32,64,128]

Per micro-batch each rank computes the scores S = U·Vᵀ (B_local×d by d×B_global) and, in backward,
dU = dS·V and dV = dSᵀ·U: three products of 2·B_local·B_global·d FLOPs. With d of 32-128 they are
thin: each score element (2 bytes in bf16, 4 in fp32) is written or read once for 2·d FLOPs, so the
arithmetic intensity is about d FLOP/byte in bf16 and the products are memory-bound far below the
tensor-core peak once S leaves the cache: roofline ≈ min(peak, d × bandwidth). This prints, per
shape, the measured TFLOP/s of the three products, the share of the spec-sheet peak (GPUs listed
below), the share of a large square product measured on the same device (what is reachable), and
the roofline from a measured device copy. On CPU it runs in fp32 and there is no spec peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

# Dense bf16 tensor-core peak in TFLOP/s from NVIDIA's data sheets, by a substring of the device name.
SPEC_PEAK_BF16 = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
                  "L40S": 362.0, "L4": 121.0}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 10) -> float:
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def spec_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in SPEC_PEAK_BF16.items() if key in name), None)


def square_tflops(n: int, device: torch.device, dtype: torch.dtype) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device) / 1e12


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a 256 MiB device copy, counting bytes read and written."""
    source = torch.empty(1 << 28, device=device, dtype=torch.uint8)
    target = torch.empty_like(source)
    return 2 * source.numel() / timed(lambda: target.copy_(source), device)


def score_products_seconds(batch: int, dim: int, device: torch.device, dtype: torch.dtype) -> float:
    """S = U·Vᵀ, dU = dS·V, dV = dSᵀ·U for one rank holding the whole batch."""
    u = torch.randn(batch, dim, device=device, dtype=dtype)
    v = torch.randn(batch, dim, device=device, dtype=dtype)
    grad = torch.randn(batch, batch, device=device, dtype=dtype)
    return timed(lambda: (u @ v.T, grad @ v, grad.T @ u), device)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1024,8192,65536", help="global batch sizes (one rank: B_local = B)")
    parser.add_argument("--dims", default="32,64,128")
    parser.add_argument("--square", type=int, default=8192, help="side of the reference square product")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    width = torch.finfo(dtype).bits // 8

    n = args.square if device.type == "cuda" else min(args.square, 2048)
    square, bandwidth, peak = square_tflops(n, device, dtype), copy_bandwidth(device), spec_peak(device)
    print(json.dumps({"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                      "dtype": str(dtype), "spec_peak_tflops": peak, f"square_{n}_tflops": float(f"{square:.3g}"),
                      "copy_bandwidth_gb_s": round(bandwidth / 1e9, 1)}))
    print(f"{'batch':>7} {'dim':>4} {'ms':>8} {'TFLOP/s':>8} {'% spec':>7} {'% square':>9} {'roofline':>9}")
    for batch in (int(x) for x in args.batches.split(",")):
        for dim in (int(x) for x in args.dims.split(",")):
            seconds = score_products_seconds(batch, dim, device, dtype)
            tflops = 3 * 2 * batch * batch * dim / seconds / 1e12
            roofline = min(peak or square, dim * 2 / width * bandwidth / 1e12)
            share_spec = f"{100 * tflops / peak:6.1f}%" if peak else "      -"
            print(f"{batch:7d} {dim:4d} {seconds * 1e3:8.2f} {tflops:8.3g} {share_spec} "
                  f"{100 * tflops / square:8.1f}% {roofline:9.3g}")
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
