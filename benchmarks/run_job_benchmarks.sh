#!/usr/bin/env bash
# The rerank job's CPU benchmarks, one after another, on an otherwise idle machine:
#   Ray's overhead (20k pairs), incremental --reuse (5% changed), scale (200k -> 2M pairs).
# Runs from a snapshot of the package so edits to the working tree cannot change it mid-run.
# Raw JSON lines go to benchmarks/results/job-<name>.json; figures belong in RESULTS.md.
#   bash benchmarks/run_job_benchmarks.sh [overhead] [incremental] [scale]    (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SNAP=$(mktemp -d /tmp/ettin-snap.XXXX)
cp -r ettin_batch "$SNAP/"
export PYTHONPATH="$SNAP${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p benchmarks/results
which=("$@"); [ ${#which[@]} -eq 0 ] && which=(overhead incremental scale)
for name in "${which[@]}"; do
  log=benchmarks/results/job-$name.json
  echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$log"
  case $name in
    overhead)    $PY benchmarks/bench_rerank_overhead.py --pairs 20000 2>>"$log.err" | tee -a "$log" ;;
    incremental) $PY benchmarks/bench_rerank_incremental.py --pairs "${INCREMENTAL_PAIRS:-50000}" 2>>"$log.err" | tee -a "$log" ;;
    scale)       $PY benchmarks/bench_rerank_scale.py --pairs 200000 2000000 2>>"$log.err" | tee -a "$log" ;;
    *) echo "unknown benchmark $name" >&2; exit 2 ;;
  esac
done
