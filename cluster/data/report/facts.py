"""What was measured, as the output folder recorded it (every field optional: a missing one reads
"not recorded"), and the stamp saying when and by which code the report was made."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from cluster.core.version import DISTRIBUTION, code_version
from cluster.data.report.load import ScoredRun

NOT_RECORDED = "not recorded"


def format_version(version: Any) -> str:
    if not isinstance(version, dict) or not version:
        return NOT_RECORDED
    package = version.get("package") or "unknown version"
    git = version.get("git")
    return f"{DISTRIBUTION} {package}, git {git}" if git else f"{DISTRIBUTION} {package} (git commit not recorded)"


def report_stamp() -> str:
    """When and by which code this report was made."""
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"Report generated {now} by {format_version(code_version())}."


def run_facts(run: ScoredRun | None, summary: dict) -> dict[str, str]:
    """What was measured, as {field: text}; a field the output did not record says so."""
    run = run or ScoredRun("", pa.table({}))
    block, saved, manifest = run.run, run.saved, run.manifest
    identity = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    kind_source = first_of(block.get("model_kind"), saved.get("model_kind"), identity.get("kind"))
    inputs = first_of(block.get("inputs"), manifest.get("inputs"))
    options = (
        block.get("options")
        if isinstance(block.get("options"), dict)
        else {key: manifest[key] for key in ("shape", "debias") if key in manifest}
    )
    if "model_revision" in block:
        revision = block["model_revision"] or "none pinned"
    else:
        revision = first_of(identity.get("revision"), NOT_RECORDED)
    return {
        "model": text_of_fact(first_of(block.get("model"), saved.get("model"))),
        "model path": text_of_fact(first_of(block.get("model_path"), identity.get("path"))),
        "model kind": text_of_fact(kind_source) if kind_source else f"{summary.get('kind')} (from the table's columns)",
        "model revision": text_of_fact(revision),
        "input": text_of_fact(block.get("input")),
        "input files": files_text(inputs),
        "run": run_dates(block.get("started_at"), block.get("finished_at")),
        "seconds": seconds_text(saved),
        "rows": rows_text(summary, first_of(saved.get("errors"), run.errors_logged)),
        "code version (run)": format_version(block.get("version")),
        "options": ", ".join(f"{key}={value}" for key, value in options.items()) if options else NOT_RECORDED,
        "scores from": run.source or NOT_RECORDED,
    }


def first_of(*values: Any) -> Any:
    return next((value for value in values if value not in (None, "", [], {})), None)


def text_of_fact(value: Any) -> str:
    return NOT_RECORDED if value in (None, "") else str(value)


def files_text(inputs: Any, shown: int = 8) -> str:
    if not isinstance(inputs, list) or not inputs:
        return NOT_RECORDED
    names = [str(name) for name in inputs]
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)}: " + ", ".join(names[:shown]) + more


def run_dates(started: Any, finished: Any) -> str:
    if not started and not finished:
        return NOT_RECORDED
    return f"{readable_time(started)} to {readable_time(finished)}"


def readable_time(value: Any) -> str:
    """An ISO-8601 time as 'YYYY-MM-DD HH:MM:SS UTC'; anything else as it was recorded."""
    if not value:
        return NOT_RECORDED
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if moment.tzinfo is not None else "")


def seconds_text(saved: dict) -> str:
    seconds = saved.get("seconds")
    if not isinstance(seconds, int | float):
        return NOT_RECORDED
    text = f"{seconds:.1f}"
    rate = saved.get("rows_per_s")
    if isinstance(rate, int | float) and rate:
        text += f" ({rate:.1f} rows/s)"
    before = saved.get("rows_done_before")
    if isinstance(before, int) and before:
        text += f", the last invocation only: {before} rows were scored by an earlier one"
    return text


def rows_text(summary: dict, errors: Any) -> str:
    errors_text = (
        f"{errors} errors (rows not scored, in errors.jsonl)" if errors is not None else f"errors {NOT_RECORDED}"
    )
    return (
        f"{summary['scored']} scored, {summary['skipped']} with no result, {errors_text}, "
        f"{summary['truncated']} truncated"
    )
