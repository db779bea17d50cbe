"""Where a corpus, an output folder or a model's weights live: a local path, or a URI on any
filesystem pyarrow speaks (`s3://`, `gs://`, `abfs://`, `hdfs://`, `file://`).

A `Location` is a pyarrow filesystem and a path on it. URIs are resolved by pyarrow
(`FileSystem.from_uri`): credentials, region and endpoint come from the standard environment
(`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ..., an instance role), or pass a configured
`filesystem=` to take them from there. The driver resolves a location once and hands it to Ray
tasks and actors, which rebuild the same filesystem on their node: for S3 the endpoint and
region travel with it, the credentials never do (each node reads its own environment or role),
so no key is in a task's arguments or a log.

Writes are whole or absent: on a local disk (or HDFS) a file is written under a temporary name and
renamed; an object store has no rename, but an object appears only when its upload completes, so
it is written in place. Either way a killed writer leaves nothing a reader takes for data.
"""

from __future__ import annotations

import fnmatch
import os
import pickle
import posixpath
import re
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cluster.core.errors import ConfigError, InvalidInput

URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
GLOB_CHARS = re.compile(r"[*?\[]")
RENAMES = ("local", "hdfs")  # filesystems with an atomic rename; object stores write objects whole


def is_uri(path: str | os.PathLike) -> bool:
    return bool(URI.match(str(path)))


@dataclass(frozen=True)
class Location:
    """A file or folder on a filesystem. `shown` is how messages name it (the URI, or the path)."""

    fs: pafs.FileSystem
    path: str
    shown: str

    # ------------------------------------------------------------------ naming

    @property
    def local(self) -> bool:
        return self.fs.type_name == "local"

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def child(self, *names: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, *names), posixpath.join(self.shown, *names))

    def parent(self) -> Location:
        return Location(self.fs, posixpath.dirname(self.path.rstrip("/")), posixpath.dirname(self.shown.rstrip("/")))

    def __str__(self) -> str:
        return self.shown

    def __fspath__(self) -> str:  # a local location is usable where a path is (open, Path, pyarrow)
        if not self.local:
            raise TypeError(f"{self.shown} is not a local path")
        return self.path

    # ------------------------------------------------------------------ what is there

    def _type(self) -> pafs.FileType:
        try:
            return self.fs.get_file_info(self.path).type
        except OSError as err:
            raise InvalidInput(f"{self.shown}: cannot be reached ({_first_line(err)})") from None

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def files(self, recursive: bool = True) -> list[Location]:
        """The files under this folder (none if it is absent), sorted by path."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as err:
            raise InvalidInput(f"{self.shown}: cannot be listed ({_first_line(err)})") from None
        found = [i.path for i in infos if i.type == pafs.FileType.File]
        return [self._at(p) for p in sorted(found)]

    def glob(self, pattern: str) -> list[Location]:
        """The files of this folder's direct listing whose name matches `pattern` (fnmatch)."""
        return [f for f in self.files(recursive=False) if fnmatch.fnmatchcase(f.name, pattern)]

    def _at(self, path: str) -> Location:
        """The location of `path` (a path on this filesystem below this one)."""
        rel = posixpath.relpath(path, self.path) if path != self.path else ""
        return self.child(rel) if rel else self

    # ------------------------------------------------------------------ reading

    def open(self) -> pa.NativeFile:
        """For random access (parquet footers, seeking to a JSONL chunk's byte offset)."""
        return self.fs.open_input_file(self.path)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_parquet(self, columns: list[str] | None = None) -> pa.Table:
        with self.open() as f:
            return pq.read_table(f, columns=columns)

    def lines(self) -> Iterator[bytes]:
        """The file's lines (with their line ends), read in buffered blocks."""
        with self.fs.open_input_stream(self.path) as f:
            yield from _lines(f)

    # ------------------------------------------------------------------ writing

    def write(self, content: pa.Table | str | bytes) -> None:
        """Write the whole file, so that no reader ever sees part of it (the module's docstring)."""
        self.parent().makedirs()
        if self.fs.type_name in RENAMES:
            tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
            _write(self.fs, tmp, content)
            self.fs.move(tmp, self.path)
        else:
            _write(self.fs, self.path, content)

    def makedirs(self) -> None:
        if self.path:
            self.fs.create_dir(self.path, recursive=True)

    def delete(self) -> None:
        kind = self._type()
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif kind == pafs.FileType.File:
            self.fs.delete_file(self.path)

    # ------------------------------------------------------------------ travelling to Ray workers

    def __reduce__(self):
        # the filesystem as bytes, rebuilt by a function of this module, so that pyarrow.fs is
        # imported before the filesystem (its S3 support) is unpickled on the worker
        return (_restore, (pickle.dumps(self.fs), self.path, self.shown))


def _restore(fs: bytes, path: str, shown: str) -> Location:
    return Location(pickle.loads(fs), path, shown)


def _write(fs: pafs.FileSystem, path: str, content: pa.Table | str | bytes) -> None:
    if isinstance(content, pa.Table):
        with fs.open_output_stream(path) as f:
            pq.write_table(content, f)
        return
    data = content.encode("utf-8") if isinstance(content, str) else content
    with fs.open_output_stream(path) as f:
        f.write(data)


def _lines(stream: pa.NativeFile, block: int = 1 << 20) -> Iterator[bytes]:
    rest = b""
    while True:
        data = stream.read(block)
        if not data:
            break
        rest += data
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line + b"\n"
    if rest:
        yield rest


def locate(path: str | os.PathLike | Location, filesystem: pafs.FileSystem | None = None) -> Location:
    """A path or URI as a Location. With `filesystem`, the path is on it (a URI's scheme is
    dropped); without, a URI's filesystem is pyarrow's for its scheme, configured from the
    environment, and anything else is a local path."""
    if isinstance(path, Location):
        return path
    given = os.fspath(path)
    if filesystem is not None:
        return Location(filesystem, URI.sub("", given), given)
    if not is_uri(given):
        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(given)), given)
    try:
        fs, inner = pafs.FileSystem.from_uri(given)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ConfigError(
            f"{given}: no filesystem for this URI ({_first_line(err)}); local paths, file://, s3://, gs://, "
            "abfs:// and hdfs:// are read through pyarrow (pass filesystem= for anything else)"
        ) from None
    return Location(fs, inner.rstrip("/") if inner != "/" else inner, given.rstrip("/"))


def expand(path: str | os.PathLike | Location, filesystem: pafs.FileSystem | None = None) -> tuple[Location, str]:
    """(the location to list, a glob pattern relative to it or ""): `s3://b/data/*.jsonl` is the
    folder `s3://b/data` and the pattern `*.jsonl`."""
    if isinstance(path, Location):
        return path, ""
    given = os.fspath(path)
    match = GLOB_CHARS.search(given)
    if match is None:
        return locate(given, filesystem), ""
    static = given[: match.start()].rsplit("/", 1)[0] if "/" in given[: match.start()] else "."
    return locate(static, filesystem), given[len(static) :].lstrip("/")


def glob_matches(pattern: str, rel: str) -> bool:
    """`**` crosses folders, `*` and `?` do not (glob's rules, recursive=True)."""
    return re.fullmatch(_glob_regex(pattern), rel) is not None


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(pattern[i]))
                i += 1
            else:
                out.append("[" + pattern[i + 1 : end].replace("!", "^", 1) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def node_name() -> str:
    return socket.gethostname()


def unreachable(what: str, where: Location, err: BaseException | None = None) -> InvalidInput:
    """A file the driver found that this node cannot open: the cluster's nodes share no filesystem."""
    cause = f" ({_first_line(err)})" if err is not None else ""
    return InvalidInput(
        f"{where.shown}: {what} cannot be read on node {node_name()}{cause}; the input and output must be "
        "reachable from every node of the Ray cluster: use a filesystem all nodes mount, or object storage "
        "(s3://, gs://, abfs://, hdfs://)"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
