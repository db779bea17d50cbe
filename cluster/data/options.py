"""The options of a scoring run (`ScoringOptions`): the row shape and debiasing, which change results,
and the speed and plumbing settings, which do not."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cluster.core.config import StrictModel

FLUSH_S = 30.0  # default: a model actor commits what it scored at least this often (seconds of work)


class ScoringOptions(StrictModel):
    """How a corpus is scored. Only shape/debias/mode change results; the rest is speed and plumbing."""

    shape: Literal["auto", "conversations", "prompt_response", "pairs"] = Field(
        "auto", description="row shape; auto: from the columns"
    )
    debias: bool = Field(False, description="critic: judge both orders and average")
    mode: Literal["logits", "generate"] = Field(
        "logits",
        description="critic / pointwise judge: logits reads the verdict from one forward pass; generate lets "
        "the judge write its answer (reasoning judges: the verdict after its reasoning, by its verdict_pattern), "
        "kept in judge_texts; a row whose judge states no verdict is left unscored (its scores null)",
    )
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="skip: bad rows go to errors.jsonl with the reason and the run goes on"
    )
    batch_rows: int = Field(256, ge=1, description="rows per batch reaching a model actor (sorted inside)")
    rows_per_shard: int = Field(1024, ge=1, description="rows per read task (input chunk)")
    min_actors: int = Field(1, ge=1, description="model actors kept up")
    max_actors: int | None = Field(None, ge=1, description="autoscale up to this many model actors")
    num_gpus: float | None = Field(None, ge=0, description="per model actor; default 1 if the cluster has GPUs")
    num_cpus: float = Field(1.0, gt=0, description="per model actor (also its torch threads)")
    tokenizer_actors: int = Field(1, ge=1, description="autoscale the CPU tokenization pool up to this many")
    tokenizer_num_cpus: float = Field(0.5, gt=0, description="per tokenization actor")
    via_serve: str | None = Field(None, description="Serve app name: score on its replicas")
    flush_s: float = Field(
        FLUSH_S,
        gt=0,
        description="score_corpus: each model actor writes what it scored at "
        "least this often (seconds of work), so an interrupted run loses at most that much",
    )
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
