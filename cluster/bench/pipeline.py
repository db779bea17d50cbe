"""`python -m cluster bench-pipeline`: the Ray Data pipeline's throughput on RM-Bench pairs, with
one and two model actors, against a baseline in the same run: fixed batches of 16 sequences in
file order, padded to each batch's longest, one actor (what a plain `map_batches(batch_size=16)`
scorer does). Every configuration runs the whole pipeline (read, tokenize, score, write shards)
on the same corpus and model; wall time is `score_corpus`'s execution time, actor start-up
included, median over repeats. The run also checks that ours and the baseline give the same scores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
from pathlib import Path

from cluster.bench.baselines import score_batch
from cluster.bench.inprocess import (
    DEFAULT_DATA,
    MAX_LENGTH,
    MODEL_SHAPE,
    SCORE_TOLERANCE,
    generate_corpus,
    positive_int,
)
from cluster.data.pipeline import ModelStage

FIXED_BATCH = 16


class FixedBatchStage(ModelStage):
    """The baseline: 16 sequences per forward pass in arrival order, no sorting, no token budget."""

    def forward(self, seqs: list[list[int]]) -> list[tuple[float, None]]:
        runner = self.model.runner  # (scalar, no label vector) per sequence, as ModelStage gives
        batches = (seqs[i : i + FIXED_BATCH] for i in range(0, len(seqs), FIXED_BATCH))
        return [(s, None) for batch in batches for s in score_batch(runner, batch)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"RM-Bench folder (default: {DEFAULT_DATA} if it exists, else a generated corpus)",
    )
    parser.add_argument("--rows", type=positive_int, default=384, help="preference pairs to score (default 384)")
    parser.add_argument("--batch-rows", type=positive_int, default=64, help="rows per Ray batch (default 64)")
    parser.add_argument("--max-batch-tokens", type=int, default=4096, help="ours: padded tokens per forward pass")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per configuration; median reported")
    parser.add_argument("--seed", type=int, default=0)


def load_pairs(data: Path | None, rows: int, seed: int) -> tuple[str, list[dict]]:
    """RM-Bench (prompt, chosen_i, rejected_i) pairs sampled with a seed, kept in file order."""
    folder = data if data is not None else (DEFAULT_DATA if DEFAULT_DATA.is_dir() else None)
    if folder is None:
        convs = generate_corpus(rows * 2, seed).conversations
        pairs = [
            {"prompt": a[0]["content"], "chosen": a[1]["content"], "rejected": b[1]["content"], "subset": "gen"}
            for a, b in zip(convs[::2], convs[1::2])
        ]
        return "generated (RM-Bench-like lengths)", pairs
    pool = []
    for file in sorted(folder.glob("*.json")):
        for rec in json.loads(file.read_text()):
            for i, (c, r) in enumerate(zip(rec["chosen"], rec["rejected"])):
                pool.append(
                    {
                        "id": f"{rec['id']}-{i}",
                        "subset": rec["subset"],
                        "prompt": rec["prompt"],
                        "chosen": c,
                        "rejected": r,
                    }
                )
    keep = sorted(random.Random(seed).sample(range(len(pool)), min(rows, len(pool))))
    return f"RM-Bench ({folder}), {len(pool)} pairs", [pool[i] for i in keep]


def run(args: argparse.Namespace) -> int:
    import ray

    from cluster.core.config import ModelSpec
    from cluster.data import pipeline
    from cluster.tiny import build_tiny_model

    source, pairs = load_pairs(args.data, args.rows, args.seed)
    cores = os.cpu_count() or 2
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local", num_cpus=max(4, 2 * cores), include_dashboard=False, log_to_driver=False, logging_level="ERROR"
    )
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        texts = [p["prompt"] + " " + p["chosen"] for p in pairs[:200]]
        path = build_tiny_model(tmp / "rm", kind="reward", arch="llama", corpus=texts, seed=args.seed, **MODEL_SHAPE)
        spec = ModelSpec(
            name="bench-rm",
            path=str(path),
            kind="reward",
            dtype="float32",
            device="cpu",
            max_length=MAX_LENGTH,
            max_batch_tokens=args.max_batch_tokens,
        )
        corpus = tmp / "pairs.jsonl"
        corpus.write_text("".join(json.dumps(p) + "\n" for p in pairs))
        base = {
            "progress": False,
            "batch_rows": args.batch_rows,
            "rows_per_shard": args.batch_rows,
            "num_gpus": 0,
            "tokenizer_num_cpus": 0.5,
        }
        configs = [
            ("baseline: fixed 16, file order, 1 actor", FixedBatchStage, {"num_cpus": cores}),
            ("ours: sorted token budget, 1 actor", ModelStage, {"num_cpus": cores}),
            (
                "ours: sorted token budget, 2 actors",
                ModelStage,
                {"num_cpus": max(1, cores // 2), "min_actors": 2, "max_actors": 2},
            ),
        ]
        seconds: dict[str, list[float]] = {name: [] for name, _, _ in configs}
        summaries: dict[str, dict] = {}
        for rep in range(args.repeats):
            for k, (name, stage, extra) in enumerate(configs):
                out = tmp / f"out-{k}-{rep}"
                opts = pipeline.ScoringOptions.parse({**base, **extra})
                summary = pipeline._score_corpus(corpus, out, spec, False, opts, stage)
                seconds[name].append(summary["seconds"])
                summaries[name] = {"summary": summary, "table": pipeline.read_scores(out)}
        tokens = int(summaries[configs[0][0]]["table"]["num_tokens"].to_numpy().sum())
        print(
            f"pipeline benchmark: {source}; {len(pairs)} pairs ({2 * len(pairs)} sequences, {tokens:,} tokens); "
            f"{MODEL_SHAPE['layers']}-layer Llama RM (hidden {MODEL_SHAPE['hidden']}), fp32, {cores} CPU cores; "
            f"batch_rows={args.batch_rows}, max_batch_tokens={args.max_batch_tokens}; median of {args.repeats}"
        )
        print(f"{'configuration':<42}{'rows/s':>9}{'tokens/s':>11}{'median s':>10}")
        rate = {}
        for name, _, _ in configs:
            med = statistics.median(seconds[name])
            rate[name] = tokens / med
            print(f"{name:<42}{len(pairs) / med:>9.1f}{tokens / med:>11,.0f}{med:>10.2f}")
        base_name, one, two = (c[0] for c in configs)
        print(
            f"ours 1 actor / baseline: {rate[one] / rate[base_name]:.2f}x   "
            f"ours 2 actors / baseline: {rate[two] / rate[base_name]:.2f}x   "
            f"2 actors / 1 actor: {rate[two] / rate[one]:.2f}x"
        )
        worst = max(
            abs(a - b)
            for col in ("chosen_score", "rejected_score")
            for a, b in zip(summaries[one]["table"][col].to_pylist(), summaries[base_name]["table"][col].to_pylist())
        )
        ok = worst <= SCORE_TOLERANCE
        verdict = "ok" if ok else "MISMATCH"
        print(f"scores: max |ours - baseline| = {worst:.2e} (limit {SCORE_TOLERANCE:.0e}): {verdict}")
    ray.shutdown()
    return 0 if ok else 1
