"""`python -m cluster bench --lengths` and `bench --workload grpo`: the RL shapes, in-process, every
row against baselines measured in the same run (never a timed test).

--lengths: the model card's one-at-a-time loop against ours at 256 to 8k tokens per item, and a
  padded batch with an attention mask (what ours did before: the mask sends attention to a path
  that materializes every score matrix), so the fix is measured where it matters.
--workload grpo: groups of n responses per prompt (n = 8 and 16), in two shapes:
  chat       a long shared context (system prompt + earlier turns), the prompt ~2x the response;
  reasoning  a short prompt, a long response.
  Rows: the card's loop, fixed padded batches of 16 in arrival order (HF's own forward with its
  attention mask, as a reward server without planning runs), ours with prefix sharing off, ours.
  Columns: tokens computed / useful (padding counted, a shared prefix once), useful tokens/s, the
  median seconds, and max |score - card|.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cluster.bench.inprocess import MODEL_SHAPE, pseudo_words, score_one_at_a_time
from cluster.core.results import SCORE_TOLERANCE
from cluster.engine.runner import CPU_PASS_TOKENS

LENGTHS = (256, 1024, 2048, 4096, 8192)
TOKENS_PER_LENGTH = 16384  # items per length: this many tokens, at least 2 items
GROUP_SIZES = (8, 16)
FIXED_BATCH_SIZE = 16
# (prompt tokens, response median tokens) per shape; responses vary lognormally around the median
SHAPES = {"chat": (1000, 500), "reasoning": (150, 1500)}
RESPONSE_SIGMA = 0.35
MAX_LENGTH = 8192
LENGTHS_BATCH_TOKENS = 16384  # --lengths: the ModelSpec default, as a served model has it


@dataclass(frozen=True)
class Row:
    name: str
    seconds: float
    useful: int
    computed: int
    worst: float  # max |score - card|

    @property
    def tokens_per_s(self) -> float:
        return self.useful / self.seconds


def run_lengths(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    rm = build(args.seed, texts=None)
    vocab = rm.runner.model.config.vocab_size
    print(header(rm, args, "item lengths: each row scores the same token ids", LENGTHS_BATCH_TOKENS))
    print("before: a padded batch with an attention mask, passes of max_batch_tokens (ours before issue 13)")
    print(
        f"{'tokens/item':>11}{'items':>7}{'card tok/s':>12}{'before tok/s':>14}{'ours tok/s':>12}"
        f"{'ours/card':>11}{'before/card':>13}{'max |diff|':>12}"
    )
    worst_all, slowest = 0.0, math.inf
    for length in LENGTHS:
        items = max(2, TOKENS_PER_LENGTH // length)
        seqs = [[rng.randrange(3, vocab) for _ in range(int(length * rng.uniform(0.9, 1.0)))] for _ in range(items)]
        useful = sum(map(len, seqs))
        seconds, scores = time_lengths(rm, seqs, max(LENGTHS_BATCH_TOKENS, length), args.repeats)
        worst = max(abs(a - b) for a, b in zip(scores["ours"], scores["card"]))
        worst_all = max(worst_all, worst)
        ratio = seconds["card"] / seconds["ours"]
        slowest = min(slowest, ratio)
        print(
            f"{length:>11,}{items:>7}{useful / seconds['card']:>12,.0f}{useful / seconds['masked']:>14,.0f}"
            f"{useful / seconds['ours']:>12,.0f}{ratio:>10.2f}x{seconds['card'] / seconds['masked']:>12.2f}x"
            f"{worst:>12.1e}"
        )
    print(f"slowest ours / card: {slowest:.2f}x")
    return verdict(worst_all)


def time_lengths(rm, seqs: list[list[int]], budget: int, repeats: int):
    ours = runner_with(rm, max_batch_tokens=budget)
    masked = before_runner(rm, budget)
    methods = {
        "card": lambda: score_one_at_a_time(rm.runner.model, seqs),
        "masked": lambda: [s for s, _ in masked.run("score", seqs).outputs],
        "ours": lambda: [s for s, _ in ours.run("score", seqs).outputs],
    }
    return time_methods(methods, repeats, warm=lambda: score_one_at_a_time(rm.runner.model, seqs[:1]))


def run_grpo(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    lexicon = pseudo_words(rng, 3000)
    weights = [1 / rank for rank in range(1, len(lexicon) + 1)]
    workloads = {
        (shape, n): grpo_conversations(rng, lexicon, weights, shape, n, args.prompts)
        for shape in SHAPES
        for n in GROUP_SIZES
    }
    texts = [m["content"] for convs in workloads.values() for c in convs for m in c]
    rm = build(args.seed, texts=texts)
    print(header(rm, args, f"GRPO groups: {args.prompts} prompts x n responses, arrival order = group order"))
    worst_all = 0.0
    for (shape, n), convs in workloads.items():
        seqs = [e.ids for e in rm.encoder.encode_inputs(convs)]
        worst_all = max(worst_all, grpo_table(rm, shape, n, seqs, args))
    return verdict(worst_all)


def grpo_table(rm, shape: str, n: int, seqs: list[list[int]], args: argparse.Namespace) -> float:
    useful = sum(map(len, seqs))
    shared = runner_with(rm, max_batch_tokens=args.max_batch_tokens)
    unshared = runner_with(rm, max_batch_tokens=args.max_batch_tokens, share_prefixes=False)
    fixed = [list(range(i, min(i + FIXED_BATCH_SIZE, len(seqs)))) for i in range(0, len(seqs), FIXED_BATCH_SIZE)]
    computed = {"card": useful, "fixed": sum(max(len(seqs[i]) for i in b) * len(b) for b in fixed)}

    def ours(runner, key):
        def go():
            ran = runner.run("score", seqs)
            computed[key] = ran.computed
            return [s for s, _ in ran.outputs]

        return go

    methods = {
        "card": lambda: score_one_at_a_time(rm.runner.model, seqs),
        "fixed": lambda: hf_padded_batches(rm, seqs, fixed),
        "unshared": ours(unshared, "unshared"),
        "shared": ours(shared, "shared"),
    }
    seconds, scores = time_methods(methods, args.repeats, warm=lambda: score_one_at_a_time(rm.runner.model, seqs[:1]))
    names = {
        "card": "one-at-a-time (model card)",
        "fixed": f"fixed padded batch {FIXED_BATCH_SIZE} (HF, mask)",
        "unshared": "ours, no prefix sharing",
        "shared": "ours (shared prefixes)",
    }
    rows = [
        Row(names[k], seconds[k], useful, computed[k], max(abs(a - b) for a, b in zip(scores[k], scores["card"])))
        for k in methods
    ]
    prompt, response = SHAPES[shape]
    lengths = sorted(map(len, seqs))
    print(
        f"\n{shape} (prompt ~{prompt}, response median ~{response} tokens), n = {n}: {len(seqs)} items, "
        f"tokens median {lengths[len(lengths) // 2]}, max {lengths[-1]}"
    )
    print(f"{'method':<36}{'computed/useful':>16}{'tokens/s':>10}{'median s':>10}{'max |diff|':>12}")
    for r in rows:
        print(f"{r.name:<36}{r.computed / r.useful:>16.2f}{r.tokens_per_s:>10,.0f}{r.seconds:>10.2f}{r.worst:>12.1e}")
    card, _, no_share, ours_row = rows
    print(
        f"ours / one-at-a-time: {ours_row.tokens_per_s / card.tokens_per_s:.2f}x    "
        f"ours / no sharing: {ours_row.tokens_per_s / no_share.tokens_per_s:.2f}x    "
        f"no sharing / one-at-a-time: {no_share.tokens_per_s / card.tokens_per_s:.2f}x"
    )
    return max(r.worst for r in rows)


# ---------------------------------------------------------------- workloads


def grpo_conversations(
    rng: random.Random, lexicon: list[str], weights: list[float], shape: str, n: int, prompts: int
) -> list[list[dict[str, str]]]:
    from cluster.bench.inprocess import prose

    prompt_tokens, response_tokens = SHAPES[shape]
    convs = []
    for _ in range(prompts):
        if shape == "chat":  # system prompt, an earlier exchange, the question: ~prompt_tokens in all
            words = [round(prompt_tokens * share) for share in (0.25, 0.2, 0.35, 0.2)]
            turns = [
                {"role": "system", "content": prose(rng, lexicon, weights, words[0])},
                {"role": "user", "content": prose(rng, lexicon, weights, words[1])},
                {"role": "assistant", "content": prose(rng, lexicon, weights, words[2])},
                {"role": "user", "content": prose(rng, lexicon, weights, words[3])},
            ]
        else:
            turns = [{"role": "user", "content": prose(rng, lexicon, weights, prompt_tokens)}]
        for _ in range(n):
            words = max(8, round(rng.lognormvariate(math.log(response_tokens), RESPONSE_SIGMA)))
            convs.append(turns + [{"role": "assistant", "content": prose(rng, lexicon, weights, words)}])
    return convs


# ---------------------------------------------------------------- model, methods, timing


def build(seed: int, texts: list[str] | None):
    from cluster.core.config import ModelSpec
    from cluster.engine.loading import load_model
    from cluster.tiny import build_tiny_model

    if texts is None:
        rng = random.Random(seed)
        texts = [" ".join(pseudo_words(rng, 400))]
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as tmp:
        path = build_tiny_model(
            Path(tmp), kind="reward", arch="llama", corpus=texts, seed=seed, max_positions=MAX_LENGTH, **MODEL_SHAPE
        )
        spec = ModelSpec(
            name="bench-rm",
            path=str(path),
            kind="reward",
            dtype="float32",
            max_length=MAX_LENGTH,
            max_batch_tokens=MAX_LENGTH,
        )
        return load_model(spec)


def runner_with(rm, **changes):
    """A runner over the same weights with other planning settings (a shallow copy)."""
    import copy

    runner = copy.copy(rm.runner)
    for key, value in changes.items():
        setattr(runner, key, value)
    return runner


def before_runner(rm, budget: int):
    """Ours as it was before issue 13: a padded batch with an attention mask (left padding costs the
    same as the right padding it used), passes of the whole max_batch_tokens on a CPU too."""
    runner = runner_with(rm, max_batch_tokens=budget, padding_side="left", share_prefixes=False)
    runner.__class__ = type("Before", (type(runner),), {"pass_tokens": property(lambda r: r.max_batch_tokens)})
    return runner


def hf_padded_batches(rm, seqs: list[list[int]], batches: list[list[int]]) -> list[float]:
    """A reward server with no planning: HF's own forward on right-padded batches with the mask."""
    model, pad = rm.runner.model, rm.runner.model.config.pad_token_id
    out = []
    with torch.inference_mode():
        for batch in batches:
            width = max(len(seqs[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(batch):
                ids[row, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[row, : len(seqs[i])] = 1
            out += model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    return out


def time_methods(
    methods: dict[str, Callable[[], list[float]]], repeats: int, warm: Callable[[], object]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds per method; the methods take turns within each repeat, so a slow spell of the
    machine falls on all of them."""
    warm()
    times: dict[str, list[float]] = {k: [] for k in methods}
    scores: dict[str, list[float]] = {}
    for _ in range(repeats):
        for key, method in methods.items():
            start = time.perf_counter()
            scores[key] = method()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(t) for k, t in times.items()}, scores


def header(rm, args: argparse.Namespace, what: str, budget: int | None = None) -> str:
    params = sum(p.numel() for p in rm.runner.model.parameters())
    return (
        f"{what}; seed {args.seed}\n"
        f"model: Llama reward model, {params / 1e6:.2f}M parameters, fp32 on {rm.runner.device}, "
        f"{rm.runner.model.config._attn_implementation} attention; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; max_batch_tokens {budget or args.max_batch_tokens} "
        f"(a pass holds at most {CPU_PASS_TOKENS} on a CPU); "
        f"median of {args.repeats} repeats"
    )


def verdict(worst: float) -> int:
    ok = worst <= SCORE_TOLERANCE
    print(f"scores: max |ours - model card| = {worst:.2e} (limit {SCORE_TOLERANCE:.0e}): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1
