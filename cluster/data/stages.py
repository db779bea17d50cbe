"""The Ray Data stages, run in actors: TokenizeStage (rows -> token ids) and the score stages (ids ->
result columns) on the actor's own model (ModelStage) or a running Serve app's replicas (ServeStage)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa

from cluster.core.config import ModelSpec
from cluster.core.errors import ScoringError
from cluster.core.memory import return_big_blocks
from cluster.core.results import Generated
from cluster.data.corpus import STAGE_COLUMNS, Layout, critic_orders, row_result, row_units
from cluster.data.options import FLUSH_S
from cluster.data.reading import where_of
from cluster.data.resume import write_shard
from cluster.data.storage import Location, unreachable
from cluster.kinds import Op, kind_of

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

UNIT_NAMES = {"steps": "solution", "rating": "rating item"}  # a unit as errors name it


RESULT_TYPES = {
    "score": pa.float64(),
    "chosen_score": pa.float64(),
    "rejected_score": pa.float64(),
    "chosen_scores": pa.list_(pa.float64()),
    "rejected_scores": pa.list_(pa.float64()),
    "prob_chosen": pa.float64(),
    "probs_chosen": pa.list_(pa.float64()),
    "margins": pa.list_(pa.float64()),
    "margin": pa.float64(),
    "win_rate": pa.float64(),
    "chosen_wins": pa.bool_(),
    "truncated": pa.bool_(),
    "num_tokens": pa.int64(),
    "values": pa.list_(pa.float64()),
    # process reward models
    "step_rewards": pa.list_(pa.float64()),
    "num_steps": pa.int64(),
    "weakest_step": pa.int64(),
    "weakest_step_reward": pa.float64(),
    # pointwise judges
    "rating": pa.float64(),
    "rating_probs": pa.list_(pa.float64()),
    "chosen_rating": pa.float64(),
    "rejected_rating": pa.float64(),
    "chosen_ratings": pa.list_(pa.float64()),
    "rejected_ratings": pa.list_(pa.float64()),
    # a judge that writes its answers (mode="generate"): each judge prompt's answer, in the row's order
    "judge_texts": pa.list_(pa.string()),
}
SIDE_VECTORS = ("chosen_values", "rejected_values", "chosen_step_rewards", "rejected_step_rewards")


def result_type(layout: Layout, name: str) -> pa.DataType:
    if name in SIDE_VECTORS:  # one vector per response on that side
        return pa.list_(pa.list_(pa.float64())) if layout.multi else pa.list_(pa.float64())
    return RESULT_TYPES[name]


FIRST_PIECE_TOKENS = 1024  # an actor's first piece, before it has measured its speed


class TokenizeStage:
    """Rows -> token ids per row (internal columns), with the shared ChatEncoder."""

    def __init__(self, spec: dict[str, Any], layout: dict[str, Any], debias: bool, on_error: str):
        return_big_blocks()
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
        kind = kind_of(self.layout.kind)
        if kind.one_response_at_a_time:  # a prm's solutions / a pointwise judge's items, one unit each
            encoded = self.encoder.encode(kind.fast_op, units, f"{where}: {UNIT_NAMES[kind.unit]}")
            return {
                "_ids": [e.ids for e in encoded],
                "_truncated": any(e.truncated for e in encoded),
                "_n_chosen": len(units) // 2 if not self.layout.multi else _n_chosen(row),
            }
        if kind.judges_pairs:
            prompts, flags = critic_orders(units, self.debias)
            encoded = self.encoder.encode_judge_items(prompts, f"{where}: judge prompt")
            return {
                "_ids": [e.ids for e in encoded],
                "_truncated": any(e.truncated for e in encoded),
                "_chosen_is_b": flags,
            }
        encoded = self.encoder.encode_inputs(units, f"{where}: conversation")
        return {
            "_ids": [e.ids for e in encoded],
            "_truncated": any(e.truncated for e in encoded),
            "_n_chosen": len(units) // 2 if not self.layout.multi else _n_chosen(row),
        }


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

    def __init__(
        self,
        kind: str,
        layout: dict[str, Any],
        debias: bool,
        keep_errors: bool,
        out_dir: Location | None = None,
        flush_s: float = FLUSH_S,
    ):
        if out_dir is not None and not out_dir.parent().child("run.json").exists():
            # the driver wrote run.json before any actor started: a node that cannot see it would
            # write shards the driver never reads (rows lost, and scored again on every resume)
            raise unreachable("the output folder", out_dir.parent())
        self.kind = kind
        self.layout = Layout(**layout)
        # a reward model / prm: rewards, step rewards; a judge: P(verdict), or its written answers
        self.op = Op.GENERATE if self.layout.generate else kind_of(kind).fast_op
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
        texts: list = [None] * len(outputs)
        if self.layout.generate:  # a judge's answers: the text kept, the verdict's reading scored (None: none stated)
            texts = [g.text for g in outputs]
            outputs = [g.prob_a if isinstance(g, Generated) else g.probs for g in outputs]
        vectors: list = [None] * len(outputs)
        if kind_of(self.kind).head == "sequence":  # (scalar, every label's value or None) per sequence
            outputs, vectors = [s for s, _ in outputs], [v for _, v in outputs]
        results, at = [], 0
        for i, err in enumerate(col["_error"]):
            if err is not None:
                results.append({})
                continue
            n = len(col["_ids"][i])
            tokens = sum(len(s) for s in col["_ids"][i])
            if any(o is None for o in outputs[at : at + n]):  # a judge's answer states no verdict: unscored
                results.append({"truncated": col["_truncated"][i], "num_tokens": tokens})
            else:
                results.append(
                    row_result(
                        self.layout,
                        outputs[at : at + n],
                        col["_truncated"][i],
                        tokens,
                        n_chosen=col["_n_chosen"][i],
                        chosen_is_b=col["_chosen_is_b"][i],
                        debias=self.debias,
                        values=vectors[at : at + n],
                    )
                )
            if self.layout.generate:
                results[-1]["judge_texts"] = texts[at : at + n]
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

    def __init__(
        self,
        spec: dict[str, Any],
        layout: dict[str, Any],
        debias: bool,
        keep_errors: bool,
        threads: int,
        out_dir: Location | None = None,
        flush_s: float = FLUSH_S,
    ):
        import torch

        from cluster.engine.loading import load_model

        super().__init__(spec["kind"], layout, debias, keep_errors, out_dir, flush_s)
        torch.set_num_threads(max(1, threads))
        self.model = load_model(ModelSpec(**spec))
        self.model_name, self.service = self.model.name, self.model.service


class ServeStage(_ScoreStage):
    """Scores on the Serve app's replicas: the rows' sequences planned into calls under the
    replica's per-call token budget, all in flight together (the replicas gather and balance them)."""

    def __init__(
        self,
        kind: str,
        layout: dict[str, Any],
        debias: bool,
        keep_errors: bool,
        app_name: str,
        deployment: str,
        call_tokens: int,
        model_name: str,
        out_dir: Location | None = None,
        flush_s: float = FLUSH_S,
        spec: dict[str, Any] | None = None,
    ):
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
