"""`python -m cluster bench`: in-process scoring throughput (no Ray), ours against two baselines.

The three methods score the same token ids in the same run, so tokenization (timed on its own) is
left out and the ratios measure batching alone:
  1. the model card's loop: one conversation per forward pass of the HF model, no padding;
  2. fixed batches of 16 in arrival order, right-padded to each batch's longest item
     (cluster/bench/baselines.py: score_batch);
  3. ours: `RewardRunner.run` (the runners' public entry point), length-sorted batches under a
     padded-token budget; its padding efficiency is read from the plan the runner reports it ran.
The same run checks that ours equals the model card's scores (fp32, abs diff <= 1e-4).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.bench.baselines import score_batch
from cluster.core.results import SCORE_TOLERANCE

DEFAULT_DATA = Path("../shared/data/rm-bench")
FIXED_BATCH_SIZE = 16
MAX_LENGTH = 2048
WARMUP_ITEMS = 8
# A small Llama-family reward model: big enough that matmuls, not Python, dominate a forward pass.
MODEL_SHAPE = dict(vocab_size=8000, hidden=256, layers=4, heads=8, kv_heads=4, intermediate=688)

# Generated corpus: RM-Bench-like tokenized lengths (median ~350, p90 ~650) from a lognormal.
GENERATED_MEDIAN_TOKENS = 350
GENERATED_P90_TOKENS = 650
Z_90 = 1.2816  # standard normal 90th percentile
TEMPLATE_TOKENS = 11  # BOS + two Llama-3 headers and end-of-turn markers
TOKENS_PER_WORD = 1.07  # pseudo-words are single BPE tokens; sentence punctuation adds the rest
PROMPT_SHARE = 0.2  # of a conversation's words

Conversation = list[dict[str, str]]


@dataclass(frozen=True)
class Corpus:
    source: str  # for the header line
    pool_size: int  # (prompt, response) pairs the sample was drawn from
    conversations: list[Conversation]  # the sample, in arrival order
    texts: list[str]  # what the tokenizer's BPE is trained on


@dataclass(frozen=True)
class Method:
    name: str
    score: Callable[[], list[float]]
    batches: list[list[int]]  # item indices per forward pass, for padding efficiency


@dataclass(frozen=True)
class Result:
    name: str
    seconds: float  # median wall time over repeats
    useful_tokens: int
    padding_efficiency: float

    @property
    def tokens_per_s(self) -> float:
        return self.useful_tokens / self.seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"RM-Bench folder (default: {DEFAULT_DATA} if it exists, else a generated corpus)",
    )
    parser.add_argument(
        "--items", type=positive_int, default=384, help="(prompt, response) pairs to score (default 384)"
    )
    # 4096: padding efficiency >= 0.95 on the default sample (8192 gives 0.93) at the same CPU
    # throughput; see docs/benchmarks.md
    parser.add_argument(
        "--max-batch-tokens",
        type=int,
        default=4096,
        help="padded tokens per forward pass for ours (default 4096; at least 2048)",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed runs per method; the median is reported (default 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sample, generated corpus and model weights")
    parser.add_argument(
        "--workload",
        choices=["rm-bench", "grpo"],
        default="rm-bench",
        help="rm-bench: a preference corpus (default); grpo: n responses per prompt, chat and "
        "reasoning shapes, with and without prefix sharing (cluster/bench/rl.py)",
    )
    parser.add_argument("--prompts", type=positive_int, default=4, help="grpo: prompts per (shape, n) (default 4)")
    parser.add_argument(
        "--lengths", action="store_true", help="the card loop vs ours at 256, 1k, 2k, 4k and 8k tokens per item"
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    corpus = load_corpus(args.data, args.items, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-rm-") as tmp:
        rm = build_model(Path(tmp), corpus.texts, args.max_batch_tokens, args.seed)
    tokenize_seconds, seqs = time_tokenization(rm, corpus.conversations, args.repeats)
    lengths = [len(s) for s in seqs]
    methods = make_methods(rm, seqs)
    model_card, _, ours = methods
    warm_up(rm, seqs[:WARMUP_ITEMS])
    seconds, scores = time_methods(methods, args.repeats)
    results = [
        Result(m.name, seconds[m.name], sum(lengths), padding_efficiency_of(m.batches, lengths)) for m in methods
    ]
    print(header(corpus, lengths, rm, args))
    print(table(results))
    print(f"tokenization (excluded above): {tokenize_seconds:.2f} s, {sum(lengths) / tokenize_seconds:,.0f} tokens/s")
    return check_scores(scores[ours.name], scores[model_card.name])


# ---------------------------------------------------------------- corpus


def load_corpus(data: Path | None, items: int, seed: int) -> Corpus:
    if data is None:
        data = DEFAULT_DATA if DEFAULT_DATA.is_dir() else None
    elif not data.is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder")
    if data is None:
        return generate_corpus(items, seed)
    return load_rm_bench(data, items, seed)


def load_rm_bench(folder: Path, items: int, seed: int) -> Corpus:
    """Every (prompt, response) pair from chosen + rejected, sampled with the seed."""
    records = [r for path in sorted(folder.glob("*.json")) for r in json.loads(path.read_text("utf-8"))]
    pairs = [(r["prompt"], response) for r in records for response in [*r["chosen"], *r["rejected"]]]
    if not pairs:
        raise FileNotFoundError(f"{folder}: no RM-Bench records (*.json)")
    sample = random.Random(seed).sample(pairs, min(items, len(pairs)))
    # the tokenizer learns from the whole benchmark, as a real one would not have seen only our sample
    texts = sorted({text for prompt, response in pairs for text in (prompt, response)})
    return Corpus(f"RM-Bench ({folder})", len(pairs), [conversation(p, r) for p, r in sample], texts)


def generate_corpus(items: int, seed: int) -> Corpus:
    """Pseudo-word conversations with lognormal lengths, for machines without ../shared/data."""
    rng = random.Random(seed)
    lexicon = pseudo_words(rng, 3000)
    weights = [1 / rank for rank in range(1, len(lexicon) + 1)]  # Zipf, as in natural text
    sigma = math.log(GENERATED_P90_TOKENS / GENERATED_MEDIAN_TOKENS) / Z_90
    pairs = []
    for _ in range(items):
        tokens = min(rng.lognormvariate(math.log(GENERATED_MEDIAN_TOKENS), sigma), MAX_LENGTH)
        words = max(8, round((tokens - TEMPLATE_TOKENS) / TOKENS_PER_WORD))
        prompt_words = max(3, round(words * PROMPT_SHARE))
        pairs.append((prose(rng, lexicon, weights, prompt_words), prose(rng, lexicon, weights, words - prompt_words)))
    texts = [text for pair in pairs for text in pair]
    return Corpus("generated (lognormal lengths)", items, [conversation(p, r) for p, r in pairs], texts)


def pseudo_words(rng: random.Random, count: int) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choices(syllables, k=rng.randint(1, 3))))
    lexicon = sorted(words)  # a set's order changes with the hash seed; the corpus must not
    rng.shuffle(lexicon)  # so that Zipf ranks do not follow the alphabet
    return lexicon


def prose(rng: random.Random, lexicon: list[str], weights: list[float], words: int) -> str:
    chosen = rng.choices(lexicon, weights, k=words)
    sentences = []
    while chosen:
        length = rng.randint(6, 18)
        sentence, chosen = chosen[:length], chosen[length:]
        sentences.append(" ".join(sentence).capitalize() + ".")
    return " ".join(sentences)


def conversation(prompt: str, response: str) -> Conversation:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


# ---------------------------------------------------------------- model and tokens


def build_model(tmp: Path, texts: list[str], max_batch_tokens: int, seed: int):
    from cluster.core.config import ModelSpec
    from cluster.engine.loading import load_model
    from cluster.tiny import build_tiny_model

    path = build_tiny_model(tmp, kind="reward", arch="llama", corpus=texts, seed=seed, **MODEL_SHAPE)
    # fp32 everywhere (also on a GPU, where "auto" means bf16): the score check needs it
    spec = ModelSpec(
        name="bench-rm",
        path=str(path),
        kind="reward",
        dtype="float32",
        max_length=MAX_LENGTH,
        max_batch_tokens=max_batch_tokens,
    )
    return load_model(spec)  # weights are in memory now; the folder can go


def time_tokenization(rm, conversations: list[Conversation], repeats: int) -> tuple[float, list[list[int]]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoded = rm.encoder.encode_inputs(conversations)
        times.append(time.perf_counter() - start)
    return statistics.median(times), [e.ids for e in encoded]


# ---------------------------------------------------------------- the three methods


def make_methods(rm, seqs: list[list[int]]) -> list[Method]:
    runner = rm.runner
    fixed = fixed_batches(len(seqs), FIXED_BATCH_SIZE)
    ours_plan: list[list[int]] = []  # the plan the runner reports it ran (filled by each run)

    def ours() -> list[float]:
        ran = runner.run("score", seqs)
        ours_plan[:] = ran.batches
        return [score for score, _ in ran.outputs]

    return [
        Method(
            "one-at-a-time (model card)",
            lambda: score_one_at_a_time(runner.model, seqs),
            [[i] for i in range(len(seqs))],
        ),
        Method(
            f"fixed batch {FIXED_BATCH_SIZE}, arrival order", lambda: score_fixed_batches(runner, seqs, fixed), fixed
        ),
        Method("ours (token budget, sorted)", ours, ours_plan),
    ]


def fixed_batches(count: int, size: int) -> list[list[int]]:
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def score_one_at_a_time(model, seqs: Sequence[Sequence[int]]) -> list[float]:
    """The model card's computation: one conversation per forward pass, raw logit logits[0][0]."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([ids], device=device)).logits[0][0].item() for ids in seqs]


def score_fixed_batches(runner, seqs: Sequence[Sequence[int]], batches: list[list[int]]) -> list[float]:
    """Our forward pass (same padding and read position) on batches taken as they arrive."""
    return [score for batch in batches for score in score_batch(runner, [seqs[i] for i in batch])]


def warm_up(rm, seqs: list[list[int]]) -> None:
    """One short pass of each method, so first-call costs (allocations, kernel selection) stay out."""
    score_one_at_a_time(rm.runner.model, seqs)
    score_fixed_batches(rm.runner, seqs, fixed_batches(len(seqs), FIXED_BATCH_SIZE))
    rm.runner.score_ids(seqs)


def time_methods(methods: list[Method], repeats: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds per method and the last run's scores. The methods take turns within each
    repeat, so a slow spell of the machine falls on all of them rather than on one."""
    times: dict[str, list[float]] = {m.name: [] for m in methods}
    scores: dict[str, list[float]] = {}
    for _ in range(repeats):
        for method in methods:
            start = time.perf_counter()
            scores[method.name] = method.score()
            times[method.name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, scores


def padding_efficiency_of(batches: list[list[int]], lengths: list[int]) -> float:
    from cluster.core.batching import padding_efficiency

    return padding_efficiency([[lengths[i] for i in batch] for batch in batches])


# ---------------------------------------------------------------- report


def check_scores(ours: list[float], reference: list[float]) -> int:
    worst = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    verdict = "ok" if worst <= SCORE_TOLERANCE else "FAILED"
    print(f"scores: max |ours - model card| = {worst:.2e} (limit {SCORE_TOLERANCE:.0e}): {verdict}")
    return 0 if worst <= SCORE_TOLERANCE else 1


def percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[round(q * (len(sorted_values) - 1))]


def header(corpus: Corpus, lengths: list[int], rm, args: argparse.Namespace) -> str:
    ordered = sorted(lengths)
    params = sum(p.numel() for p in rm.runner.model.parameters())
    return (
        f"corpus: {corpus.source}, {len(lengths)} of {corpus.pool_size} (prompt, response) pairs, seed {args.seed}; "
        f"tokens median {percentile(ordered, 0.5)}, p90 {percentile(ordered, 0.9)}, max {ordered[-1]}\n"
        f"model: Llama reward model, {params / 1e6:.2f}M parameters, fp32 on {rm.runner.device}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"max_batch_tokens {rm.spec.max_batch_tokens}; median of {args.repeats} repeats\n"
    )


def table(results: list[Result]) -> str:
    one_at_a_time, fixed, ours = results
    lines = [f"{'method':<32}{'tokens/s':>10}{'pad-eff':>10}{'median s':>10}"]
    lines += [f"{r.name:<32}{r.tokens_per_s:>10,.0f}{r.padding_efficiency:>10.3f}{r.seconds:>10.2f}" for r in results]
    lines.append(
        f"ours / one-at-a-time: {ours.tokens_per_s / one_at_a_time.tokens_per_s:.2f}x    "
        f"ours / fixed-{FIXED_BATCH_SIZE}: {ours.tokens_per_s / fixed.tokens_per_s:.2f}x"
    )
    return "\n".join(lines)
