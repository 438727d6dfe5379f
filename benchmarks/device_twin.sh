#!/usr/bin/env bash
# The GPU job script's dry run (benchmarks/run_gpu_job.sh, DRY=1) under the GPU machine's package
# versions, on this CPU: catches an API this code uses that the device image's libraries lack, or a
# package the job imports that the image does not have, before a rare GPU lease is spent finding it.
# The versions are the device tool's KINDS.md "pip list" (2026-11): transformers 5.17.0,
# sentence-transformers 6.0.1, tokenizers 0.23.2, huggingface_hub 1.33.0, safetensors 0.8.0; no polars,
# s3fs or pytrec-eval there. Python and torch are this machine's (3.11, torch 2.13.0 CPU: the image
# has 3.12 and torch 2.11, whose CPU builds this machine's package index does not have). Ray comes as
# on the device: the repacked kit of ../shared/tools/gpu-ray-kit (built here for this Python).
#   bash benchmarks/device_twin.sh     (~3 minutes; venv /tmp/ettin-twin, figures in /tmp/ettin-twin-out)
set -euo pipefail
ROOT=$(pwd)
VENV=${VENV:-/tmp/ettin-twin}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.13.0
    "$VENV/bin/pip" install -q transformers==5.17.0 sentence-transformers==6.0.1 tokenizers==0.23.2 \
        huggingface_hub==1.33.0 safetensors==0.8.0 pandas pyarrow fsspec regex pyyaml tqdm matplotlib \
        aiohttp aiosignal frozenlist grpcio msgpack protobuf requests click filelock packaging prometheus-client psutil
fi
git clone -q "$ROOT" "$WORK/repo"  # the committed tree
cd "$WORK/repo"
PYV=$("$VENV/bin/python" -c "import sys; print('%d.%d' % sys.version_info[:2])") "$ROOT/../shared/tools/gpu-ray-kit" .whl >/dev/null
# The tokenizer and text the device cannot fetch, taken along as run_gpu_job.sh's header says.
OLMO=$(PYTHONPATH=. "$VENV/bin/python" -c "from ettin_batch.engine.olmo_assets import olmo_dir; print(olmo_dir())")
mkdir -p .olmo && cp -r "$OLMO" .olmo/
DRY=1 OUT=${OUT:-/tmp/ettin-twin-out} ETTIN_BATCH_CACHE="$WORK/cache" PY="$VENV/bin/python" bash benchmarks/run_gpu_job.sh
