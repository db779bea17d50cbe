"""Ray Data: score, evaluate and curate preference corpora across autoscaled model actors.

    read (parquet / JSONL / JSON, one task per chunk of rows; each row keeps its file and index)
      -> tokenize   CPU actor pool, the shared ChatEncoder (the same ids as in-process and Serve)
      -> score      model actor pool, ActorPoolStrategy(min, max), one GPU per actor on GPU clusters;
                    each Ray batch's sequences go through the request core (cluster/core/service.py)
                    as one job of token ids: on the actor's own model (its runner cuts them into
                    length-sorted token-budget forward passes), or with via_serve on the running
                    Serve app's replicas (planned into calls under the replica's per-call budget).
      -> write      (score_corpus) by the model actors themselves: a batch in pieces of about
                    `flush_s` seconds of work, each piece a parquet shard written atomically and
                    named by its rows, so a killed run loses at most a piece per actor; a rerun with
                    the same arguments skips every row already in a shard. The driver watches the
                    folder for its one progress display (cluster/data/progress.py).

`score_dataset` is the lazy building block (Dataset in, Dataset out); `score_corpus` adds the files,
the shards, resume, the errors file and the summary; `filter_pairs` (preference pairs) and
`filter_solutions` (a process reward model's weakest step) are the curation recipes on top.

Model kinds: a reward model, a critic (pairs only), a process reward model (kind "prm": a solution's
step rewards and their aggregate) and a pointwise judge (kind "pointwise": a rating per response,
read from the rating token's logits; the pipeline has no generate mode). See cluster/data/corpus.py.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from cluster.core.config import KINDS, ModelSpec, StrictModel, deployment_name
from cluster.core.errors import ConfigError, InvalidInput, ModelLoadError, ScoringError, from_ray
from cluster.core.version import code_version
from cluster.data.corpus import (
    SOLO_KINDS,
    STAGE_COLUMNS,
    Layout,
    aside,
    check_columns,
    critic_orders,
    detect_shape,
    is_multi,
    move_aside,
    moved_columns,
    row_result,
    row_units,
)
from cluster.data.progress import RunProgress, shard_rows

INPUT_SUFFIXES = (".parquet", ".jsonl", ".json")
# The columns the tokenize stage hands the score stage (dropped before writing), by name and type.
# int64 ids: an encoder's text pair carries its segment inside the id (tokenization.SEGMENT_B).
INTERNAL: dict[str, pa.DataType] = {
    "_ids": pa.list_(pa.list_(pa.int64())),  # the row's sequences, in the order row_result reads them
    "_truncated": pa.bool_(),  # any of them cut to max_length
    "_chosen_is_b": pa.list_(pa.bool_()),  # critic: per judge prompt, whether chosen sits in position B
    "_n_chosen": pa.int32(),  # reward model on pairs: how many sequences belong to the chosen side
    "_error": pa.string(),  # why the row cannot be scored (on_error='skip'); null otherwise
}
assert tuple(INTERNAL) == STAGE_COLUMNS
RESULT_TYPES = {
    "score": pa.float64(), "chosen_score": pa.float64(), "rejected_score": pa.float64(),
    "chosen_scores": pa.list_(pa.float64()), "rejected_scores": pa.list_(pa.float64()),
    "prob_chosen": pa.float64(), "probs_chosen": pa.list_(pa.float64()), "margins": pa.list_(pa.float64()),
    "margin": pa.float64(), "win_rate": pa.float64(), "chosen_wins": pa.bool_(), "truncated": pa.bool_(),
    "num_tokens": pa.int64(), "values": pa.list_(pa.float64()),
    # process reward models
    "step_rewards": pa.list_(pa.float64()), "num_steps": pa.int64(), "weakest_step": pa.int64(),
    "weakest_step_reward": pa.float64(),
    # pointwise judges
    "rating": pa.float64(), "rating_probs": pa.list_(pa.float64()), "chosen_rating": pa.float64(),
    "rejected_rating": pa.float64(), "chosen_ratings": pa.list_(pa.float64()),
    "rejected_ratings": pa.list_(pa.float64()),
}
SIDE_VECTORS = ("chosen_values", "rejected_values", "chosen_step_rewards", "rejected_step_rewards")


def result_type(layout: Layout, name: str) -> pa.DataType:
    if name in SIDE_VECTORS:  # one vector per response on that side
        return pa.list_(pa.list_(pa.float64())) if layout.multi else pa.list_(pa.float64())
    return RESULT_TYPES[name]
MANIFEST_KEYS = ("model", "shape", "debias", "inputs")
IO_TASK_CPUS = 0.1
IO_TASKS = 2  # read tasks in flight
FLUSH_S = 30.0  # default: a model actor commits what it scored at least this often (seconds of work)
FIRST_PIECE_TOKENS = 1024  # an actor's first piece, before it has measured its speed


class ScoringOptions(StrictModel):
    """How a corpus is scored. Only shape/debias change results; the rest is speed and plumbing."""

    shape: Literal["auto", "conversations", "prompt_response", "pairs"] = Field(
        "auto", description="row shape; auto: from the columns")
    debias: bool = Field(False, description="critic: judge both orders and average")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="skip: bad rows go to errors.jsonl with the reason and the run goes on")
    batch_rows: int = Field(256, ge=1, description="rows per batch reaching a model actor (sorted inside)")
    rows_per_shard: int = Field(1024, ge=1, description="rows per read task (input chunk)")
    min_actors: int = Field(1, ge=1, description="model actors kept up")
    max_actors: int | None = Field(None, ge=1, description="autoscale up to this many model actors")
    num_gpus: float | None = Field(None, ge=0, description="per model actor; default 1 if the cluster has GPUs")
    num_cpus: float = Field(1.0, gt=0, description="per model actor (also its torch threads)")
    tokenizer_actors: int = Field(1, ge=1, description="autoscale the CPU tokenization pool up to this many")
    tokenizer_num_cpus: float = Field(0.5, gt=0, description="per tokenization actor")
    via_serve: str | None = Field(None, description="Serve app name: score on its replicas")
    flush_s: float = Field(FLUSH_S, gt=0, description="score_corpus: each model actor writes what it scored at "
                           "least this often (seconds of work), so an interrupted run loses at most that much")
    progress: bool = Field(True, description="one progress bar: rows safely written, rows/s, ETA")
    verbose: bool = Field(False, description="Ray Data's own progress bars and logs as well")

    @model_validator(mode="after")
    def _check(self) -> ScoringOptions:
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) must be >= min_actors ({self.min_actors})")
        return self

    @property
    def actors(self) -> tuple[int, int]:
        return self.min_actors, self.max_actors or self.min_actors


# ---------------------------------------------------------------- the model to score with


def resolve_model(model: ModelSpec | Mapping[str, Any] | str, via_serve: str | None = None) -> ModelSpec:
    """A ModelSpec, its fields, a model directory / hub id (kind read from its config: a reward
    model or a critic; a process reward model or pointwise judge needs a spec), or with via_serve
    the name of a model the Serve app serves (its spec then comes from the replica)."""
    if via_serve is not None:
        name = model.name if isinstance(model, ModelSpec) else model["name"] if isinstance(model, Mapping) else model
        return served_model(via_serve, name)[0]
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, Mapping):
        spec = ModelSpec.parse(dict(model))
    elif isinstance(model, str | os.PathLike):
        spec = ModelSpec(name=_name_from_path(str(model)), path=str(model), kind=_kind_from_config(str(model)))
    else:
        raise ConfigError(f"model: expected a ModelSpec, its fields or a model path, got {type(model).__name__}")
    _check_model(spec)
    return spec


def _name_from_path(path: str) -> str:
    base = os.path.basename(os.path.normpath(path)) or "model"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).lstrip("._-")
    return cleaned or "model"


def _kind_from_config(path: str) -> str:
    from cluster.engine.loading import load_config

    config = load_config(ModelSpec(name=_name_from_path(path), path=path, kind="reward"), label="model")
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "reward"
    if any(a.endswith("ForCausalLM") or a.endswith("ForConditionalGeneration") for a in archs):
        return "critic"
    if any(a.endswith(("ForTokenClassification", "ForProcessRewardModel")) for a in archs):
        raise ModelLoadError(
            f"{path!r}: its config (architectures={archs}) reads a value per token: a process reward model? "
            "A path alone cannot say where its steps are read; pass a ModelSpec with kind='prm' and its step_tag "
            "(e.g. {\"kind\": \"prm\", \"step_tag\": \"<extra_0>\"} for Qwen2.5-Math-PRM)")
    raise ModelLoadError(f"{path!r}: cannot tell from its config (architectures={archs}) whether it is a reward "
                         "model or a critic; pass a ModelSpec with kind='reward' or 'critic' (a process reward "
                         "model or a pointwise judge always needs a spec: kind='prm' or 'pointwise')")


def _check_model(spec: ModelSpec) -> None:
    """Fail in the driver, naming the path, before any actor starts: config and tokenizer load."""
    from cluster.engine.encoders import ChatEncoder
    from cluster.engine.loading import (
        check_head,
        is_causal,
        load_config,
        prm_positive_label,
        prm_step_labels,
        reward_head,
    )

    config = load_config(spec)
    check_head(spec, config)
    if spec.kind == "reward":
        reward_head(spec, config)  # several output labels and no scalar chosen: say so now
    encoder = ChatEncoder.for_spec(spec)  # a prm: its step tag; a pointwise judge: its rating tokens
    if spec.kind == "prm" and is_causal(config):  # the (good, bad) tokens its step reward reads
        prm_step_labels(spec, encoder.tokenizer)
    elif spec.kind == "prm":  # the label its step reward reads
        prm_positive_label(spec, config)


def served_model(app_name: str, model_name: str) -> tuple[ModelSpec, str, int]:
    """(spec, deployment name, per-call token limit) of a model the running Serve app serves."""
    from ray import serve

    try:
        app = serve.status().applications.get(app_name)
    except Exception as err:
        raise ConfigError(f"via_serve={app_name!r}: cannot reach Ray Serve ({err})") from None
    if app is None:
        raise ConfigError(f"via_serve={app_name!r}: no such Serve application is running")
    for kind in KINDS:
        name = deployment_name(kind, model_name)
        if name in app.deployments:
            info = serve.get_deployment_handle(name, app_name=app_name).describe.remote().result()
            return ModelSpec(**info["spec"]), name, int(info["batch_max_tokens"])
    raise ConfigError(f"via_serve={app_name!r}: the app serves no model named {model_name!r} "
                      f"(deployments: {sorted(app.deployments)})")


# ---------------------------------------------------------------- stages (run in Ray actors)


def where_of(row: Mapping[str, Any]) -> str:
    if row.get("source_file") is not None:
        return f"{row['source_file']} row {row['source_row']}"
    if row.get("id") is not None:
        return f"row id={row['id']!r}"
    return "row"


class TokenizeStage:
    """Rows -> token ids per row (internal columns), with the shared ChatEncoder."""

    def __init__(self, spec: dict[str, Any], layout: dict[str, Any], debias: bool, on_error: str):
        from cluster.engine.encoders import ChatEncoder

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.layout = Layout(**layout)
        self.encoder = ChatEncoder.for_spec(ModelSpec(**spec))
        self.debias = debias
        self.skip = on_error == "skip"

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols: dict[str, list] = {name: [] for name in INTERNAL}
        for row in batch.to_pylist():
            encoded = {"_ids": [], "_truncated": False, "_chosen_is_b": [], "_n_chosen": 0, "_error": row.get("_error")}
            if encoded["_error"] is None:
                try:
                    encoded.update(self._encode(row, where_of(row)))
                except ScoringError as err:
                    if not self.skip:
                        raise
                    encoded["_error"] = f"{type(err).__name__}: {err.message}"
            for name in INTERNAL:
                cols[name].append(encoded[name])
        batch = batch.drop_columns([c for c in INTERNAL if c in batch.column_names])
        for name, typ in INTERNAL.items():
            batch = batch.append_column(name, pa.array(cols[name], type=typ))
        return batch

    def _encode(self, row: dict, where: str) -> dict[str, Any]:
        units = row_units(row, self.layout, where)
        if self.layout.kind in SOLO_KINDS:  # a prm's solutions / a pointwise judge's items, one unit each
            op, what = ("score", "solution") if self.layout.kind == "prm" else ("verdicts", "rating item")
            encoded = self.encoder.encode(op, units, f"{where}: {what}")
            return {"_ids": [e.ids for e in encoded], "_truncated": any(e.truncated for e in encoded),
                    "_n_chosen": len(units) // 2 if not self.layout.multi else _n_chosen(row)}
        if self.layout.kind == "critic":
            prompts, flags = critic_orders(units, self.debias)
            encoded = self.encoder.encode_judge_items(prompts, f"{where}: judge prompt")
            return {"_ids": [e.ids for e in encoded], "_truncated": any(e.truncated for e in encoded),
                    "_chosen_is_b": flags}
        encoded = self.encoder.encode_inputs(units, f"{where}: conversation")
        return {"_ids": [e.ids for e in encoded], "_truncated": any(e.truncated for e in encoded),
                "_n_chosen": len(units) // 2 if not self.layout.multi else _n_chosen(row)}


def _n_chosen(row: Mapping[str, Any]) -> int:
    return len(row["chosen"])


class _ScoreStage:
    """Tokenized rows -> result columns, through the request core: the rows' sequences as one job
    of token ids, planned and run on the stage's backend, outputs back in row order.

    With `out_dir` (score_corpus) the stage commits its own results: a batch is scored in pieces
    of about `flush_s` seconds of work each (the first piece small, to measure the speed), and each
    piece is written as its shard before the next starts, so a killed run loses at most one piece
    per model actor. It then returns one row of counts per batch. Without `out_dir` (score_dataset)
    it returns the batch's rows with their result columns."""

    def __init__(self, kind: str, layout: dict[str, Any], debias: bool, keep_errors: bool,
                 out_dir: str | None = None, flush_s: float = FLUSH_S):
        self.kind = kind
        self.op = "score" if kind in ("reward", "prm") else "verdicts"  # a prm: step rewards; a judge: P(verdict)
        self.layout = Layout(**layout)
        self.debias = debias
        self.keep_errors = keep_errors  # on_error="skip": an `error` column, null for scored rows
        self.out_dir, self.flush_s = out_dir, flush_s
        self.tokens_per_s: float | None = None  # measured on this actor's pieces
        self.service = None  # subclasses: a ScoringService over their backend

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.out_dir is None:
            return self._scored(batch)
        counts = {"rows": 0, "errors": 0, "tokens": 0}
        for piece in self._pieces(batch):
            started = time.perf_counter()
            done = write_shard(self._scored(piece), self.out_dir).to_pylist()[0]
            for key in counts:
                counts[key] += done[key]
            seconds = time.perf_counter() - started
            if done["tokens"] and seconds > 0:  # the piece's scored tokens (num_tokens), per second
                rate = done["tokens"] / seconds
                self.tokens_per_s = rate if self.tokens_per_s is None else 0.5 * (self.tokens_per_s + rate)
        return pa.table({key: [value] for key, value in counts.items()})

    def _pieces(self, batch: pa.Table) -> Iterator[pa.Table]:
        """The batch in consecutive slices of about flush_s seconds of work at the measured speed
        (FIRST_PIECE_TOKENS before there is a measurement)."""
        tokens = [sum(len(s) for s in ids) for ids in batch.column("_ids").to_pylist()]
        start, total = 0, 0
        for i, n in enumerate(tokens):
            total += n
            # read again after each piece: the caller has scored it and updated tokens_per_s meanwhile
            if total >= (FIRST_PIECE_TOKENS if self.tokens_per_s is None else self.tokens_per_s * self.flush_s):
                yield batch.slice(start, i + 1 - start)
                start, total = i + 1, 0
        if start < batch.num_rows:
            yield batch.slice(start)

    def _scored(self, batch: pa.Table) -> pa.Table:
        col = {name: batch.column(name).to_pylist() for name in INTERNAL}
        flat = [seq for row_ids, err in zip(col["_ids"], col["_error"]) if err is None for seq in row_ids]
        outputs = self.forward(flat) if flat else []
        vectors: list = [None] * len(outputs)
        if self.kind == "reward":  # (scalar, every label's value or None) per sequence
            outputs, vectors = [s for s, _ in outputs], [v for _, v in outputs]
        results, at = [], 0
        for i, err in enumerate(col["_error"]):
            if err is not None:
                results.append({})
                continue
            n = len(col["_ids"][i])
            results.append(row_result(self.layout, outputs[at:at + n], col["_truncated"][i],
                                      sum(len(s) for s in col["_ids"][i]), n_chosen=col["_n_chosen"][i],
                                      chosen_is_b=col["_chosen_is_b"][i], debias=self.debias,
                                      values=vectors[at:at + n]))
            at += n
        out = batch.drop_columns(list(INTERNAL))
        for name in self.layout.result_columns:
            out = out.append_column(name, pa.array([r.get(name) for r in results], type=result_type(self.layout, name)))
        if self.keep_errors:
            out = out.append_column("error", pa.array(col["_error"], type=pa.string()))
        return out

    def forward(self, seqs: list[list[int]]) -> list:
        from cluster.core.service import SequencesJob

        return self.service.one(SequencesJob(self.model_name, self.op, seqs))


class ModelStage(_ScoreStage):
    """Loads the model once per actor; its runner plans length-sorted token-budget passes."""

    def __init__(self, spec: dict[str, Any], layout: dict[str, Any], debias: bool, keep_errors: bool, threads: int,
                 out_dir: str | None = None, flush_s: float = FLUSH_S):
        import torch

        from cluster.engine.loading import load_model

        super().__init__(spec["kind"], layout, debias, keep_errors, out_dir, flush_s)
        torch.set_num_threads(max(1, threads))
        self.model = load_model(ModelSpec(**spec))
        self.model_name, self.service = self.model.name, self.model.service


class ServeStage(_ScoreStage):
    """Scores on the Serve app's replicas: the rows' sequences planned into calls under the
    replica's per-call token budget, all in flight together (the replicas gather and balance them)."""

    def __init__(self, kind: str, layout: dict[str, Any], debias: bool, keep_errors: bool, app_name: str,
                 deployment: str, call_tokens: int, model_name: str, out_dir: str | None = None,
                 flush_s: float = FLUSH_S, spec: dict[str, Any] | None = None):
        from ray import serve

        from cluster.core.service import ScoringService
        from cluster.engine.local import LocalEncoder
        from deployments.handles import ReplicaBackend

        super().__init__(kind, layout, debias, keep_errors, out_dir, flush_s)
        # names the model to the core; never loaded here (the served spec: a prm's needs its step fields)
        spec = ModelSpec(**spec) if spec is not None else ModelSpec(name=model_name, path="-", kind=kind)
        handle = serve.get_deployment_handle(deployment, app_name=app_name)
        backend = ReplicaBackend({model_name: handle}, {model_name: call_tokens}, blocking=True)
        self.model_name, self.service = model_name, ScoringService([spec], LocalEncoder({}), backend)


# ---------------------------------------------------------------- score_dataset


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


def _layout(columns: list[str], first_row: Mapping[str, Any], spec: ModelSpec, opts: ScoringOptions,
            where: str) -> Layout:
    shape = detect_shape(columns, where) if opts.shape == "auto" else opts.shape
    conversation_column = check_columns(columns, shape, where) or "conversations"
    if spec.kind == "critic" and shape != "pairs":
        raise InvalidInput(f"{where}: a critic judges pairs (prompt + chosen + rejected); this is shape {shape!r}")
    if spec.kind == "pointwise" and shape == "conversations":
        raise InvalidInput(f"{where}: a pointwise judge rates 'prompt' + 'response' rows or pairs (prompt + chosen + "
                           "rejected), not conversations")
    if shape == "prompt_response" and spec.kind != "prm" and "response" not in columns:
        raise InvalidInput(f"{where}: missing column 'response' ('steps' is read by a process reward model only; "
                           f"this model is kind {spec.kind!r})")
    multi = shape == "pairs" and is_multi(first_row)
    kind_fields: dict[str, Any] = {}
    if spec.kind == "prm":
        kind_fields["step_aggregate"] = spec.step_aggregate
    elif spec.kind == "pointwise":
        from cluster.core.config import rating_extra_fields

        kind_fields.update(rating_values=tuple(spec.rating_numbers), item_fields=rating_extra_fields(spec.template))
    return Layout(shape, spec.kind, multi, conversation_column, values=len(output_labels(spec, opts.via_serve)) > 1,
                  **kind_fields)


def output_labels(spec: ModelSpec, via_serve: str | None) -> list[str]:
    """A reward model's output labels (one for a plain reward model); [] for a critic."""
    if spec.kind != "reward":
        return []
    if via_serve is not None:
        from ray import serve

        handle = serve.get_deployment_handle(deployment_name("reward", spec.name), app_name=via_serve)
        return list(handle.describe.remote().result()["labels"])
    from cluster.engine.loading import load_config, reward_head

    return list(reward_head(spec, load_config(spec)).labels)


def _scored(ds, spec: ModelSpec, layout: Layout, opts: ScoringOptions, model_stage: type[_ScoreStage] | None = None,
            out_dir: str | None = None):
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    if out_dir is None and not opts.progress:  # score_dataset: Ray Data's own bars are its progress
        DataContext.get_current().enable_progress_bars = False
    keep_errors = opts.on_error == "skip"
    ds = ds.map_batches(
        TokenizeStage, fn_constructor_kwargs={"spec": spec.model_dump(), "layout": asdict(layout),
                                              "debias": opts.debias, "on_error": opts.on_error},
        compute=ActorPoolStrategy(min_size=1, max_size=opts.tokenizer_actors), num_cpus=opts.tokenizer_num_cpus,
        batch_size=opts.batch_rows, batch_format="pyarrow", zero_copy_batch=True,
    )
    if opts.via_serve is not None:
        _, deployment, call_tokens = served_model(opts.via_serve, spec.name)
        stage, kwargs, num_gpus, num_cpus = ServeStage, {
            "kind": spec.kind, "app_name": opts.via_serve, "deployment": deployment, "call_tokens": call_tokens,
            "model_name": spec.name, "spec": spec.model_dump(),
        }, 0, 0.1
    else:
        num_gpus = opts.num_gpus
        if num_gpus is None:
            num_gpus = 1 if spec.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0
        stage, kwargs = model_stage or ModelStage, {"spec": spec.model_dump(), "threads": int(opts.num_cpus)}
        num_cpus = opts.num_cpus
    min_size, max_size = opts.actors
    _check_fits(opts.tokenizer_num_cpus + min_size * num_cpus + IO_TASKS * IO_TASK_CPUS, min_size * num_gpus)
    return ds.map_batches(
        stage, fn_constructor_kwargs={**kwargs, "layout": asdict(layout), "debias": opts.debias,
                                      "keep_errors": keep_errors, "out_dir": out_dir, "flush_s": opts.flush_s},
        compute=ActorPoolStrategy(min_size=min_size, max_size=max_size), num_gpus=num_gpus, num_cpus=num_cpus,
        batch_size=opts.batch_rows, batch_format="pyarrow", zero_copy_batch=True,
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


# ---------------------------------------------------------------- reading files, with row ids


def expand_inputs(input_path: str | os.PathLike) -> tuple[list[str], str]:
    """(files, base): a file, a folder (its parquet/JSONL/JSON files, recursively) or a glob."""
    path = str(input_path)
    if os.path.isdir(path):
        files = sorted(str(p) for p in Path(path).rglob("*") if p.suffix in INPUT_SUFFIXES and p.is_file())
        base = path
    elif os.path.isfile(path):
        files, base = [path], os.path.dirname(path)
    else:
        files = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        base = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    if not files:
        raise InvalidInput(f"{path}: no input files (expected a parquet/JSONL/JSON file, a folder of them, or a glob)")
    for f in files:
        if not f.endswith(INPUT_SUFFIXES):
            raise InvalidInput(f"{f}: unsupported file type (expected {', '.join(INPUT_SUFFIXES)})")
    return files, base


def _rel(file: str, base: str) -> str:
    return os.path.relpath(file, base) if base else file


def plan_chunks(files: list[str], base: str, rows_per_chunk: int) -> tuple[list[dict], list[dict]]:
    """Read tasks of about `rows_per_chunk` rows each, plus the files that hold no rows at all.
    Row ids are (file relative to the input, row index), stable across runs."""
    chunks, empty = [], []
    for file in files:
        rel = _rel(file, base)
        if file.endswith(".parquet"):
            found = _parquet_chunks(file, rel, rows_per_chunk)
        elif file.endswith(".jsonl"):
            found = _jsonl_chunks(file, rel, rows_per_chunk)
        else:
            n = len(_load_json_rows(file, rel))
            found = [_chunk(file, rel, "json", 0, n)] if n else []
        if found:
            chunks += found
        else:
            empty.append({"source_file": rel, "source_row": None,
                          "error": f"InvalidInput: {rel}: the file has no rows"})
    return chunks, empty


def _chunk(file: str, rel: str, fmt: str, start: int, stop: int, **extra: Any) -> dict:
    return {"file": file, "rel": rel, "fmt": fmt, "start": start, "stop": stop, "groups": [], "offset": 0,
            "line": 0, "done": [], **extra}


def _parquet_chunks(file: str, rel: str, rows_per_chunk: int) -> list[dict]:
    try:
        meta = pq.ParquetFile(file).metadata
    except Exception as err:
        raise InvalidInput(f"{rel}: not a readable parquet file ({err})") from None
    chunks, groups, start, count = [], [], 0, 0
    for g in range(meta.num_row_groups):
        groups.append(g)
        count += meta.row_group(g).num_rows
        if count >= rows_per_chunk or g == meta.num_row_groups - 1:
            if count:
                chunks.append(_chunk(file, rel, "parquet", start, start + count, groups=groups))
            start, groups, count = start + count, [], 0
    return chunks


def _jsonl_chunks(file: str, rel: str, rows_per_chunk: int) -> list[dict]:
    """Byte offsets of every `rows_per_chunk`-th non-blank line (one pass, no parsing)."""
    chunks, offset, row, line = [], 0, 0, 0
    start = None
    with open(file, "rb") as f:
        for raw in f:
            line += 1
            if raw.strip():
                if row % rows_per_chunk == 0:
                    if start is not None:
                        chunks.append(start | {"stop": row})
                    start = _chunk(file, rel, "jsonl", row, row, offset=offset, line=line)
                row += 1
            offset += len(raw)
    if start is not None:
        chunks.append(start | {"stop": row})
    return chunks


def _load_json_rows(file: str, rel: str) -> list:
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise InvalidInput(f"{rel}: not valid JSON ({err}); use JSON lines (.jsonl) for one object per line") from None
    if not isinstance(data, list):
        raise InvalidInput(f"{rel}: a .json input must hold a list of row objects, got {type(data).__name__}")
    return data


def read_chunk(chunk: dict, on_error: str, layout: dict | None = None) -> pa.Table:
    """One read task: the chunk's rows not already done, with source_file/source_row and `_error`.
    With a layout, each row is checked against it here, so a malformed row (raise: an error naming
    file, row and field; skip: an error row) never reaches Arrow, where it could fail a whole block.
    Every row is judged on its own: the table's columns are those of all the chunk's rows (never
    only its first row's), and a value of a type Arrow cannot put in one column with the file's
    other rows' fails that row alone (see `_to_table`)."""
    done = set(chunk["done"])
    checked = Layout(**layout) if layout else None
    out = []
    for i, row in enumerate(_chunk_rows(chunk, on_error)):
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
    return _to_table(out, chunk, on_error, checked) if out else _empty_rows()


def _chunk_rows(chunk: dict, on_error: str) -> Iterator[dict]:
    """The chunk's rows as dicts, in order, each with `_error` (None, or why it is no row object:
    skip); JSONL lazily, a line at a time."""
    if chunk["fmt"] == "parquet":
        table = pq.ParquetFile(chunk["file"]).read_row_groups(chunk["groups"])
        return iter([{**move_aside(r), "_error": None} for r in table.to_pylist()])
    if chunk["fmt"] == "json":
        return iter([_object_row(r, chunk["rel"], chunk["start"] + i, None, on_error)
                     for i, r in enumerate(_load_json_rows(chunk["file"], chunk["rel"]))])
    return _read_jsonl(chunk, on_error)


def _error_row(rel: str, index: int, error: str) -> dict:
    return {"source_file": rel, "source_row": index, "_error": error}


META_COLUMNS = ("_error", "source_file", "source_row")


def _to_table(rows: list[dict], chunk: dict, on_error: str, layout: Layout | None = None) -> pa.Table:
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
            ref = _reference_row(chunk, layout)
        odd = _misfits([r.get(bad_column) for r in rows], ref.get(bad_column))
        if not odd:  # every value fits the reference on its own but not all together: fail the column
            odd = {i: "values of different types in different rows" for i, r in enumerate(rows)
                   if r.get(bad_column) is not None}
        for i, why in odd.items():
            message = (f"{rel} row {rows[i]['source_row']}: column {bad_column!r}: {why}; "
                       "use one type per column in a file")
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
            expected = pa.unify_schemas([pa.schema([("v", expected)]), pa.schema([("v", got)])],
                                        promote_options="permissive").field("v").type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            odd[i] = f"{got} here, {expected} in the file's other rows"
    return odd


def _read_jsonl(chunk: dict, on_error: str) -> Iterator[dict]:
    count, line = 0, chunk["line"]
    with open(chunk["file"], "rb") as f:
        f.seek(chunk["offset"])
        while count < chunk["stop"] - chunk["start"]:
            raw = f.readline()
            if not raw:
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
    err = value if isinstance(value, InvalidInput) else InvalidInput(
        f"{at}: a row must be a JSON object, got {type(value).__name__}")
    if on_error != "skip":
        raise err
    return {"_error": f"InvalidInput: {err.message}"}


def _empty_rows() -> pa.Table:
    return pa.table({"source_file": pa.array([], pa.string()), "source_row": pa.array([], pa.int64()),
                     "_error": pa.array([], pa.string())})


def _read_batch(batch: pa.Table, on_error: str, layout: dict) -> pa.Table:
    tables = [read_chunk(chunk, on_error, layout) for chunk in batch.to_pylist()]
    return pa.concat_tables(tables, promote_options="permissive")


def _file_rows(chunks: list[dict], on_error: str) -> Iterator[tuple[int, dict]]:
    """(row index, row) through one file's chunks in order, a chunk at a time (lazily)."""
    for chunk in chunks:
        for i, row in enumerate(_chunk_rows(chunk, on_error)):
            yield chunk["start"] + i, row


REFERENCE_ROWS = 100  # a file's first rows, read to find the type each column should have


def _reference_row(chunk: dict, layout: Layout | None) -> dict:
    """Per column, a value of the type most of the file's first rows that can be scored hold there
    (ties: the first seen): what a row's value must merge with, so that one odd row fails alone,
    even as row 0, and every chunk of the file decides alike."""
    if chunk["fmt"] == "parquet":  # one type per column already
        return {}
    head = {**chunk, "start": 0, "stop": REFERENCE_ROWS, "offset": 0, "line": 1}
    rows = [r for r, _ in zip(_chunk_rows(head, "skip"), range(REFERENCE_ROWS)) if _fits(r, layout)]
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
    return {column: max(kinds.values(), key=lambda e: e[0])[1] if kinds else None
            for column, kinds in seen.items() if column != "_error"}


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


def _row_layout(row: dict, index: int, rel: str, spec: ModelSpec, opts: ScoringOptions) -> Layout:
    """The layout one row implies, checked by scoring it as that layout would (InvalidInput if not)."""
    if row["_error"] is not None:
        raise InvalidInput(row["_error"].split(": ", 1)[1])
    data = {k: v for k, v in row.items() if k != "_error"}
    where = f"{rel} row {index}"
    layout = _layout(list(data), data, spec, opts, where)
    row_units({**data, "source_file": rel, "source_row": index}, layout, where)
    return layout


# ---------------------------------------------------------------- score_corpus: shards, resume, summary


def score_corpus(input_path: str | os.PathLike, output_path: str | os.PathLike,
                 model: ModelSpec | Mapping[str, Any] | str, *, overwrite: bool = False,
                 **options: Any) -> dict[str, Any]:
    """Score every row of parquet/JSONL/JSON files into `output_path` and return the summary.

    Output folder: `parts/` (parquet shards, one per batch, written atomically), `errors.jsonl`
    (rows that could not be scored, with the reason, on_error='skip'), `summary.json` and
    `run.json`. Run it again with the same arguments after a crash and it scores only the rows no
    shard holds yet: none lost, none twice. Load the results with `read_scores(output_path)`.
    """
    return _score_corpus(input_path, output_path, model, overwrite, ScoringOptions.parse(options), ModelStage)


def _score_corpus(input_path, output_path, model, overwrite: bool, opts: ScoringOptions,
                  model_stage: type[_ScoreStage], require: Callable[[Layout], None] | None = None) -> dict[str, Any]:
    import ray
    from ray.data import TaskPoolStrategy

    from cluster.data.metrics import summarize

    spec = resolve_model(model, opts.via_serve)
    files, base = expand_inputs(input_path)
    chunks, empty = plan_chunks(files, base, opts.rows_per_shard)
    if empty and opts.on_error == "raise":
        raise InvalidInput(empty[0]["error"].split(": ", 1)[1])
    if not chunks:
        raise InvalidInput(f"{input_path}: the input holds no rows")
    layout = _corpus_layout(chunks, spec, opts)
    if require is not None:  # a recipe's own check (filter_solutions: a prm's solutions), before anything runs
        require(layout)
    out = Path(output_path)
    _prepare_output(out, {"model": _model_identity(spec), "shape": layout.shape, "debias": opts.debias,
                          "inputs": sorted({c["rel"] for c in chunks})}, overwrite)
    done = _done_rows(out)
    pending = []
    for chunk in chunks:
        skip = sorted(i for i in done.get(chunk["rel"], ()) if chunk["start"] <= i < chunk["stop"])
        if len(skip) < chunk["stop"] - chunk["start"]:
            pending.append({**chunk, "done": skip})

    started_at, started = _now(), time.perf_counter()
    counts = {"rows": 0, "errors": 0, "tokens": 0}
    todo = sum(c["stop"] - c["start"] - len(c["done"]) for c in pending)
    with quiet_ray_data(opts.verbose), RunProgress(out / "parts", todo, enabled=opts.progress) as progress:
        try:
            if pending:
                ds = ray.data.from_items(pending, override_num_blocks=len(pending))
                # reading is a light I/O task: a small CPU share, so that on a small machine it still
                # fits beside the actor pools (a default whole CPU each deadlocks a 2-core cluster),
                # and a few at a time (a small share alone would let Ray start dozens of workers)
                ds = ds.map_batches(_read_batch, fn_kwargs={"on_error": opts.on_error, "layout": asdict(layout)},
                                    batch_size=1, batch_format="pyarrow", num_cpus=IO_TASK_CPUS,
                                    compute=TaskPoolStrategy(size=min(IO_TASKS, len(pending))))
                # the model actors write their own shards (a piece at a time) and return counts
                ds = _scored(ds, spec, layout, opts, model_stage, out_dir=str(out / "parts"))
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
        "output": str(out), "model": spec.name, "shape": layout.shape,
        "rows_scored_now": counts["rows"], "rows_done_before": sum(len(v) for v in done.values()),
        "errors": error_rows, "errors_file": str(out / "errors.jsonl") if error_rows else None,
        "moved_columns": moved,
        "seconds": round(seconds, 3), "rows_per_s": counts["rows"] / seconds if seconds and counts["rows"] else None,
        "tokens_per_s": counts["tokens"] / seconds if seconds and counts["tokens"] else None,
        **summarize(table, default_kind=spec.kind),
        "run": {"model": spec.name, "model_path": spec.path, "model_kind": spec.kind, "model_revision": spec.revision,
                "input": os.path.abspath(str(input_path)), "inputs": sorted({c["rel"] for c in chunks}),
                "started_at": started_at, "finished_at": _now(), "version": code_version(),
                "options": opts.model_dump(include={"shape", "debias", "on_error", "batch_rows", "via_serve"})},
    }
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or a signal. `message()` says what is safely written and how to
    resume; ask it after Ray has shut down, when no model actor can commit another piece."""

    def __init__(self, out: Path, base: int, todo: int, code: int):
        super().__init__(f"interrupted; rerun the same call to resume ({out})")
        self.out, self.base, self.todo, self.code = out, base, todo, code

    def message(self) -> str:
        total = shard_rows(self.out / "parts")
        return (f"{total - self.base} of this run's {self.todo} rows are safely written ({total} in {self.out} in "
                "all); run the same command again to resume from there")


def _interrupted(stop: BaseException, out: Path, base: int, todo: int) -> Interrupted:
    code = stop.code if isinstance(stop, SystemExit) and isinstance(stop.code, int) else 130
    return Interrupted(out, base, todo, code)


def _corpus_layout(chunks: list[dict], spec: ModelSpec, opts: ScoringOptions) -> Layout:
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
        rows = _file_rows(file_chunks, opts.on_error) if layout is None or opts.on_error == "raise" else ()
        for index, row in rows:
            try:
                found = _row_layout(row, index, rel, spec, shaped)
                if layout is not None and (found.shape, found.multi) != (layout.shape, layout.multi):
                    raise InvalidInput(
                        f"{rel} row {index}: rows of shape {found.shape!r}{' (several responses)' * found.multi}, "
                        f"but earlier files hold {layout.shape!r}{' (several responses)' * layout.multi}")
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


def _model_identity(spec: ModelSpec) -> dict[str, Any]:
    """What decides the scores (not speed settings such as batch sizes)."""
    keep = ("path", "kind", "revision", "dtype", "max_length", "truncation", "judge_template", "verdicts")
    # the new kinds' own fields, for those kinds only (a reward model's or critic's identity, and so
    # the resumability of its existing output folders, is unchanged)
    keep += IDENTITY_FIELDS.get(spec.kind, ())
    return {k: v for k, v in spec.model_dump(mode="json").items() if k in keep}


IDENTITY_FIELDS = {
    "prm": ("step_tag", "step_format", "step_joiner", "step_separator", "prm_template", "step_labels",
            "step_aggregate", "system_prompt", "reward_label"),
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
        lines = [json.dumps({"source_file": r["source_file"], "source_row": r["source_row"], "error": r["error"]})
                 for r in failed.select(["source_file", "source_row", "error"]).to_pylist()]
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


# ---------------------------------------------------------------- curation


def filter_pairs(input_path: str | os.PathLike, output_path: str | os.PathLike,
                 model: ModelSpec | Mapping[str, Any] | str, *, min_margin: float = 0.0,
                 **options: Any) -> dict[str, Any]:
    """Keep the preference pairs the model agrees with: chosen beats rejected by more than 0 and by
    at least `min_margin` (for rows with several responses per side, every chosen/rejected pair
    must). Scores go to `output_path` (resumable, as score_corpus); the rows to `kept.parquet` and
    `dropped.parquet` there, with their scores. Rows that could not be scored are in errors.jsonl."""
    summary = score_corpus(input_path, output_path, model, **options)
    if summary["shape"] != "pairs":
        raise InvalidInput(f"{input_path}: filter_pairs needs preference pairs (prompt + chosen + rejected)")
    table = read_scores(output_path)
    margins = table["margins"].to_pylist() if "margins" in table.column_names else [[m] for m in
                                                                                      table["margin"].to_pylist()]
    keep = pa.array([all(m > 0 and m >= min_margin for m in row) for row in margins], type=pa.bool_())
    return {**summary, "min_margin": min_margin, **_split_kept(table, keep, Path(output_path))}


def _split_kept(table: pa.Table, keep: pa.Array, out: Path) -> dict[str, Any]:
    """The rows `keep` marks to kept.parquet, the others to dropped.parquet, in `out`: their counts and files."""
    kept, dropped = table.filter(keep), table.filter(pc.invert(keep))
    _write_atomic(out / "kept.parquet", kept)
    _write_atomic(out / "dropped.parquet", dropped)
    return {"kept": kept.num_rows, "dropped": dropped.num_rows, "kept_file": str(out / "kept.parquet"),
            "dropped_file": str(out / "dropped.parquet")}


def filter_solutions(input_path: str | os.PathLike, output_path: str | os.PathLike,
                     model: ModelSpec | Mapping[str, Any] | str, *, min_step_reward: float = 0.5,
                     overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """Keep the solutions a process reward model finds no weak step in: every step's reward (the
    weakest step's, `weakest_step_reward`) at least `min_step_reward`. Rows are solutions (prompt +
    steps or response, or conversations); scores go to `output_path` (resumable, as score_corpus);
    the rows to `kept.parquet` and `dropped.parquet` there, with their step rewards. Rows that
    could not be scored are in errors.jsonl. `model` must be a prm (a ModelSpec or its fields)."""
    if isinstance(min_step_reward, bool) or not isinstance(min_step_reward, int | float) \
            or not 0.0 <= min_step_reward <= 1.0:
        raise ConfigError(f"min_step_reward: a step reward is a probability, so a number in [0, 1]; got "
                          f"{min_step_reward!r}")
    opts = ScoringOptions.parse(options)
    spec = resolve_model(model, opts.via_serve)
    if spec.kind != "prm":
        raise ConfigError(f"filter_solutions needs a process reward model (kind='prm'); model '{spec.name}' is kind "
                          f"{spec.kind!r}")

    def solutions(layout: Layout) -> None:
        if layout.shape == "pairs":
            raise InvalidInput(f"{input_path}: filter_solutions keeps or drops single solutions (prompt + steps or "
                               "response, or conversations); this corpus holds pairs: use filter_pairs")

    summary = _score_corpus(input_path, output_path, spec, overwrite, opts, ModelStage, require=solutions)
    table = read_scores(output_path)
    if "weakest_step_reward" in table.column_names:
        keep = pc.fill_null(pc.greater_equal(table["weakest_step_reward"], pa.scalar(float(min_step_reward))), False)
    else:  # nothing scored
        keep = pa.array([False] * table.num_rows, pa.bool_())
    return {**summary, "min_step_reward": min_step_reward, **_split_kept(table, keep, Path(output_path))}


# ---------------------------------------------------------------- calibration (reward shaping)


def calibrate(input_path: str | os.PathLike, output_path: str | os.PathLike,
              model: ModelSpec | Mapping[str, Any] | str, **options: Any) -> dict[str, Any]:
    """Score a corpus (resumable, as score_corpus) and return the reward model's score mean and std
    over it (every scored response: both sides of pairs), as the `shaping` a served model takes:
    `{"normalize": {"mean": ..., "std": ...}}`."""
    summary = score_corpus(input_path, output_path, model, **options)
    if summary["kind"] != "reward":
        raise InvalidInput(f"calibrate measures a reward model's scores; this model is a {summary['kind']}")
    stats = summary.get("score_stats") or {}
    if not stats.get("count") or not stats.get("std"):
        raise InvalidInput(f"{input_path}: too few finite scores to calibrate on ({stats.get('count', 0)})")
    return {"model": summary["model"], "corpus": str(input_path), "count": stats["count"], "mean": stats["mean"],
            "std": stats["std"], "shaping": {"normalize": {"mean": stats["mean"], "std": stats["std"]}}}
