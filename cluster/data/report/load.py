"""Reading a scoring output (its parquet shards, summary.json, run.json, errors.jsonl), checked first so
that a wrong argument is one clear error; and the rows of it that hold a result."""

from __future__ import annotations

import json
import os
import posixpath
import shlex
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.core.errors import InvalidInput
from cluster.data.metrics import valid_mask
from cluster.data.storage import Location, locate

INPUT_SUFFIXES = (".jsonl", ".json", ".parquet")
OUTPUT_FILES = ("summary.json", "run.json", "errors.jsonl", "kept.parquet", "dropped.parquet")
RESULT_COLUMNS = ("chosen_wins", "score")


@dataclass
class ScoredRun:
    """One scoring output: its rows, and what its folder recorded about the run."""

    source: str  # the path or URI as given on the command line
    table: pa.Table
    saved: dict = field(default_factory=dict)  # summary.json, {} when absent or unreadable
    manifest: dict = field(default_factory=dict)  # run.json
    errors_logged: int | None = None  # lines of errors.jsonl; None when the folder has none to count

    @property
    def run(self) -> dict:
        """summary.json's `run` block (model, input, dates, version, options), {} when not recorded."""
        run = self.saved.get("run")
        return run if isinstance(run, dict) else {}

    @property
    def name(self) -> str:
        name = posixpath.basename(self.source.rstrip("/"))
        return (name.removesuffix(".parquet") if name.endswith(".parquet") else name) or self.source


def load_scored(path: str | os.PathLike | Location) -> ScoredRun:
    """A scoring output folder (or a parquet file of scored rows), local or a URI, checked first,
    so that a wrong argument is one clear InvalidInput (a line the CLI prints), not a pyarrow
    traceback."""
    given = str(path)
    path = locate(path)
    if not path.exists():
        raise InvalidInput(f"{given}: no such file or folder")
    if path.is_file():
        return ScoredRun(given, _read_scored_file(path, given))
    parts = path.child("parts")
    if not parts.is_dir():
        if _holds_input_files(path):
            raise InvalidInput(
                f"{given}: a folder of input files, not a scoring output; run "
                f"python -m cluster score {shlex.quote(given)} OUT first, then report OUT"
            )
        raise InvalidInput(
            f"{given}: not a scoring output folder (it has no parts/; python -m cluster score "
            "INPUT OUT writes parts/, summary.json and run.json to OUT)"
        )
    shards = parts.glob("part-*.parquet")
    if not shards:
        if parts.glob("errors-*.jsonl") or path.child("errors.jsonl").is_file():
            raise InvalidInput(
                f"{given}: no scored rows: every row scored so far failed (reasons in "
                f"{path.child('errors.jsonl')} or {parts}/errors-*.jsonl)"
            )
        raise InvalidInput(
            f"{given}: no scored rows yet (parts/ holds no shards): the run is still going or stopped "
            "before its first batch; run the same score command again to resume"
        )
    for shard in shards:
        try:
            with shard.open() as f:
                pq.read_metadata(f)
        except (pa.ArrowException, OSError) as err:
            raise InvalidInput(
                f"{shard}: not a readable parquet shard ({first_line(err)}); delete it and run the "
                "same score command again to rescore its rows"
            ) from None
    # Imported here: the pipeline module is heavier than the report needs until now.
    from cluster.data.pipeline import read_scores

    try:
        table = read_scores(path)
    except (pa.ArrowException, OSError) as err:
        raise InvalidInput(f"{given}: its shards cannot be read together ({first_line(err)})") from None
    saved, manifest = _read_json(path.child("summary.json")), _read_json(path.child("run.json"))
    errors_file = path.child("errors.jsonl")
    errors_logged = len(errors_file.read_text().splitlines()) if errors_file.is_file() else None
    return ScoredRun(given, table, saved, manifest, errors_logged)


def _read_scored_file(path: Location, given: str) -> pa.Table:
    suffix = posixpath.splitext(path.name)[1]
    if path.name in OUTPUT_FILES and path.parent().child("parts").is_dir() and suffix != ".parquet":
        folder = shlex.quote(str(path.parent()))
        raise InvalidInput(f"{given}: a file of a scoring output; pass its folder: python -m cluster report {folder}")
    if suffix in (".jsonl", ".json"):
        raise InvalidInput(input_file_message(given))
    if suffix != ".parquet":
        raise InvalidInput(
            f"{given}: not a scoring output (expected the output folder of python -m cluster score, "
            "or a parquet file of scored rows)"
        )
    try:
        table = path.read_parquet()
    except (pa.ArrowException, OSError) as err:
        raise InvalidInput(f"{given}: not a readable parquet file ({first_line(err)})") from None
    if not any(column in table.column_names for column in RESULT_COLUMNS):
        raise InvalidInput(input_file_message(given))
    return table


def input_file_message(given: str) -> str:
    return (
        f"{given}: an input file, not a scoring output; run python -m cluster score {shlex.quote(given)} OUT "
        "first, then report OUT"
    )


def _holds_input_files(folder: Location) -> bool:
    return any(entry.path.endswith(INPUT_SUFFIXES) for entry in folder.files())


def _read_json(path: Location) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def scored_rows(table: pa.Table, summary: dict) -> pa.Table:
    column = "chosen_wins" if summary["layout"] == "pairs" else "score"
    if column not in table.column_names:
        return table.slice(0, 0)
    return table.filter(pa.array(valid_mask(table, column)))
