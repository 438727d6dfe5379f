"""`python -m ettin_batch.cli ...`: what `ettin-batch submit` runs on a cluster."""

import sys

from ettin_batch.cli import main

sys.exit(main())
