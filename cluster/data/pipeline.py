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

This module is the pipeline's one import, re-exporting the names of the modules that do the work:
options.py (ScoringOptions), models.py (the model), reading.py (input chunks), stages.py (the actors),
resume.py (the output folder), scoring.py (score_dataset, score_corpus) and curation.py (the recipes).
"""

from cluster.data.curation import calibrate, filter_pairs, filter_solutions
from cluster.data.models import output_labels, resolve_model, served_model
from cluster.data.options import FLUSH_S, ScoringOptions
from cluster.data.reading import (
    INPUT_SUFFIXES,
    META_COLUMNS,
    REFERENCE_ROWS,
    expand_inputs,
    plan_chunks,
    read_chunk,
    where_of,
)
from cluster.data.resume import IDENTITY_FIELDS, MANIFEST_KEYS, Interrupted, read_scores, write_shard
from cluster.data.resume import _model_identity as _model_identity
from cluster.data.scoring import IO_TASK_CPUS, IO_TASKS, quiet_ray_data, score_corpus, score_dataset
from cluster.data.scoring import _corpus_layout as _corpus_layout
from cluster.data.scoring import _score_corpus as _score_corpus
from cluster.data.stages import (
    FIRST_PIECE_TOKENS,
    INTERNAL,
    RESULT_TYPES,
    SIDE_VECTORS,
    ModelStage,
    ServeStage,
    TokenizeStage,
    result_type,
)
from cluster.data.stages import _ScoreStage as _ScoreStage

__all__ = [
    "FIRST_PIECE_TOKENS",
    "FLUSH_S",
    "IDENTITY_FIELDS",
    "INPUT_SUFFIXES",
    "INTERNAL",
    "IO_TASKS",
    "IO_TASK_CPUS",
    "MANIFEST_KEYS",
    "META_COLUMNS",
    "REFERENCE_ROWS",
    "RESULT_TYPES",
    "SIDE_VECTORS",
    "Interrupted",
    "ModelStage",
    "ScoringOptions",
    "ServeStage",
    "TokenizeStage",
    "calibrate",
    "expand_inputs",
    "filter_pairs",
    "filter_solutions",
    "output_labels",
    "plan_chunks",
    "quiet_ray_data",
    "read_chunk",
    "read_scores",
    "resolve_model",
    "result_type",
    "score_corpus",
    "score_dataset",
    "served_model",
    "where_of",
    "write_shard",
]
