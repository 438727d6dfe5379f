"""Where the files are: local paths, s3:// and other fsspec URLs, resolved to one filesystem.

pyarrow's own `S3FileSystem()` ignores `AWS_ENDPOINT_URL`, so s3:// goes through s3fs
(which honours it) wrapped as a pyarrow filesystem, and that explicit filesystem is what
Ray's read_parquet / write_parquet receive. The s3fs instance pickles with its endpoint,
so Ray workers on other nodes reach the same store.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from dataclasses import dataclass
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

from ettin_batch.errors import ConfigError, InputError

_GLOB_CHARS = set("*?[")

# Object-store calls retry with botocore's "standard" policy: connection errors, timeouts,
# throttling and 5xx answers are retried with jittered exponential backoff (wait n is
# rand(0, 1) * min(2 ** (n - 1), 20) s), so the default 12 attempts wait up to 151 s in all,
# about 75 s on average, per call. botocore also keeps a per-client retry quota (100 retries,
# refilled by successes). The config's s3_max_attempts, else ETTIN_BATCH_S3_MAX_ATTEMPTS, changes
# the attempts (1 = no retry); past the last one the call fails, and so does the run (no _SUCCESS.json).
S3_MAX_ATTEMPTS_ENV = "ETTIN_BATCH_S3_MAX_ATTEMPTS"
DEFAULT_S3_MAX_ATTEMPTS = 12

log = logging.getLogger("ettin_batch")


def setting(configured: int | None, env: str, default: int, unit: str) -> int:
    """A whole-number setting: `configured` (the config field) if given, else $`env` (at least 1),
    else `default`. The variable reaches Ray workers that do not see the config."""
    if configured is not None:
        return configured
    value = os.environ.get(env, "")
    try:
        return max(1, int(value)) if value else default
    except ValueError:
        raise ConfigError(f"{env}={value!r} is not a whole number of {unit}; set it to one, or unset it") from None


def s3_max_attempts(configured: int | None = None) -> int:
    """Attempts per object-store call: `configured` if given, else $ETTIN_BATCH_S3_MAX_ATTEMPTS, else 12."""
    return setting(configured, S3_MAX_ATTEMPTS_ENV, DEFAULT_S3_MAX_ATTEMPTS, "attempts")


@dataclass
class Location:
    """A resolved place: an fsspec filesystem (listing, small files), the same as a pyarrow
    filesystem (for Ray), and the path inside it (no scheme: `bucket/key` on S3, absolute locally)."""

    fs: fsspec.AbstractFileSystem
    pa_fs: pafs.FileSystem
    path: str
    scheme: str

    def url(self, path: str | None = None) -> str:
        """A path in this filesystem written back as a URL, for messages and manifests."""
        path = self.path if path is None else path
        return path if self.scheme == "file" else f"{self.scheme}://{path}"

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path.rstrip("/"), *parts)


def _scheme(uri: str) -> str:
    parsed = urlparse(uri)
    # A Windows drive letter or a bare path has no real scheme.
    return parsed.scheme if len(parsed.scheme) > 1 else "file"


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


class _RetryNotice(logging.Handler):
    """Says, once for each filesystem resolved, that object-store calls are being retried: a store that is
    down would otherwise look like a hang of a minute or two per call (botocore logs its retries at DEBUG only)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.told, self.attempts = False, DEFAULT_S3_MAX_ATTEMPTS

    def emit(self, record: logging.LogRecord) -> None:
        if not self.told and record.getMessage().startswith("Retry needed, retrying"):
            self.told = True
            attempts = self.attempts
            log.warning("waiting for the object store at %s: a request failed and is being retried with backoff "
                        "(up to %d attempts a call, about %d s of waiting at most; --s3-max-attempts changes it)",
                        _endpoint() or "AWS S3", attempts, sum(min(2 ** (n - 1), 20) for n in range(1, attempts)))


def _notice_retries(attempts: int) -> None:
    retries = logging.getLogger("botocore.retries.standard")
    notice = next((h for h in retries.handlers if isinstance(h, _RetryNotice)), None)
    if notice is None:
        notice = _RetryNotice()
        retries.addHandler(notice)
        retries.setLevel(logging.DEBUG)
        retries.propagate = False  # its DEBUG lines would reach the console through the root logger
    notice.told, notice.attempts = False, attempts


def object_store_error(error: BaseException) -> InputError | None:
    """What to tell a user whose object store cannot be used at all (no credentials, unreachable,
    access denied), as an InputError; None for any other error."""
    try:
        import botocore.exceptions as bx
    except ImportError:
        return None
    where = _endpoint() or "AWS S3"
    if isinstance(error, bx.NoCredentialsError):
        return InputError(f"no credentials for the object store ({where}): set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or run where an instance role provides them")
    if isinstance(error, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return InputError(f"cannot reach the object store at {where} ({error}); check AWS_ENDPOINT_URL and the "
                          "network, then run the same command again")
    if isinstance(error, PermissionError):
        return InputError(f"the object store ({where}) refused access: {error}. Check that these credentials may "
                          "read the inputs and write the output")
    return None


def _s3_filesystem(max_attempts: int | None) -> fsspec.AbstractFileSystem:
    import s3fs

    _notice_retries(s3_max_attempts(max_attempts))
    # Pass the endpoint explicitly: it then travels with the pickled filesystem to every worker.
    endpoint = _endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    client_kwargs = {"region_name": region} if region else {}
    # The retry policy travels with the pickled filesystem too, so Ray workers retry as the driver does.
    retries = {"max_attempts": s3_max_attempts(max_attempts), "mode": "standard"}
    return s3fs.S3FileSystem(endpoint_url=endpoint or None, client_kwargs=client_kwargs,
                             config_kwargs={"retries": retries})


def resolve(uri: str, *, s3_max_attempts: int | None = None) -> Location:
    """Resolve a path or URL to a Location. Raises InputError for a scheme with no installed backend.

    s3_max_attempts: attempts per call on s3:// (None: see s3_max_attempts()).
    """
    scheme = _scheme(uri)
    if scheme == "file":
        path = os.path.abspath(os.path.expanduser(uri[len("file://"):] if uri.startswith("file://") else uri))
        return Location(fsspec.filesystem("file"), pafs.LocalFileSystem(), path, "file")
    if scheme in ("s3", "s3a"):
        fs = _s3_filesystem(s3_max_attempts)
    else:
        try:
            fs = fsspec.filesystem(scheme)
        except (ImportError, ValueError) as e:
            raise InputError(f"cannot open {uri}: no filesystem for {scheme}:// ({e}); install its fsspec package "
                             f"(gcsfs for gs://, adlfs for az://)") from None
    path = fs._strip_protocol(uri)
    return Location(fs, pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path, "s3" if scheme == "s3a" else scheme)


def list_parquet(uris: list[str], *, s3_max_attempts: int | None = None) -> tuple[Location, list[str]]:
    """Expand folders (recursively), globs and files into a sorted list of Parquet file paths.

    Every input must live on the same filesystem. Files whose name starts with `_` or `.`
    (markers such as _SUCCESS) are skipped inside folders. Raises InputError naming
    the input that matched nothing.
    """
    if not uris:
        raise InputError("no input paths given")
    locations = [resolve(u, s3_max_attempts=s3_max_attempts) for u in uris]
    first = locations[0]
    if any(loc.scheme != first.scheme for loc in locations):
        mixed = ", ".join(f"{u} ({loc.scheme})" for u, loc in zip(uris, locations))
        raise InputError(f"all inputs must be on one filesystem, got {mixed}; copy them to one place first")
    files: list[str] = []
    for uri, loc in zip(uris, locations):
        fs, path = loc.fs, loc.path
        if _GLOB_CHARS & set(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if p.endswith(".parquet") and not _hidden(p, path)]
        elif fs.isfile(path):
            found = [path]
        else:
            raise InputError(f"input {uri} does not exist")
        if not found:
            raise InputError(f"input {uri} holds no .parquet files")
        files.extend(found)
    return first, sorted(dict.fromkeys(files))


def fixed_prefix(path: str) -> str:
    """The part of a path before its first glob character, cut back to a whole folder name."""
    cut = min((path.index(c) for c in _GLOB_CHARS if c in path), default=None)
    return path if cut is None else posixpath.dirname(path[:cut])


def _hidden(path: str, root: str) -> bool:
    rel = posixpath.relpath(path, root)
    return any(part.startswith(("_", ".")) for part in rel.split("/"))


def write_json(loc: Location, path: str, data: dict) -> None:
    if loc.scheme == "file":  # object stores have no folders to make
        loc.fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with loc.fs.open(path, "w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(loc: Location, path: str) -> dict:
    with loc.fs.open(path, "r") as f:
        return json.load(f)


def remove_tree(loc: Location, path: str) -> None:
    if loc.fs.exists(path):
        loc.fs.rm(path, recursive=True)
