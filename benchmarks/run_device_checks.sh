#!/usr/bin/env bash
# One call on a lent single-GPU machine (PyTorch, transformers, sentence-transformers; no Ray,
# no flash-attn, no network): the GPU engine benchmark on cores 2-15 and, beside it, the CPU
# engine benchmark pinned to cores 0-1 with 2 threads (a quiet CPU for the CPU ratio).
# Results land in $OUT (gpu.json, gpu.log, cpu.txt).
set -u
OUT=${OUT:-/tmp/ettin-device-out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 ETTIN_BATCH_CACHE=/tmp/ettin-cache
PY=${PY:-python3}
nvidia-smi -L
$PY -c "import torch, transformers, sentence_transformers as st; print('torch', torch.__version__, 'transformers', transformers.__version__, 'sentence-transformers', st.__version__)"
lscpu | grep -E "Model name|^CPU\(s\)"
# Build the shared random model once, so the two benchmarks do not both build it.
$PY -c "import sys; sys.path.insert(0, '.'); from ettin_batch.engine.random_models import random_model_path; print(random_model_path('random:ettin-17m'))"
timeout "${CPU_LIMIT:-400}" taskset -c 0,1 $PY benchmarks/bench_engine_cpu.py --threads 2 --pairs 2000 --repeats 1 \
    >"$OUT/cpu.txt" 2>&1 &
cpu_pid=$!
timeout "${GPU_LIMIT:-420}" taskset -c 2-15 $PY benchmarks/bench_engine_gpu.py --out "$OUT/gpu.json" 2>&1 \
    | grep -v "Loading weights\|Writing model" | tee "$OUT/gpu.log"
wait $cpu_pid
grep -E "pairs/s" "$OUT/cpu.txt"
