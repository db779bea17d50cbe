"""The output folder: shards committed atomically and named by their rows, the rows already done (what
a rerun skips), run.json, errors.jsonl, an interrupted run's message, and reading the scores back."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from cluster.core.config import ModelSpec
from cluster.core.errors import ConfigError, InvalidInput
from cluster.data.progress import shard_rows
from cluster.data.storage import Location, locate

MANIFEST_KEYS = ("model", "shape", "debias", "mode", "inputs")


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or a signal. `message()` says what is safely written and how to
    resume; ask it after Ray has shut down, when no model actor can commit another piece."""

    def __init__(self, out: Location, base: int, todo: int, code: int):
        super().__init__(f"interrupted; rerun the same call to resume ({out})")
        self.out, self.base, self.todo, self.code = out, base, todo, code

    def message(self) -> str:
        total = shard_rows(self.out.child("parts"))
        return (
            f"{total - self.base} of this run's {self.todo} rows are safely written ({total} in {self.out} in "
            "all); run the same command again to resume from there"
        )


def _interrupted(stop: BaseException, out: Location, base: int, todo: int) -> Interrupted:
    code = stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130
    return Interrupted(out, base, todo, code)


def _model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What decides the scores (not speed settings such as batch sizes)."""
    keep = ("path", "kind", "revision", "dtype", "max_length", "truncation", "judge_template", "verdicts")
    # the new kinds' own fields, for those kinds only (a reward model's or critic's identity, and so
    # the resumability of its existing output folders, is unchanged)
    keep += IDENTITY_FIELDS.get(spec.kind, ())
    dumped = spec.model_dump(mode="json")
    # a kind without the judge fields records their old defaults, so its run.json, and so the resumability
    # of output folders written before specs were split by kind, is unchanged
    return {k: dumped.get(k, JUDGE_DEFAULTS.get(k)) for k in keep if k in dumped or k in JUDGE_DEFAULTS}


JUDGE_DEFAULTS = {"judge_template": None, "verdicts": ["[[A]]", "[[B]]"]}


IDENTITY_FIELDS = {
    "prm": (
        "step_tag",
        "step_format",
        "step_joiner",
        "step_separator",
        "prm_template",
        "step_labels",
        "step_aggregate",
        "system_prompt",
        "reward_label",
    ),
    "pointwise": ("ratings", "rating_format", "rating_values", "system_prompt"),
}


def _prepare_output(out: Location, manifest: dict[str, Any], overwrite: bool) -> None:
    """Check that `out` is new, empty or this same run's folder, and write run.json there."""
    run_file = out.child("run.json")
    if overwrite:
        out.delete()
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        changed = [k for k in MANIFEST_KEYS if previous.get(k) != manifest.get(k)]
        if changed:
            raise ConfigError(
                f"{out}: holds a run with different {', '.join(changed)} (was {[previous.get(k) for k in changed]}); "
                "resuming would mix results. Use another output folder, or overwrite=True (--overwrite)"
            )
    elif out.is_file() or out.files():
        raise ConfigError(f"{out}: exists and is not a scoring output folder; choose an empty or new folder")
    parts = out.child("parts")
    parts.makedirs()
    for stale in parts.glob("*.tmp"):  # a shard a killed run was writing: never committed
        stale.delete()
    run_file.write(json.dumps(manifest, indent=2))


def _done_rows(out: Location) -> dict[str, set[int]]:
    """Row ids already in a committed shard (scored or errored)."""
    done: dict[str, set[int]] = {}
    parts = out.child("parts")
    for part in parts.glob("part-*.parquet"):
        ids = part.read_parquet(columns=["source_file", "source_row"]).to_pydict()
        for rel, row in zip(ids["source_file"], ids["source_row"]):
            done.setdefault(rel, set()).add(row)
    for part in parts.glob("errors-*.jsonl"):
        for line in part.read_text().splitlines():
            rec = json.loads(line)
            done.setdefault(rec["source_file"], set()).add(rec["source_row"])
    return done


def write_shard(batch: pa.Table, out_dir: str | os.PathLike | Location) -> pa.Table:
    """Commit one batch: scored rows to a parquet shard and errored rows to a JSONL shard, each
    written whole or not at all (storage.Location.write), named by a hash of its row ids."""
    out_dir = locate(out_dir)
    if "error" in batch.column_names:
        failed = batch.filter(pc.is_valid(batch["error"]))
        scored = batch.filter(pc.is_null(batch["error"])).drop_columns(["error"])
    else:
        failed, scored = batch.slice(0, 0), batch
    if scored.num_rows:
        out_dir.child(f"part-{_shard_key(scored)}.parquet").write(scored)
    if failed.num_rows:
        lines = [
            json.dumps({"source_file": r["source_file"], "source_row": r["source_row"], "error": r["error"]})
            for r in failed.select(["source_file", "source_row", "error"]).to_pylist()
        ]
        out_dir.child(f"errors-{_shard_key(failed)}.jsonl").write("\n".join(lines) + "\n")
    tokens = pc.sum(scored["num_tokens"]).as_py() if scored.num_rows else 0
    return pa.table({"rows": [scored.num_rows], "errors": [failed.num_rows], "tokens": [tokens or 0]})


def _shard_key(table: pa.Table) -> str:
    ids = sorted(zip(table["source_file"].to_pylist(), table["source_row"].to_pylist()))
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:20]


def _merge_errors(out: Location, file_errors: list[dict]) -> int:
    """errors.jsonl: file-level problems plus every errored row, in input order."""
    records = list(file_errors)
    for part in out.child("parts").glob("errors-*.jsonl"):
        records += [json.loads(line) for line in part.read_text().splitlines()]
    records.sort(key=lambda r: (r["source_file"], -1 if r["source_row"] is None else r["source_row"]))
    target = out.child("errors.jsonl")
    if records:
        target.write("".join(json.dumps(r) + "\n" for r in records))
    else:
        target.delete()
    return len(records)


def read_scores(path: str | os.PathLike | Location, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """A scoring output folder (its shards, in input order) or a parquet file, as one table; a
    local path or a URI (s3://..., cluster/data/storage.py), or a path on `filesystem`."""
    path = locate(path, filesystem)
    if path.is_file():
        return path.read_parquet()
    parts_dir = path.child("parts")
    parts = parts_dir.glob("part-*.parquet")
    if not parts:
        if parts_dir.is_dir():
            return pa.table({})
        raise InvalidInput(f"{path}: not a scoring output folder or parquet file")
    table = pa.concat_tables([p.read_parquet() for p in parts], promote_options="permissive")
    table = table.sort_by([("source_file", "ascending"), ("source_row", "ascending")])
    return _first_of_each_row(table)


def _first_of_each_row(table: pa.Table) -> pa.Table:
    """One row per (source_file, source_row). A row is in two shards only if a model actor died
    after committing a piece and Ray Data ran its batch again, cut into other pieces: the same
    row, scored twice (equal up to batch composition); keep one."""
    files, rows = table["source_file"].to_pylist(), table["source_row"].to_pylist()
    keep = [i == 0 or (files[i], rows[i]) != (files[i - 1], rows[i - 1]) for i in range(len(rows))]
    return table if all(keep) else table.filter(pa.array(keep))
