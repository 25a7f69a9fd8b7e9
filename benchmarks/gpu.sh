#!/usr/bin/env bash
# The GPU checks and speed figures in one go, for a machine with a CUDA GPU:
#
#   bash benchmarks/gpu.sh [DATA_ROOT] [REFERENCE] [OUT_DIR] [BUDGET_SECONDS]
#
# defaults: ../shared/data, ../shared/reference/seed_vae.py, benchmarks/results/gpu, 600.
# 1. tests/test_cuda.py, test_optim.py and test_fused_loss.py: the GPU code paths, Adam's and the loss's kernels (CI has no GPU).
# 2. benchmarks/startup.py (a fresh process's set-up with and without the warm-up thread: does
#    it save time, or only move it out of epoch 1?); benchmarks/speed.py --device cuda with the
#    defaults (the step as a CUDA graph, flat Adam as one Triton kernel, the loss as four Triton
#    kernels, the warm-up step in a thread); benchmarks/gpu_step.py and speed.py with the loss in
#    torch's ops (loss.impl=torch, the default before run 6); gpu_step.py with the defaults at
#    batch 64 and at larger batches, with and without the loss kernels, with flat Adam's torch
#    kernels, and the update alone; speed.py with optim.impl=flat, without the warm-up, with
#    fused Adam; while the budget lasts, the first step op by op, TF32, the eager step
#    (trainer.cuda_graph=false) and the opt-in variants (bf16 autocast, torch.compile).
# Each stage has its own time limit, so one that hangs cannot take the others' results with it.
# OUT_DIR gets the whole log (gpu.log) and the JSON records (in records.tgz when there are more
# than 7). Exit status 1 if there is no GPU, data or reference script (at once), or if a stage failed.
set -u
DATA=${1:-../shared/data}
REF=${2:-../shared/reference/seed_vae.py}
OUT=${3:-benchmarks/results/gpu}
BUDGET=${4:-600}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

FAILED=()
stage() {  # stage NAME LIMIT_S ESTIMATE_S CMD...: runs CMD if ESTIMATE_S still fits the budget,
    # for at most LIMIT_S and never past the budget (a caller's own time limit would cut the log)
    local name=$1 limit=$2 estimate=$3
    shift 3
    if (( SECONDS + estimate > BUDGET )); then
        echo "== $name: skipped, ${estimate}s would not fit the ${BUDGET}s budget (at ${SECONDS}s)"
        return
    fi
    (( limit > BUDGET - SECONDS )) && limit=$(( BUDGET - SECONDS ))
    echo "== $name (at ${SECONDS}s, at most ${limit}s)"
    local t0=$SECONDS rc
    # -k: vaelab's runs take SIGTERM as "save and stop", which a process stuck in a CUDA call
    # never gets to; SIGKILL 15 s later
    timeout -k 15 "$limit" "$@" 2>&1
    rc=$?
    echo "== $name: rc $rc in $((SECONDS - t0))s"
    (( rc == 0 )) || FAILED+=("$name")
}

exec > >(tee "$OUT/gpu.log") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
$PY -c "import torch, hydra, vaelab.train; print('torch', torch.__version__, 'hydra', hydra.__version__)" || exit 1
# Fail fast, not stage by stage: every stage needs the GPU, the data and the reference script
$PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" || { echo "gpu.sh: error: no CUDA device"; exit 1; }
[[ -d $DATA/MNIST/raw ]] || { echo "gpu.sh: error: no MNIST/raw under DATA_ROOT $DATA"; exit 1; }
[[ -f $REF ]] || { echo "gpu.sh: error: no reference script at $REF"; exit 1; }

DEVICE=${DEVICE:-cuda}
SPEED=($PY benchmarks/speed.py --data-root "$DATA" --reference "$REF" --device "$DEVICE" --epochs 2)

# (no -x: a failure early in test_cuda.py must not keep the kernels' tests from running; the
# stage's limit bounds a hang)
stage tests 180 70 $PY -m pytest -p no:cacheprovider tests/test_cuda.py tests/test_optim.py tests/test_fused_loss.py -rs
stage startup 120 50 $PY benchmarks/startup.py --data-root "$DATA" --device "$DEVICE" --rounds 2 --out "$OUT/startup-$DEVICE.json"
stage speed 200 90 "${SPEED[@]}" --rounds 2 --out "$OUT/speed-$DEVICE.json"
stage step-torch-loss 60 20 $PY benchmarks/gpu_step.py --loss-impl torch --batch-sizes 64
stage speed-torch-loss 150 50 "${SPEED[@]}" --rounds 1 --out "$OUT/speed-$DEVICE-torch-loss.json" loss.impl=torch
stage step 60 20 $PY benchmarks/gpu_step.py --batch-sizes 64
stage step-sizes 120 30 $PY benchmarks/gpu_step.py --batch-sizes 256,1024,4096
stage step-sizes-torch-loss 120 30 $PY benchmarks/gpu_step.py --loss-impl torch --batch-sizes 256,1024,4096
stage step-flat 60 20 $PY benchmarks/gpu_step.py --impl flat --batch-sizes 64
stage adam-only 60 15 $PY benchmarks/gpu_step.py --adam-only
stage speed-flat 150 50 "${SPEED[@]}" --rounds 1 --out "$OUT/speed-$DEVICE-flat.json" optim.impl=flat
stage speed-cold 150 50 "${SPEED[@]}" --rounds 1 --out "$OUT/speed-$DEVICE-cold.json" trainer.cuda_warmup=false
stage first-ops 60 15 $PY benchmarks/gpu_step.py --first-ops
stage speed-fused 200 90 "${SPEED[@]}" --rounds 2 --out "$OUT/speed-$DEVICE-fused.json" optim.impl=fused
stage step-tf32 120 30 $PY benchmarks/gpu_step.py --tf32 --batch-sizes 64
stage speed-eager 150 60 "${SPEED[@]}" --rounds 1 --out "$OUT/speed-$DEVICE-eager.json" trainer.cuda_graph=false
stage speed-bf16 120 50 "${SPEED[@]}" --rounds 1 --out "$OUT/speed-$DEVICE-bf16.json" trainer.amp=bf16
stage speed-compile 200 120 "${SPEED[@]}" --rounds 1 --out "$OUT/speed-$DEVICE-compile.json" trainer.compile=true
echo "== done at ${SECONDS}s; stages that failed: ${FAILED[*]:-none}"
# A device call returns at most 8 files: past that, the records travel as one archive
records=("$OUT"/*.json)
if (( ${#records[@]} > 7 )) && [[ -e ${records[0]} ]]; then
    tar -czf "$OUT/records.tgz" -C "$OUT" "${records[@]##*/}" && rm -f "${records[@]}" &&
        echo "(the ${#records[@]} JSON records are in $OUT/records.tgz)"
fi
# (the log's last lines through tee before the caller collects OUT_DIR)
exec >&- 2>&-
wait
(( ${#FAILED[@]} == 0 ))
