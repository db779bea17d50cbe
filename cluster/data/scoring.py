"""The runs: `score_dataset` (a Ray Dataset in, a lazy Dataset out) and `score_corpus` (files in, an output
folder out: the shards, resume, errors.jsonl and summary.json)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from cluster.core.config import ModelSpec
from cluster.core.errors import ConfigError, InvalidInput, ScoringError, from_ray
from cluster.core.version import code_version
from cluster.data.corpus import Layout, aside, check_columns, detect_shape, is_multi, moved_columns, row_units
from cluster.data.models import output_labels, resolve_model, served_model
from cluster.data.options import ScoringOptions
from cluster.data.progress import RunProgress
from cluster.data.reading import _file_rows, _read_batch, expand_inputs, plan_chunks
from cluster.data.resume import _done_rows, _interrupted, _merge_errors, _model_identity, _prepare_output, read_scores
from cluster.data.stages import ModelStage, ServeStage, TokenizeStage, _ScoreStage
from cluster.data.storage import Location, is_uri, locate
from cluster.kinds import kind_of
from cluster.kinds.pointwise import rating_extra_fields

IO_TASK_CPUS = 0.1
IO_TASKS = 2  # read tasks in flight


def score_dataset(ds, model: ModelSpec | Mapping[str, Any] | str, **options: Any):
    """Lazily score a Ray Dataset: one output row per input row, the input's columns carried
    through, result columns appended (see cluster/data/corpus.py). Options: `ScoringOptions`."""
    opts = ScoringOptions.parse(options)
    spec = resolve_model(model, opts.via_serve)
    moved = {name: aside(name) for name in ds.columns() or [] if aside(name) != name}
    if moved:  # an input column named like one of ours is kept under another name (corpus.aside)
        ds = ds.rename_columns(moved)
    first = ds.take(1)
    if not first:
        raise InvalidInput("the dataset is empty (no rows)")
    layout = _layout(list(first[0]), first[0], spec, opts, "the dataset")
    return _scored(ds, spec, layout, opts)


def _layout(
    columns: list[str], first_row: Mapping[str, Any], spec: ModelSpec, opts: ScoringOptions, where: str
) -> Layout:
    shape = detect_shape(columns, where) if opts.shape == "auto" else opts.shape
    conversation_column = check_columns(columns, shape, where) or "conversations"
    kind = kind_of(spec)
    if kind.judges_pairs and shape != "pairs":
        raise InvalidInput(f"{where}: a critic judges pairs (prompt + chosen + rejected); this is shape {shape!r}")
    if kind.rates and shape == "conversations":
        raise InvalidInput(
            f"{where}: a pointwise judge rates 'prompt' + 'response' rows or pairs (prompt + chosen + "
            "rejected), not conversations"
        )
    if shape == "prompt_response" and not kind.steps and "response" not in columns:
        raise InvalidInput(
            f"{where}: missing column 'response' ('steps' is read by a process reward model only; "
            f"this model is kind {spec.kind!r})"
        )
    multi = shape == "pairs" and is_multi(first_row)
    kind_fields: dict[str, Any] = {}
    if kind.steps:
        kind_fields["step_aggregate"] = spec.step_aggregate
    elif kind.rates:
        kind_fields.update(rating_values=tuple(spec.rating_numbers), item_fields=rating_extra_fields(spec.template))
    if opts.mode == "generate" and kind.unit not in ("pair", "rating"):
        raise ConfigError(
            f"mode='generate' is for a critic or a pointwise judge (a judge that writes its answer); "
            f"model '{spec.name}' is {kind.title}"
        )
    return Layout(
        shape,
        spec.kind,
        multi,
        conversation_column,
        values=len(output_labels(spec, opts.via_serve)) > 1,
        generate=opts.mode == "generate",
        **kind_fields,
    )


def _scored(
    ds,
    spec: ModelSpec,
    layout: Layout,
    opts: ScoringOptions,
    model_stage: type[_ScoreStage] | None = None,
    out_dir: Location | None = None,
):
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    if out_dir is None and not opts.progress:  # score_dataset: Ray Data's own bars are its progress
        DataContext.get_current().enable_progress_bars = False
    keep_errors = opts.on_error == "skip"
    ds = ds.map_batches(
        TokenizeStage,
        fn_constructor_kwargs={
            "spec": spec.model_dump(),
            "layout": asdict(layout),
            "debias": opts.debias,
            "on_error": opts.on_error,
        },
        compute=ActorPoolStrategy(min_size=1, max_size=opts.tokenizer_actors),
        num_cpus=opts.tokenizer_num_cpus,
        batch_size=opts.batch_rows,
        batch_format="pyarrow",
        zero_copy_batch=True,
    )
    if opts.via_serve is not None:
        _, deployment, call_tokens = served_model(opts.via_serve, spec.name)
        stage, kwargs, num_gpus, num_cpus = (
            ServeStage,
            {
                "kind": spec.kind,
                "app_name": opts.via_serve,
                "deployment": deployment,
                "call_tokens": call_tokens,
                "model_name": spec.name,
                "spec": spec.model_dump(),
            },
            0,
            0.1,
        )
    else:
        num_gpus = opts.num_gpus
        if num_gpus is None:
            num_gpus = 1 if spec.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0
        stage, kwargs = model_stage or ModelStage, {"spec": spec.model_dump(), "threads": int(opts.num_cpus)}
        num_cpus = opts.num_cpus
    min_size, max_size = opts.actors
    _check_fits(opts.tokenizer_num_cpus + min_size * num_cpus + IO_TASKS * IO_TASK_CPUS, min_size * num_gpus)
    return ds.map_batches(
        stage,
        fn_constructor_kwargs={
            **kwargs,
            "layout": asdict(layout),
            "debias": opts.debias,
            "keep_errors": keep_errors,
            "out_dir": out_dir,
            "flush_s": opts.flush_s,
        },
        compute=ActorPoolStrategy(min_size=min_size, max_size=max_size),
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        batch_size=opts.batch_rows,
        batch_format="pyarrow",
        zero_copy_batch=True,
    )


@contextlib.contextmanager
def quiet_ray_data(show: bool) -> Iterator[None]:
    """Ray Data's progress bars, its periodic progress log lines (what it prints instead of bars
    when not on a terminal), its start-of-run banner and its INFO/WARNING logs (the memory warning
    repeated every 30 s on a small machine): shown only when `show` (verbose), else left to Ray's
    log files, for the duration of the block; what was set before is put back after it. Errors
    still reach the user, as exceptions."""
    import logging

    from ray.data import DataContext

    context, logger = DataContext.get_current(), logging.getLogger("ray.data")
    names = ("enable_progress_bars", "print_on_execution_start", "enable_operator_progress_bars")
    before = {name: getattr(context, name) for name in names if hasattr(context, name)}, logger.level
    if not show:
        for name in before[0]:
            setattr(context, name, False)
        logger.setLevel(logging.CRITICAL)  # a stage's error reaches the caller as the exception itself
    try:
        yield
    finally:
        for name, value in before[0].items():
            setattr(context, name, value)
        logger.setLevel(before[1])


def _check_fits(cpus: float, gpus: float) -> None:
    """The smallest pipeline (one tokenizer, min_actors model actors, a read and a write task) must
    fit the cluster, or Ray Data waits forever for resources that cannot appear."""
    import ray

    have = ray.cluster_resources()
    if cpus > have.get("CPU", 0) + 1e-9 or gpus > have.get("GPU", 0) + 1e-9:
        raise ConfigError(
            f"the pipeline needs {cpus:g} CPU and {gpus:g} GPU at least (tokenizer_num_cpus + min_actors x "
            f"(num_cpus, num_gpus) + reading/writing), but the Ray cluster has {have.get('CPU', 0):g} CPU and "
            f"{have.get('GPU', 0):g} GPU; lower num_cpus / min_actors / num_gpus"
        )


def _row_layout(row: dict, index: int, rel: str, spec: ModelSpec, opts: ScoringOptions) -> Layout:
    """The layout one row implies, checked by scoring it as that layout would (InvalidInput if not)."""
    if row["_error"] is not None:
        raise InvalidInput(row["_error"].split(": ", 1)[1])
    data = {k: v for k, v in row.items() if k != "_error"}
    where = f"{rel} row {index}"
    layout = _layout(list(data), data, spec, opts, where)
    row_units({**data, "source_file": rel, "source_row": index}, layout, where)
    return layout


def score_corpus(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    model: ModelSpec | Mapping[str, Any] | str,
    *,
    overwrite: bool = False,
    filesystem=None,
    **options: Any,
) -> dict[str, Any]:
    """Score every row of parquet/JSONL/JSON files into `output_path` and return the summary.

    Both paths may be local or URIs (`s3://bucket/corpus/`, `gs://...`, `abfs://...`, `hdfs://...`,
    `file://...`), opened through pyarrow with credentials and endpoint from the environment (e.g.
    `AWS_ENDPOINT_URL`), or paths on `filesystem` (a configured `pyarrow.fs.FileSystem`). Every node
    of the Ray cluster reads the input and writes shards there, so both must be reachable from every
    node: object storage, or a filesystem all nodes mount (a path only the driver sees is an error
    naming the node that cannot open it).

    Output folder: `parts/` (parquet shards, one per batch, written atomically), `errors.jsonl`
    (rows that could not be scored, with the reason, on_error='skip'), `summary.json` and
    `run.json`. Run it again with the same arguments after a crash and it scores only the rows no
    shard holds yet: none lost, none twice. Load the results with `read_scores(output_path)`.
    """
    return _score_corpus(
        input_path, output_path, model, overwrite, ScoringOptions.parse(options), ModelStage, filesystem=filesystem
    )


def _score_corpus(
    input_path,
    output_path,
    model,
    overwrite: bool,
    opts: ScoringOptions,
    model_stage: type[_ScoreStage],
    require: Callable[[Layout], None] | None = None,
    filesystem=None,
) -> dict[str, Any]:
    import ray
    from ray.data import TaskPoolStrategy

    from cluster.data.metrics import summarize

    spec = resolve_model(model, opts.via_serve)
    files, base = expand_inputs(input_path, filesystem)
    chunks, empty = plan_chunks(files, base, opts.rows_per_shard)
    if empty and opts.on_error == "raise":
        raise InvalidInput(empty[0]["error"].split(": ", 1)[1])
    if not chunks:
        raise InvalidInput(f"{input_path}: the input holds no rows")
    layout = _corpus_layout(chunks, spec, opts, base)
    if require is not None:  # a recipe's own check (filter_solutions: a prm's solutions), before anything runs
        require(layout)
    out = locate(output_path, filesystem)
    identity, generated = _model_identity(spec), {}
    if layout.generate:  # what decides a written answer's verdict (absent otherwise: older folders stay resumable)
        identity |= {k: getattr(spec, k) for k in ("max_new_tokens", "reasoning_end", "verdict_pattern")}
        generated = {"mode": "generate"}
    _prepare_output(
        out,
        {
            "model": identity,
            "shape": layout.shape,
            "debias": opts.debias,
            "inputs": sorted({c["rel"] for c in chunks}),
            **generated,
        },
        overwrite,
    )
    done = _done_rows(out)
    pending = []
    for chunk in chunks:
        skip = sorted(i for i in done.get(chunk["rel"], ()) if chunk["start"] <= i < chunk["stop"])
        if len(skip) < chunk["stop"] - chunk["start"]:
            pending.append({**chunk, "done": skip})

    started_at, started = _now(), time.perf_counter()
    counts = {"rows": 0, "errors": 0, "tokens": 0}
    todo = sum(c["stop"] - c["start"] - len(c["done"]) for c in pending)
    parts = out.child("parts")
    with quiet_ray_data(opts.verbose), RunProgress(parts, todo, enabled=opts.progress) as progress:
        try:
            if pending:
                ds = ray.data.from_items(pending, override_num_blocks=len(pending))
                # reading is a light I/O task: a small CPU share, so that on a small machine it still
                # fits beside the actor pools (a default whole CPU each deadlocks a 2-core cluster),
                # and a few at a time (a small share alone would let Ray start dozens of workers)
                ds = ds.map_batches(
                    _read_batch,
                    fn_kwargs={"on_error": opts.on_error, "layout": asdict(layout), "source": base},
                    batch_size=1,
                    batch_format="pyarrow",
                    num_cpus=IO_TASK_CPUS,
                    compute=TaskPoolStrategy(size=min(IO_TASKS, len(pending))),
                )
                # the model actors write their own shards (a piece at a time) and return counts
                ds = _scored(ds, spec, layout, opts, model_stage, out_dir=parts)
                for stats in ds.iter_rows():
                    for key in counts:
                        counts[key] += stats[key]
        except (KeyboardInterrupt, SystemExit) as stop:
            raise _interrupted(stop, out, progress.base, todo) from None
        except Exception as err:
            cause = from_ray(err, transient=False)  # the ScoringError a stage raised, out of Ray Data's wrapper
            if isinstance(cause, ScoringError):
                raise cause from None
            raise
    seconds = time.perf_counter() - started

    error_rows = _merge_errors(out, empty)
    table = read_scores(out)
    moved = moved_columns(table.column_names)
    summary = {
        "output": out.shown,
        "model": spec.name,
        "shape": layout.shape,
        "rows_scored_now": counts["rows"],
        "rows_done_before": sum(len(v) for v in done.values()),
        "errors": error_rows,
        "errors_file": out.child("errors.jsonl").shown if error_rows else None,
        "moved_columns": moved,
        "seconds": round(seconds, 3),
        "rows_per_s": counts["rows"] / seconds if seconds and counts["rows"] else None,
        "tokens_per_s": counts["tokens"] / seconds if seconds and counts["tokens"] else None,
        **summarize(table, default_kind=spec.kind),
        "run": {
            "model": spec.name,
            "model_path": spec.path,
            "model_kind": spec.kind,
            "model_revision": spec.revision,
            "input": _shown_input(input_path),
            "inputs": sorted({c["rel"] for c in chunks}),
            "started_at": started_at,
            "finished_at": _now(),
            "version": code_version(),
            "options": opts.model_dump(include={"shape", "debias", "mode", "on_error", "batch_rows", "via_serve"}),
        },
    }
    out.child("summary.json").write(json.dumps(summary, indent=2, default=str))
    return summary


def _shown_input(input_path) -> str:
    """The input as the summary records it: a local path made absolute, a URI as given."""
    given = os.fspath(input_path)
    return given if is_uri(given) else os.path.abspath(given)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _corpus_layout(chunks: list[dict], spec: ModelSpec, opts: ScoringOptions, source: Location | None = None) -> Layout:
    """The corpus's layout from its first row, checked by turning it into what the model scores;
    with on_error='skip' from its first row that passes, so a corrupt row 0 is one error row, not
    the end of the run. With raise each later file's first row must fit it (an error naming file,
    row and column); with skip every row is checked when read, each failing alone."""
    by_file: dict[str, list[dict]] = {}
    for chunk in chunks:
        by_file.setdefault(chunk["rel"], []).append(chunk)
    layout, first_problem = None, None
    for rel, file_chunks in by_file.items():
        # later files are held to the first one's shape, so a missing column is named as such
        shaped = opts if layout is None else opts.model_copy(update={"shape": layout.shape})
        rows = _file_rows(file_chunks, opts.on_error, source) if layout is None or opts.on_error == "raise" else ()
        for index, row in rows:
            try:
                found = _row_layout(row, index, rel, spec, shaped)
                if layout is not None and (found.shape, found.multi) != (layout.shape, layout.multi):
                    raise InvalidInput(
                        f"{rel} row {index}: rows of shape {found.shape!r}{' (several responses)' * found.multi}, "
                        f"but earlier files hold {layout.shape!r}{' (several responses)' * layout.multi}"
                    )
            except ScoringError as err:
                if opts.on_error == "raise":
                    raise
                first_problem = first_problem or err.message
                continue
            layout = layout or found
            break
    if layout is None:
        raise InvalidInput(f"no row of the input can be scored; the first problem: {first_problem}")
    return layout
