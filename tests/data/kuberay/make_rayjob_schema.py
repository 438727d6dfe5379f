"""Make rayjob-v1.schema.json from KubeRay's RayJob CRD: its v1 openAPIV3Schema, made small, same rules.

    git -C kuberay show v1.5.1:ray-operator/config/crd/bases/ray.io_rayjobs.yaml > ray.io_rayjobs.yaml
    python tests/data/kuberay/make_rayjob_schema.py ray.io_rayjobs.yaml v1.5.1 > tests/data/kuberay/rayjob-v1.schema.json

The CRD is 1.3 MB; the schema of what we write (spec) is 46 KB (compact JSON) without descriptions, once the pod
template it inlines three times and the container it inlines three times more are each kept once
under $defs and referenced. Only `description` keys and `status` are dropped; nothing that
validation reads is changed.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import yaml

MIN_SHARED_CHARS = 800  # subtrees at least this large that occur twice or more go to $defs


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _key(node) -> str:
    return json.dumps(node, sort_keys=True, separators=(",", ":"))


def _subtrees(node, path, out):
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.items():
            _subtrees(v, path + [k], out)
    elif isinstance(node, list):
        for v in node:
            _subtrees(v, path + ["item"], out)


def _replace(node, key: str, ref: dict):
    if isinstance(node, dict):
        if _key(node) == key:
            return ref
        return {k: _replace(v, key, ref) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, key, ref) for v in node]
    return node


def shared_defs(schema: dict) -> dict:
    """The largest subtree that occurs more than once goes to $defs, again and again, until none is left."""
    defs: dict[str, dict] = {}
    while True:
        found: list = []
        _subtrees({"root": schema, "defs": defs}, [], found)
        counts = Counter(_key(node) for _, node in found)
        repeated = [(len(k), k) for k, n in counts.items() if n > 1 and len(k) >= MIN_SHARED_CHARS]
        if not repeated:
            return {"$defs": defs, **schema} if defs else schema
        _, key = max(repeated)
        path = next(p for p, node in found if _key(node) == key)
        name = next(p for p in reversed(path) if p not in ("properties", "item", "root", "defs"))
        name = name if name not in defs else f"{name}-{len(defs)}"
        body = json.loads(key)
        ref = {"$ref": f"#/$defs/{name}"}
        schema = _replace(schema, key, ref)
        defs = {k: _replace(v, key, ref) for k, v in defs.items()}
        defs[name] = body


def main(crd_path: str, release: str) -> None:
    crd = yaml.safe_load(open(crd_path))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strip(version["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status")
    schema = shared_defs(schema)
    out = {"$comment": f"KubeRay {release} ray.io_rayjobs.yaml, RayJob v1 openAPIV3Schema, made by "
                       "make_rayjob_schema.py (Apache-2.0; see README.md)", **schema}
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
