import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Random models built by the library go to a per-run cache, never the user's.
os.environ.setdefault("ETTIN_BATCH_CACHE", str(Path(__file__).parent.parent / ".pytest_cache" / "ettin-batch"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")
