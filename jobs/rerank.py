"""Ray job entry point for the rerank job.

Locally (starts its own Ray):
    python jobs/rerank.py --config jobs/configs/nightly.yaml --input sample/candidates --output /tmp/reranked
On a cluster (the job runtime sets RAY_ADDRESS, so the driver joins that cluster):
    ray job submit --working-dir . -- python jobs/rerank.py --config jobs/configs/nightly.yaml

Takes the same flags as `ettin-batch rerank`; `{date}` in the output path becomes today's UTC date.
"""

from __future__ import annotations

import os
import sys

# Runs from a checkout without installing: `ray job submit --working-dir .` uploads the package with it.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ettin_batch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["rerank", *sys.argv[1:]]))
