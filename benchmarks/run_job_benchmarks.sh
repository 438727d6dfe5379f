#!/usr/bin/env bash
# The rerank job's CPU benchmarks, one after another, on an otherwise idle machine:
#   Ray's overhead (20k pairs), incremental --reuse (5% changed), scale (200k -> 2M pairs),
#   and (only when named) plan: the forecast against real runs (PLAN_MODELS, PLAN_PAIRS, PLAN_FLAGS).
# Runs from a snapshot of the package so edits to the working tree cannot change it mid-run.
# Raw JSON lines go to benchmarks/results/job-<name>.json; figures belong in RESULTS.md.
#   bash benchmarks/run_job_benchmarks.sh [overhead] [incremental] [scale]    (default: all three)
#   SCALE_TRACE=FILE: the scale runs also write memory per process kind over time to FILE (JSON lines)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PY:-$REPO/.venv/bin/python}
SNAP=$(mktemp -d /tmp/ettin-snap.XXXX)
cp -r ettin_batch "$SNAP/"
export PYTHONPATH="$SNAP${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p benchmarks/results
rev=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- ettin_batch || echo "+uncommitted")
# Run from the snapshot: `python -m` puts the working directory first on sys.path (ahead of
# PYTHONPATH), and so do Ray's workers, so from the repository they would import the live tree.
cd "$SNAP"
B=$REPO/benchmarks
which=("$@"); [ ${#which[@]} -eq 0 ] && which=(overhead incremental scale)
for name in "${which[@]}"; do
  log=$B/results/job-$name.json
  echo "# $(date -u +%FT%TZ) $rev load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$log"
  case $name in
    overhead)    $PY $B/bench_rerank_overhead.py --pairs 20000 2>>"$log.err" | tee -a "$log" ;;
    incremental) $PY $B/bench_rerank_incremental.py --pairs "${INCREMENTAL_PAIRS:-50000}" 2>>"$log.err" | tee -a "$log" ;;
    scale)       $PY $B/bench_rerank_scale.py --pairs 200000 2000000 ${SCALE_TRACE:+--trace "$SCALE_TRACE"} 2>>"$log.err" | tee -a "$log" ;;
    plan)        $PY $B/bench_plan.py --models ${PLAN_MODELS:-random:ettin-tiny random:ettin-17m} \
                   --pairs ${PLAN_PAIRS:-20000 200000} --flags "${PLAN_FLAGS:-}" 2>>"$log.err" | tee -a "$log" ;;
    *) echo "unknown benchmark $name" >&2; exit 2 ;;
  esac
done
