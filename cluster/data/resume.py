"""The output folder: shards committed atomically and named by their rows, the rows already done (what
a rerun skips), run.json, errors.jsonl, an interrupted run's message, and reading the scores back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cluster.core.config import ModelSpec
from cluster.core.errors import ConfigError, InvalidInput
from cluster.data.progress import shard_rows

MANIFEST_KEYS = ("model", "shape", "debias", "mode", "inputs")


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or a signal. `message()` says what is safely written and how to
    resume; ask it after Ray has shut down, when no model actor can commit another piece."""

    def __init__(self, out: Path, base: int, todo: int, code: int):
        super().__init__(f"interrupted; rerun the same call to resume ({out})")
        self.out, self.base, self.todo, self.code = out, base, todo, code

    def message(self) -> str:
        total = shard_rows(self.out / "parts")
        return (
            f"{total - self.base} of this run's {self.todo} rows are safely written ({total} in {self.out} in "
            "all); run the same command again to resume from there"
        )


def _interrupted(stop: BaseException, out: Path, base: int, todo: int) -> Interrupted:
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


def _prepare_output(out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    run_file = out / "run.json"
    if overwrite and out.exists():
        shutil.rmtree(out)
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        changed = [k for k in MANIFEST_KEYS if previous.get(k) != manifest.get(k)]
        if changed:
            raise ConfigError(
                f"{out}: holds a run with different {', '.join(changed)} (was {[previous.get(k) for k in changed]}); "
                "resuming would mix results. Use another output folder, or overwrite=True (--overwrite)"
            )
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: exists and is not a scoring output folder; choose an empty or new folder")
    (out / "parts").mkdir(parents=True, exist_ok=True)
    for stale in (out / "parts").glob("*.tmp"):  # a shard a killed run was writing: never committed
        stale.unlink()
    _write_atomic(run_file, json.dumps(manifest, indent=2))


def _done_rows(out: Path) -> dict[str, set[int]]:
    """Row ids already in a committed shard (scored or errored)."""
    done: dict[str, set[int]] = {}
    for part in sorted((out / "parts").glob("part-*.parquet")):
        ids = pq.read_table(part, columns=["source_file", "source_row"]).to_pydict()
        for rel, row in zip(ids["source_file"], ids["source_row"]):
            done.setdefault(rel, set()).add(row)
    for part in sorted((out / "parts").glob("errors-*.jsonl")):
        for line in part.read_text().splitlines():
            rec = json.loads(line)
            done.setdefault(rec["source_file"], set()).add(rec["source_row"])
    return done


def write_shard(batch: pa.Table, out_dir: str) -> pa.Table:
    """Commit one batch: scored rows to a parquet shard and errored rows to a JSONL shard, each
    written to a temporary name and renamed (atomic), named by a hash of its row ids."""
    if "error" in batch.column_names:
        failed = batch.filter(pc.is_valid(batch["error"]))
        scored = batch.filter(pc.is_null(batch["error"])).drop_columns(["error"])
    else:
        failed, scored = batch.slice(0, 0), batch
    if scored.num_rows:
        _write_atomic(Path(out_dir) / f"part-{_shard_key(scored)}.parquet", scored)
    if failed.num_rows:
        lines = [
            json.dumps({"source_file": r["source_file"], "source_row": r["source_row"], "error": r["error"]})
            for r in failed.select(["source_file", "source_row", "error"]).to_pylist()
        ]
        _write_atomic(Path(out_dir) / f"errors-{_shard_key(failed)}.jsonl", "\n".join(lines) + "\n")
    tokens = pc.sum(scored["num_tokens"]).as_py() if scored.num_rows else 0
    return pa.table({"rows": [scored.num_rows], "errors": [failed.num_rows], "tokens": [tokens or 0]})


def _shard_key(table: pa.Table) -> str:
    ids = sorted(zip(table["source_file"].to_pylist(), table["source_row"].to_pylist()))
    return hashlib.sha1(json.dumps(ids).encode()).hexdigest()[:20]


def _write_atomic(path: Path, content: pa.Table | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(content, pa.Table):
        pq.write_table(content, tmp)
    else:
        tmp.write_text(content)
    os.replace(tmp, path)


def _merge_errors(out: Path, file_errors: list[dict]) -> int:
    """errors.jsonl: file-level problems plus every errored row, in input order."""
    records = list(file_errors)
    for part in sorted((out / "parts").glob("errors-*.jsonl")):
        records += [json.loads(line) for line in part.read_text().splitlines()]
    records.sort(key=lambda r: (r["source_file"], -1 if r["source_row"] is None else r["source_row"]))
    target = out / "errors.jsonl"
    if records:
        _write_atomic(target, "".join(json.dumps(r) + "\n" for r in records))
    elif target.exists():
        target.unlink()
    return len(records)


def read_scores(path: str | os.PathLike) -> pa.Table:
    """A scoring output folder (its shards, in input order) or a parquet file, as one table."""
    path = Path(path)
    if path.is_file():
        return pq.read_table(path)
    parts = sorted((path / "parts").glob("part-*.parquet")) if (path / "parts").is_dir() else []
    if not parts:
        if (path / "parts").is_dir():
            return pa.table({})
        raise InvalidInput(f"{path}: not a scoring output folder or parquet file")
    table = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")
    table = table.sort_by([("source_file", "ascending"), ("source_row", "ascending")])
    return _first_of_each_row(table)


def _first_of_each_row(table: pa.Table) -> pa.Table:
    """One row per (source_file, source_row). A row is in two shards only if a model actor died
    after committing a piece and Ray Data ran its batch again, cut into other pieces: the same
    row, scored twice (equal up to batch composition); keep one."""
    files, rows = table["source_file"].to_pylist(), table["source_row"].to_pylist()
    keep = [i == 0 or (files[i], rows[i]) != (files[i - 1], rows[i - 1]) for i in range(len(rows))]
    return table if all(keep) else table.filter(pa.array(keep))
