"""Reading the input files in chunks of rows (one read task each), every row with its id (source_file,
source_row); a malformed row fails alone (raise: an error naming it; skip: an error row)."""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cluster.core.errors import InvalidInput, ScoringError
from cluster.data.corpus import Layout, move_aside, row_units
from cluster.data.storage import Location, _lines, expand, glob_matches, locate, unreachable

INPUT_SUFFIXES = (".parquet", ".jsonl", ".json")


def where_of(row: Mapping[str, Any]) -> str:
    if row.get("source_file") is not None:
        return f"{row['source_file']} row {row['source_row']}"
    if row.get("id") is not None:
        return f"row id={row['id']!r}"
    return "row"


def expand_inputs(
    input_path: str | os.PathLike | Location, filesystem: pafs.FileSystem | None = None
) -> tuple[list[Location], Location]:
    """(files, base): a file, a folder (its parquet/JSONL/JSON files, recursively) or a glob, local
    or a URI (cluster/data/storage.py). Row ids name a file relative to `base`."""
    root, pattern = expand(input_path, filesystem)
    shown = os.fspath(input_path) if not isinstance(input_path, Location) else input_path.shown
    if pattern:
        files = [f for f in root.files() if glob_matches(pattern, posixpath.relpath(f.path, root.path))]
        base = _common_folder(files) if files else root
    elif root.is_dir():
        files, base = [f for f in root.files() if f.path.endswith(INPUT_SUFFIXES)], root
    elif root.is_file():
        files, base = [root], root.parent()
    else:
        files, base = [], root
    if not files:
        raise InvalidInput(f"{shown}: no input files (expected a parquet/JSONL/JSON file, a folder of them, or a glob)")
    for f in files:
        if not f.path.endswith(INPUT_SUFFIXES):
            raise InvalidInput(f"{f}: unsupported file type (expected {', '.join(INPUT_SUFFIXES)})")
    return files, base


def _common_folder(files: list[Location]) -> Location:
    folder = posixpath.commonpath([posixpath.dirname(f.path) for f in files])
    return files[0]._at(folder) if folder != files[0].path else files[0]


def plan_chunks(
    files: list[Location | str], base: Location | str, rows_per_chunk: int
) -> tuple[list[dict], list[dict]]:
    """Read tasks of about `rows_per_chunk` rows each, plus the files that hold no rows at all.
    Row ids are (file relative to the input, row index), stable across runs. A chunk names its
    file by its path on the input's filesystem (the read task is given the filesystem)."""
    chunks, empty = [], []
    base = locate(base)
    for file in map(locate, files):
        rel = posixpath.relpath(file.path, base.path) if base.path else file.path
        if file.path.endswith(".parquet"):
            found = _parquet_chunks(file, rel, rows_per_chunk)
        elif file.path.endswith(".jsonl"):
            found = _jsonl_chunks(file, rel, rows_per_chunk)
        else:
            n = len(_load_json_rows(file, rel))
            found = [_chunk(file.path, rel, "json", 0, n)] if n else []
        if found:
            chunks += found
        else:
            empty.append(
                {"source_file": rel, "source_row": None, "error": f"InvalidInput: {rel}: the file has no rows"}
            )
    return chunks, empty


def _chunk(file: str, rel: str, fmt: str, start: int, stop: int, **extra: Any) -> dict:
    return {
        "file": file,
        "rel": rel,
        "fmt": fmt,
        "start": start,
        "stop": stop,
        "groups": [],
        "offset": 0,
        "line": 0,
        "done": [],
        **extra,
    }


def _parquet_chunks(file: Location, rel: str, rows_per_chunk: int) -> list[dict]:
    try:
        with file.open() as f:
            meta = pq.ParquetFile(f).metadata
    except Exception as err:
        raise InvalidInput(f"{rel}: not a readable parquet file ({err})") from None
    chunks, groups, start, count = [], [], 0, 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        count += meta.row_group(g).num_rows
        if count >= rows_per_chunk or g == meta.num_row_groups - 1:
            if count:
                chunks.append(_chunk(file.path, rel, "parquet", start, start + count, groups=groups))
            start, groups, count = start + count, [], 0
    return chunks


def _jsonl_chunks(file: Location, rel: str, rows_per_chunk: int) -> list[dict]:
    """Byte offsets of every `rows_per_chunk`-th non-blank line (one pass, no parsing)."""
    chunks, offset, row, line = [], 0, 0, 0
    start = None
    for raw in file.lines():
        line += 1
        if raw.strip():
            if row % rows_per_chunk == 0:
                if start is not None:
                    chunks.append(start | {"stop": row})
                start = _chunk(file.path, rel, "jsonl", row, row, offset=offset, line=line)
            row += 1
        offset += len(raw)
    if start is not None:
        chunks.append(start | {"stop": row})
    return chunks


def _load_json_rows(file: Location, rel: str) -> list:
    try:
        data = json.loads(file.read_bytes())
    except ValueError as err:
        raise InvalidInput(f"{rel}: not valid JSON ({err}); use JSON lines (.jsonl) for one object per line") from None
    if not isinstance(data, list):
        raise InvalidInput(f"{rel}: a .json input must hold a list of row objects, got {type(data).__name__}")
    return data


def read_chunk(chunk: dict, on_error: str, layout: dict | None = None, source: Location | None = None) -> pa.Table:
    """One read task: the chunk's rows not already done, with source_file/source_row and `_error`.
    With a layout, each row is checked against it here, so a malformed row (raise: an error naming
    file, row and field; skip: an error row) never reaches Arrow, where it could fail a whole block.
    Every row is judged on its own: the table's columns are those of all the chunk's rows (never
    only its first row's), and a value of a type Arrow cannot put in one column with the file's
    other rows' fails that row alone (see `_to_table`). `source` is the input's location (its
    filesystem: local when not given); a file the driver listed that this node cannot open is an
    error of the whole run, naming the node (`storage.unreachable`)."""
    done = set(chunk["done"])
    checked = Layout(**layout) if layout else None
    out = []
    for i, row in enumerate(_chunk_rows(chunk, on_error, source)):
        index = chunk["start"] + i
        if index in done:
            continue
        row = {**row, "source_file": chunk["rel"], "source_row": index}
        if checked is not None and row["_error"] is None:
            try:
                row_units(row, checked, where_of(row))
            except ScoringError as err:
                if on_error != "skip":
                    raise
                row = _error_row(chunk["rel"], index, f"{type(err).__name__}: {err.message}")
        out.append(row)
    return _to_table(out, chunk, on_error, checked, source) if out else _empty_rows()


def _file(chunk: dict, source: Location | None) -> Location:
    fs = source.fs if source is not None else pafs.LocalFileSystem()
    shown = posixpath.join(source.shown, chunk["rel"]) if source is not None else chunk["file"]
    return Location(fs, chunk["file"], shown)


def _chunk_rows(chunk: dict, on_error: str, source: Location | None) -> Iterator[dict]:
    """The chunk's rows as dicts, in order, each with `_error` (None, or why it is no row object:
    skip); JSONL lazily, a line at a time."""
    file = _file(chunk, source)
    try:
        if chunk["fmt"] == "parquet":
            with file.open() as f:
                table = pq.ParquetFile(f).read_row_groups(chunk["groups"])
            return iter([{**move_aside(r), "_error": None} for r in table.to_pylist()])
        if chunk["fmt"] == "json":
            return iter(
                [
                    _object_row(r, chunk["rel"], chunk["start"] + i, None, on_error)
                    for i, r in enumerate(_load_json_rows(file, chunk["rel"]))
                ]
            )
        return _read_jsonl(chunk, on_error, file.open())
    except FileNotFoundError as err:
        raise unreachable("the input file", file, err) from None


def _error_row(rel: str, index: int, error: str) -> dict:
    return {"source_file": rel, "source_row": index, "_error": error}


META_COLUMNS = ("_error", "source_file", "source_row")


def _to_table(
    rows: list[dict], chunk: dict, on_error: str, layout: Layout | None = None, source: Location | None = None
) -> pa.Table:
    """The rows as one table with the union of their columns, in the order first seen. A column
    Arrow cannot hold (a string in one row, a list in another) fails the rows whose value does not
    fit the type most of the file's first rows hold there (`_reference_row`, read only then): raise
    names the row and column; skip turns those rows, and only those, into error rows."""
    rel, ref = chunk["rel"], None
    while True:
        names = list(dict.fromkeys(k for r in rows for k in r))
        columns = [c for c in names if c not in META_COLUMNS] + list(META_COLUMNS)
        arrays, bad_column = {}, None
        for c in columns:
            try:
                arrays[c] = pa.array([r.get(c) for r in rows])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                bad_column = c
                break
        if bad_column is None:
            return pa.table(arrays)
        if ref is None:
            ref = _reference_row(chunk, layout, source)
        odd = _misfits([r.get(bad_column) for r in rows], ref.get(bad_column))
        if not odd:  # every value fits the reference on its own but not all together: fail the column
            odd = {
                i: "values of different types in different rows"
                for i, r in enumerate(rows)
                if r.get(bad_column) is not None
            }
        for i, why in odd.items():
            message = (
                f"{rel} row {rows[i]['source_row']}: column {bad_column!r}: {why}; use one type per column in a file"
            )
            if on_error != "skip":
                raise InvalidInput(message)
            rows[i] = _error_row(rel, rows[i]["source_row"], f"InvalidInput: {message}")


def _misfits(values: list, reference: Any) -> dict[int, str]:
    """Index -> why, for the values whose Arrow type does not merge with the reference value's
    type (the running merge of the values before them where the reference is null)."""

    def kind(value):
        try:
            return pa.array([value]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None

    expected = kind(reference) if reference is not None else None
    odd = {}
    for i, value in enumerate(values):
        if value is None:
            continue
        got = kind(value)
        if got is None:
            odd[i] = "a value Arrow cannot store (e.g. a list mixing types)"
            continue
        if expected is None or pa.types.is_null(expected):
            expected = got
            continue
        try:
            expected = (
                pa.unify_schemas([pa.schema([("v", expected)]), pa.schema([("v", got)])], promote_options="permissive")
                .field("v")
                .type
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            odd[i] = f"{got} here, {expected} in the file's other rows"
    return odd


def _read_jsonl(chunk: dict, on_error: str, opened: pa.NativeFile) -> Iterator[dict]:
    """The chunk's rows from its byte offset on (`opened` by the caller, so that a file this node
    cannot see fails there, not at the first row)."""
    count, line = 0, chunk["line"]
    with opened as f:
        f.seek(chunk["offset"])
        for raw in _lines(f):
            if count >= chunk["stop"] - chunk["start"]:
                break
            if raw.strip():
                index = chunk["start"] + count
                try:
                    value = json.loads(raw)
                except ValueError as err:
                    value = InvalidInput(f"{chunk['rel']} row {index} (line {line}): not valid JSON ({err})")
                count += 1
                yield _object_row(value, chunk["rel"], index, line, on_error)
            line += 1


def _object_row(value: Any, rel: str, index: int, line: int | None, on_error: str) -> dict:
    if isinstance(value, dict):
        return {**move_aside(value), "_error": None}
    at = f"{rel} row {index}" + (f" (line {line})" if line else "")
    err = (
        value
        if isinstance(value, InvalidInput)
        else InvalidInput(f"{at}: a row must be a JSON object, got {type(value).__name__}")
    )
    if on_error != "skip":
        raise err
    return {"_error": f"InvalidInput: {err.message}"}


def _empty_rows() -> pa.Table:
    return pa.table(
        {
            "source_file": pa.array([], pa.string()),
            "source_row": pa.array([], pa.int64()),
            "_error": pa.array([], pa.string()),
        }
    )


def _read_batch(batch: pa.Table, on_error: str, layout: dict, source: Location | None = None) -> pa.Table:
    tables = [read_chunk(chunk, on_error, layout, source) for chunk in batch.to_pylist()]
    return pa.concat_tables(tables, promote_options="permissive")


def _file_rows(chunks: list[dict], on_error: str, source: Location | None = None) -> Iterator[tuple[int, dict]]:
    """(row index, row) through one file's chunks in order, a chunk at a time (lazily)."""
    for chunk in chunks:
        for i, row in enumerate(_chunk_rows(chunk, on_error, source)):
            yield chunk["start"] + i, row


REFERENCE_ROWS = 100  # a file's first rows, read to find the type each column should have


def _reference_row(chunk: dict, layout: Layout | None, source: Location | None = None) -> dict:
    """Per column, a value of the type most of the file's first rows that can be scored hold there
    (ties: the first seen): what a row's value must merge with, so that one odd row fails alone,
    even as row 0, and every chunk of the file decides alike."""
    if chunk["fmt"] == "parquet":  # one type per column already
        return {}
    head = {**chunk, "start": 0, "stop": REFERENCE_ROWS, "offset": 0, "line": 1}
    rows = [r for r, _ in zip(_chunk_rows(head, "skip", source), range(REFERENCE_ROWS)) if _fits(r, layout)]
    seen: dict[str, dict[str, list]] = {}  # column (in the order first seen) -> type -> [count, first value]
    for row in rows:
        for column, value in row.items():
            kinds = seen.setdefault(column, {})
            if column == "_error" or value is None:
                continue
            try:
                kind = str(pa.array([value]).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                continue
            entry = kinds.setdefault(kind, [0, value])
            entry[0] += 1
    return {
        column: max(kinds.values(), key=lambda e: e[0])[1] if kinds else None
        for column, kinds in seen.items()
        if column != "_error"
    }


def _fits(row: dict, layout: Layout | None) -> bool:
    if row["_error"] is not None:
        return False
    if layout is None:
        return True
    try:
        row_units(row, layout, "row")
    except ScoringError:
        return False
    return True
