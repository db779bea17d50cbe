"""A model `path` that is a URI (`s3://bucket/models/rm/`, `gs://...`, `abfs://...`, `hdfs://...`):
copied once per node into a local cache and loaded from there through the same `from_pretrained`.

On a cluster without the hub (or without a filesystem every node mounts) the weights live in object
storage. Each node copies the folder once; every later load on that node (another actor, a replica
restarted, the next run) finds the copy. The copy's folder is named by the URI and by the listing
it was copied from (each file's name, size and modification time), so a model rewritten at the same
URI is copied again and a copy is never changed in place: a copy appears whole (written aside and
renamed), and processes on one node wait for one another's copy behind a file lock rather than
copying twice. A config or tokenizer read (the driver's checks, a tokenizer actor) copies only the
small files: everything but the weights.

Credentials and endpoint come from the node's environment (e.g. `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, an instance role), as pyarrow reads them. The cache is
`$SCORING_CLUSTER_CACHE/models` (default `~/.cache/scoring-cluster/models`); old copies are left
for the operator to delete.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterator

from cluster.core.config import ModelSpec
from cluster.core.errors import ModelLoadError

URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# the files a config or tokenizer read does not need
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf")


def is_uri(path: str) -> bool:
    return bool(URI.match(path))


def cache_root() -> str:
    base = os.environ.get("SCORING_CLUSTER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "scoring-cluster")
    return os.path.join(base, "models")


def local_spec(spec: ModelSpec, weights: bool) -> ModelSpec:
    """`spec` itself when its path is local or a hub id; else the spec with `path` at this node's
    copy of the URI (with the weights, or only the small files)."""
    if not is_uri(spec.path):
        return spec
    return spec.model_copy(update={"path": local_copy(spec.path, weights, f"model '{spec.name}'")})


def local_copy(uri: str, weights: bool = True, label: str = "model") -> str:
    """This node's copy of the model folder at `uri` (module docstring)."""
    import pyarrow.fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except Exception as err:
        raise ModelLoadError(f"{label}: cannot list {uri!r} ({_first_line(err)})") from None
    files = {posixpath.relpath(i.path, root): (i.size, i.mtime_ns) for i in infos if i.type == pafs.FileType.File}
    if "config.json" not in files:
        raise ModelLoadError(
            f"{label}: {uri!r} is not a model folder (no config.json among its {len(files)} files); "
            "point it at a folder written by save_pretrained"
        )
    listing = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", posixpath.basename(root.rstrip("/")) or "model")
    base = os.path.join(cache_root(), f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}-{listing}")
    full, small = base, base + "-config"
    if os.path.isdir(full):  # the whole copy serves a config read too
        return full
    target = full if weights else small
    if os.path.isdir(target):
        return target
    wanted = [f for f in files if weights or not f.endswith(WEIGHT_SUFFIXES)]
    os.makedirs(cache_root(), exist_ok=True)
    with _locked(target + ".lock"):
        if os.path.isdir(target):  # another process on this node copied it while this one waited
            return target
        partial = f"{target}.{uuid.uuid4().hex[:8]}.partial"
        try:
            for rel in wanted:
                dest = os.path.join(partial, *rel.split("/"))
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with fs.open_input_stream(posixpath.join(root, rel)) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, length=16 << 20)
            os.rename(partial, target)
        except Exception as err:
            shutil.rmtree(partial, ignore_errors=True)
            raise ModelLoadError(f"{label}: cannot copy {uri!r} to {target} ({_first_line(err)})") from None
    return target


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
