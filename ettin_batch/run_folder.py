"""An output folder and its lifecycle: the layout, who owns what in it, prepare / resume / replace,
finish, and reading a finished run back. Every command that writes a folder goes through it:

    folder = RunFolder.open(url, "rerank")
    folder.check(overwrite=..., inputs=[...], fingerprint=...)   # before any work; writes nothing
    done = folder.begin()          # once the run is known to start: resume or replace, then _run.json
    ... write under folder.path(SCORES) ...
    folder.finish(manifest)        # _SUCCESS.json, last

Ownership. `_run.json`, written first, names the command (`kind`) and the entries it writes. Only
those entries of an earlier ettin-batch run are ever removed, and only while they hold nothing but
the Parquet and JSON files ettin-batch writes there. A folder that is not empty and holds no
ettin-batch run is refused, and with --overwrite the run writes beside what is there, deleting none
of it (and still refuses if one of its own entries is taken). An output that is, contains or sits
inside one of the run's inputs is refused: the run would replace its own input, or read its own
output back on the next night.
"""

from __future__ import annotations

import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from ettin_batch import storage
from ettin_batch.errors import InputError, OutputError, raise_if_interrupted

log = logging.getLogger("ettin_batch")

# Every name in an output folder, spelled here only.
SUCCESS = "_SUCCESS.json"  # written last: the run finished, and what it was
RECORD = "_run.json"  # written first: this is an ettin-batch run of `kind`, its entries, its fingerprint
SCORES, TOPK, REJECTS, DONE = "scores", "topk", "rejects", "_done"
TOPK_FILE = "topk.parquet"  # topk/ is one file, as before the streaming cut: the per-file cuts merged
DATA = "data"  # teacher
QRELS_TXT, LABELS_PARQUET, HISTOGRAM = "qrels.txt", "labels.parquet", "score_histogram.png"  # labels
CANDIDATES, QRELS_PARQUET, RERANK, EVAL = "candidates", "qrels.parquet", "rerank", "eval.json"  # beir

LAYOUT = {
    "rerank": (SCORES, TOPK, REJECTS, DONE),
    "teacher": (DATA, REJECTS),
    "labels": (QRELS_TXT, LABELS_PARQUET, HISTOGRAM),
    "beir": (CANDIDATES, QRELS_PARQUET, RERANK, EVAL),
}
_OWN_FILE_TYPES = (".parquet", ".json")  # what a run writes inside its folders; anything else is the user's


def _kind_of(manifest: dict | None, record: dict | None) -> str:
    """The command that wrote a run, also for runs of versions that did not record it."""
    for found in (record, manifest):
        if found and found.get("kind") in LAYOUT:
            return found["kind"]
    if manifest and "dataset" in manifest:
        return "teacher"
    if manifest and "mode" in manifest:
        return "labels"
    return "rerank"


@dataclass
class RunFolder:
    """One command's output folder (see the module docstring)."""

    loc: storage.Location
    kind: str
    _plan: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, url: str, kind: str, *, s3_max_attempts: int | None = None) -> RunFolder:
        return cls(storage.resolve(url, s3_max_attempts=s3_max_attempts), kind)

    def path(self, *parts: str) -> str:
        return self.loc.join(*parts) if parts else self.loc.path

    def url(self, *parts: str) -> str:
        return self.loc.url(self.path(*parts))

    def exists(self, *parts: str) -> bool:
        return self.loc.fs.exists(self.path(*parts))

    def read_json(self, name: str) -> dict | None:
        return storage.read_json(self.loc, self.path(name)) if self.exists(name) else None

    def manifest(self) -> dict | None:
        """The finished run's _SUCCESS.json, or None."""
        return self.read_json(SUCCESS)

    def parquet_files(self, *parts: str) -> list[str]:
        """The Parquet files under an entry (paths in this filesystem); none when it does not exist."""
        if not self.exists(*parts):
            return []
        return [p for p in self.loc.fs.find(self.path(*parts)) if p.endswith(".parquet")]

    def count_rows(self, *parts: str) -> int:
        """Rows in every Parquet file under an entry (footers only); 0 when it does not exist."""
        files = self.parquet_files(*parts)
        if not files:
            return 0
        with ThreadPoolExecutor(max_workers=min(32, len(files))) as pool:
            return sum(pool.map(lambda p: pq.read_metadata(p, filesystem=self.loc.pa_fs).num_rows, files))

    # --- before a run ------------------------------------------------------------------------------

    def check(self, *, overwrite: bool, inputs: list[str] = (), fingerprint: dict | None = None) -> None:
        """Decide, before any work, whether this run starts afresh, resumes or replaces what is there;
        raise OutputError for anything it must not touch. Writes nothing (see `begin`)."""
        self._refuse_overlap(inputs)
        if self.loc.fs.isfile(self.path()):
            raise OutputError(f"--output {self.url()} is a file; give a folder (it is created if missing)")
        record, manifest = self.read_json(RECORD), self.manifest()
        there = _kind_of(manifest, record) if record or manifest else self._legacy_kind()
        if there is None:
            self._plan = {"replace": None, "done": set()}
            self._refuse_foreign(overwrite)
        elif there != self.kind:  # never replaced, --overwrite or not: it is another command's work
            raise OutputError(f"{self.url()} holds {'a finished' if manifest else 'an unfinished'} `{there}` run, not "
                              f"a `{self.kind}` one. Choose another --output (remove that folder yourself if it is "
                              "no longer needed).")
        elif manifest is not None and not overwrite:
            raise OutputError(f"{self.url(SUCCESS)} exists: a finished `{there}` run. Pass --overwrite to replace it "
                              "(it is removed once this run's inputs and model check out), or choose another --output.")
        elif manifest is None and fingerprint and (record or {}).get("fingerprint") == fingerprint:
            self._plan = {"replace": None, "done": self._done_groups()}
        else:
            self._plan = {"replace": (there, (record or {}).get("entries") or LAYOUT[there]), "done": set()}
            self._check_owned(self._plan["replace"][1])
        self._plan["fingerprint"] = fingerprint

    def _legacy_kind(self) -> str | None:
        """A beir folder written before runs recorded themselves: its rerank/ is a run of its own."""
        if self.kind == "beir" and any(self.loc.fs.exists(self.loc.join(RERANK, m)) for m in (RECORD, SUCCESS)):
            return "beir"
        return None

    def _refuse_overlap(self, inputs: list[str]) -> None:
        out = self.loc.path.rstrip("/")
        for given in inputs:
            loc = storage.resolve(given)
            if loc.scheme != self.loc.scheme:
                continue
            root = storage.fixed_prefix(loc.path).rstrip("/")
            if root == out or root.startswith(out + "/"):
                raise OutputError(f"--output {self.url()} holds the input {given}: the run would remove or mix with "
                                  "its own input. Choose an output folder outside every input.")
            if out.startswith(root + "/"):
                raise OutputError(f"--output {self.url()} is inside the input {given}: the next run would read this "
                                  "output as input. Choose an output folder outside every input.")

    def _refuse_foreign(self, overwrite: bool) -> None:
        """A folder with files but no ettin-batch run: refuse, or with --overwrite write beside them."""
        if not self.loc.fs.isdir(self.path()):
            return
        found = sorted(self.loc.fs.ls(self.path(), detail=False))
        if not found:
            return
        names = [posixpath.basename(p.rstrip("/")) for p in found]
        if not overwrite:
            raise OutputError(f"--output {self.url()} is not empty ({', '.join(names[:5])}"
                              f"{', ...' if len(names) > 5 else ''}) and holds no ettin-batch run. Choose an empty or "
                              "new folder, or pass --overwrite to write beside those files (none is deleted).")
        taken = [n for n in names if n in LAYOUT[self.kind] or n in (RECORD, SUCCESS)]
        if taken:
            raise OutputError(f"--output {self.url()} already has {', '.join(taken)}, not written by ettin-batch; "
                              "move it away or choose another --output (ettin-batch deletes only what it wrote).")

    def _check_owned(self, entries) -> None:
        for entry in entries:
            if self.loc.fs.isdir(self.path(entry)):
                foreign = [p for p in self.loc.fs.find(self.path(entry)) if not p.endswith(_OWN_FILE_TYPES)]
                if foreign:
                    raise OutputError(f"{self.loc.url(foreign[0])} was not written by ettin-batch, and replacing the "
                                      f"run in {self.url()} would delete it. Move it away, or choose another --output.")

    # --- the run -----------------------------------------------------------------------------------

    def begin(self) -> set[str]:
        """Carry out what `check` decided: remove the replaced run's entries, then write _run.json.
        Returns the resume groups an earlier run of the same fingerprint finished (empty otherwise)."""
        replace, done = self._plan.get("replace"), self._plan.get("done", set())
        if replace is not None:
            kind, entries = replace
            log.info("replacing the %s run in %s", kind, self.url())
            for name in (SUCCESS, *entries, RECORD):
                storage.remove_tree(self.loc, self.path(name))
        if done:
            log.info("resuming %s: %d group(s) already done", self.url(), len(done))
        storage.write_json(self.loc, self.path(RECORD), {"kind": self.kind, "entries": list(LAYOUT[self.kind]),
                                                         "fingerprint": self._plan.get("fingerprint")})
        return set(done)

    def mark_done(self, group: str, info: dict) -> None:
        storage.write_json(self.loc, self.path(DONE, f"{group}.json"), info)

    def _done_groups(self) -> set[str]:
        if not self.exists(DONE):
            return set()
        return {p.rsplit("/", 1)[-1].removesuffix(".json") for p in self.loc.fs.find(self.path(DONE))}

    def write_empty(self, entry: str, schema: pa.Schema) -> None:
        """One empty file in `entry`, so that a run that wrote no rows there keeps its layout and schema."""
        self.loc.pa_fs.create_dir(self.path(entry), recursive=True)
        pq.write_table(schema.empty_table(), self.path(entry, "empty.parquet"), filesystem=self.loc.pa_fs)

    def remove(self, *parts: str) -> None:
        """Remove an entry of this run (e.g. an unfinished group's partial files)."""
        storage.remove_tree(self.loc, self.path(*parts))

    def finish(self, manifest: dict) -> None:
        """Write _SUCCESS.json: the run is complete. Always the last write; never after a Ctrl-C, even one that
        something swallowed on its way up (errors.interrupted)."""
        raise_if_interrupted()
        storage.write_json(self.loc, self.path(SUCCESS), {"kind": self.kind, **manifest})

    # --- reading a run back ------------------------------------------------------------------------

    @classmethod
    def containing(cls, url: str, *, s3_max_attempts: int | None = None) -> tuple[RunFolder | None, str | None]:
        """The run `url` is or lies in (a run folder, its scores/, topk/ or data/, or anything below them),
        and which of its entries (None for the run folder itself); (None, None) for data no run wrote."""
        loc = storage.resolve(url, s3_max_attempts=s3_max_attempts)
        path, below = loc.path.rstrip("/"), []
        for _ in range(4):  # a run folder, its entry, a resume group, a file
            here = storage.Location(loc.fs, loc.pa_fs, path, loc.scheme)
            if loc.fs.exists(here.join(RECORD)) or loc.fs.exists(here.join(SUCCESS)):
                folder = cls(here, "")
                folder.kind = _kind_of(folder.manifest(), folder.read_json(RECORD))
                return folder, (below[-1] if below else None)
            parent = posixpath.dirname(path)
            if parent == path:
                break
            below.append(posixpath.basename(path))
            path = parent
        return None, None

    def require_finished(self, flag: str, allow_unfinished: bool = False) -> dict | None:
        """This run's manifest; an unfinished run is refused (InputError), or with `allow_unfinished` read
        with a loud warning."""
        manifest = self.manifest()
        if manifest is None:
            message = (f"{flag} {self.url()}: no {SUCCESS} there, so the run did not finish and holds part of its "
                       "pairs at most. Finish it (run the same command again), or pass --allow-unfinished to use it "
                       "anyway.")
            if not allow_unfinished:
                raise InputError(message)
            log.warning("USING AN UNFINISHED RUN: %s", message.split(". Finish")[0])
        return manifest
