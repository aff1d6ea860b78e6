#!/usr/bin/env bash
# GPU check of gpu.train, for a machine with one CUDA GPU; about 3-4 minutes there. From anywhere:
#
#     bash gpu/check.sh                    # logs and JSON summaries in $OUT (default: a new temp dir)
#     CHECK_SMALL=1 bash gpu/check.sh      # tiny sizes: the same steps on a CPU box (gloo), for a smoke test
#
# 1. the device, torch and NCCL versions;
# 2. the NCCL path with world size 1 (torchrun, one process): samples/s, the in-batch score products'
#    rate over the whole step, and peak memory, at two global batch sizes, with and without bf16;
# 3. two processes sharing the one GPU: recent NCCL refuses two ranks on one device, so a failure
#    here is reported, not fatal;
# 4. the score products alone against the device's peak (bench/gpu_score_matmul.py).
# Every step has its own timeout; the script exits non-zero if a step other than 3 failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [[ -n "${CHECK_SMALL:-}" ]]; then
    DATA=300,500,20000; BATCHES="256 1024"; STEPS=10; MATMUL="--batches 256,1024 --dims 32 --square 1024"
else
    DATA=500000,1000000,4000000; BATCHES="8192 32768"; STEPS=100; MATMUL="--batches 1024,8192,32768 --dims 32,64,128"
fi
failed=0

run() {  # run NAME TIMEOUT COMMAND...: log to $OUT/NAME.log, keep the JSON summary line
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    grep '^{' "$OUT/$name.log" | tail -1 | tee -a "$OUT/summary.jsonl"
    [[ $rc -eq 0 ]] || { echo "   exit $rc; last lines:"; tail -5 "$OUT/$name.log"; }
    return $rc
}

train() {  # train NAME PROCESSES ARGS...: gpu.train under torchrun on a free port
    local name=$1 n=$2 port
    shift 2
    port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    run "$name" 120 $PY -m torch.distributed.run --nproc_per_node="$n" --master_addr=127.0.0.1 \
        --master_port="$port" -m gpu.train --synthetic "$DATA" --max-steps "$STEPS" --log-every 20 "$@"
}

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c 'import torch; c = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", c,
torch.cuda.get_device_name(0) if c else "", "nccl", torch.cuda.nccl.version() if c else "-")' | tee "$OUT/device.txt"

for batch in $BATCHES; do
    train "world1_batch$batch" 1 --batch-size "$batch" || failed=1
done
train "world1_batch${BATCHES##* }_fp32" 1 --batch-size "${BATCHES##* }" --no-bf16 || failed=1
train world2_shared_gpu 2 --batch-size "${BATCHES%% *}" || echo "   (two ranks on one GPU: not fatal)"
run matmul 150 $PY bench/gpu_score_matmul.py $MATMUL || failed=1
tail -n +2 "$OUT/matmul.log"
echo "logs and summary.jsonl in $OUT"
exit $failed
