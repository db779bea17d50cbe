"""The in-process benchmarks' baselines, kept out of the runners: what a reward server without
planning runs, and the critic card's reading one prompt at a time. (The Serve app's baselines:
cluster/bench/serve_baselines.py.)"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cluster.kinds import Op


def score_batch(runner, seqs: Sequence[Sequence[int]], op: str = Op.SCORE) -> list[float]:
    """A runner's scalar outputs from one forward pass over exactly these sequences, in this order,
    with no planning (the runner's own padding and read position): the fixed-batch rows of `bench`,
    `bench-pipeline` and `gpu-check`. A reward runner's rewards (op "score"), or a critic's P(A)
    (op "verdicts": after its verdict prefix, as its `run` appends it)."""
    if op == Op.VERDICTS:
        seqs = [[*s, *runner.verdict.prefix] for s in seqs]
    with torch.inference_mode():
        return [scalar(out) for out in runner.ops()[op].forward(list(seqs))]


def scalar(output) -> float:
    """A runner output's scalar: a reward runner's (score, every label's value), a critic's P(A)."""
    return output[0] if isinstance(output, tuple) else output


def verdicts_one_at_a_time(model, seqs: Sequence[Sequence[int]], verdict) -> list[float]:
    """The critic card's verdict, read one judge prompt per forward pass of the HF model: the
    next-token logits after prompt + verdict prefix (`[[`), P(A) = softmax over {A, B}. The logits of
    the last position only (`logits_to_keep=1`), as the card's `generate` computes them."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for ids in seqs:
            ids = torch.tensor([[*ids, *verdict.prefix]], device=device)
            logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
            out.append(torch.sigmoid((logits[verdict.token_a] - logits[verdict.token_b]).double()).item())
    return out


def generate_one_at_a_time(model, prompts: Sequence[Sequence[int]], new_tokens: int, *, pad_id: int) -> list[list[int]]:
    """The card's greedy generation: `model.generate` on one prompt at a time, `new_tokens` new
    tokens each (its end token suppressed until then, so every prompt writes as many)."""
    device = next(model.parameters()).device
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=new_tokens)
    out = []
    with torch.inference_mode():
        for ids in prompts:
            prompt = torch.tensor([list(ids)], device=device)
            seq = model.generate(
                prompt, attention_mask=torch.ones_like(prompt), min_new_tokens=new_tokens, pad_token_id=pad_id, **greedy
            )
            out.append(seq[0, len(ids) :].tolist())
    return out
