"""Critic runner and CriticModel: pairwise verdicts from an LLM judge (Skywork-Critic format).

Fast path (mode="logits"): one forward pass over judge prompt + the verdict strings' shared prefix
(`[[`), reading the next-token logits of the two tokens where the verdicts differ (`A`, `B`):
prob_a = softmax over {A, B} = sigmoid(logit_A - logit_B). That is exactly the comparison greedy
generation makes at that step, without generating.
Slow path (mode="generate"): greedy generation, parse `[[A]]`/`[[B]]`; an output with no verdict is
reported as such (winner None), never guessed.
debias=True runs both orders and averages prob_a; the winner comes from the average.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from cluster.errors import InvalidInput
from cluster.runner import ForwardRunner, LoadedModel
from cluster.tokenization import Encoded, VerdictTokens

MODES = ("logits", "generate")


@dataclass(frozen=True)
class Verdict:
    winner: str | None  # "A" | "B"; None only when a generated answer holds no verdict
    prob_a: float | None  # P(A better); None when generate mode produced no verdict to read it from
    truncated: bool = False
    text: str | None = None  # the generated answer (mode="generate")
    text_swapped: str | None = None  # the answer with A and B swapped (mode="generate", debias)


@dataclass(frozen=True)
class Generation:
    text: str
    prob_a: float | None  # read at the step after the verdict prefix, if the output has one


def winner_of(prob_a: float) -> str:
    return "A" if prob_a >= 0.5 else "B"


class CriticRunner(ForwardRunner):
    def __init__(self, model, tokenizer, verdict: VerdictTokens, verdicts: tuple[str, str], eos_ids,
                 **kw):
        super().__init__(model, **kw)
        self.tokenizer = tokenizer
        self.verdict = verdict
        self.verdict_pattern = re.compile("|".join(re.escape(v) for v in verdicts))
        self.verdicts = verdicts
        self.eos_ids = eos_ids

    # -- fast path

    def verdict_probs(self, seqs: Sequence[Sequence[int]]) -> list[float]:
        """P(A) vs P(B) at the step after the verdict prefix, for each judge prompt."""
        prefix = self.verdict.prefix
        return self._run([list(s) + prefix for s in seqs], self._verdict_forward)

    def _verdict_forward(self, seqs: list[Sequence[int]]) -> list[float]:
        batch = self._pad(seqs)
        last = self._last_logits(batch)
        # float64 sigmoid: P(A) keeps its log-odds recoverable (the pipeline's margins) up to ~36
        return torch.sigmoid((last[:, self.verdict.token_a] - last[:, self.verdict.token_b]).double()).tolist()

    def _last_logits(self, batch) -> torch.Tensor:
        # left padding: every row's last real token is the last column, so logits_to_keep=1 runs
        # the model's own head (Gemma-2's final soft-capping included) on one position per row
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         position_ids=batch.position_ids, use_cache=False, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    # -- slow path

    def generate(self, seqs: Sequence[Sequence[int]], max_new_tokens: int) -> list[Generation]:
        return self._run(list(seqs), lambda b: self._generate(b, max_new_tokens),
                         cost=lambda s: len(s) + max_new_tokens)

    def _generate(self, seqs: list[Sequence[int]], max_new_tokens: int) -> list[Generation]:
        batch = self._pad(seqs)
        out = self.model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=False,
            max_new_tokens=max_new_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
            output_logits=True, return_dict_in_generate=True, temperature=None, top_p=None, top_k=None,
        )
        width = batch.input_ids.shape[1]
        results = []
        for row in range(len(seqs)):
            new = out.sequences[row, width:].tolist()
            steps = [logits[row] for logits in out.logits]
            results.append(Generation(self._decode(new), self._prob_at_verdict(new, steps)))
        return results

    def _decode(self, new_ids: list[int]) -> str:
        # cut at the first end token; later positions are padding for rows that finished early
        for j, tok in enumerate(new_ids):
            if tok in self.eos_ids:
                new_ids = new_ids[:j]
                break
        return self.tokenizer.decode(new_ids, skip_special_tokens=True)

    def _prob_at_verdict(self, new_ids: list[int], step_logits: list[torch.Tensor]) -> float | None:
        prefix, n = self.verdict.prefix, len(self.verdict.prefix)
        for t in range(len(new_ids) - n):
            if new_ids[t:t + n] == prefix and new_ids[t + n] in (self.verdict.token_a, self.verdict.token_b):
                step = step_logits[t + n].float()
                return torch.sigmoid(step[self.verdict.token_a] - step[self.verdict.token_b]).item()
        return None

    def parse(self, text: str) -> str | None:
        match = self.verdict_pattern.search(text)
        if match is None:
            return None
        return "A" if match.group(0) == self.verdicts[0] else "B"


class CriticModel(LoadedModel):
    """A loaded critic: `judge(items, mode, debias)` -> one Verdict per item, in input order."""

    kind = "critic"
    runner: CriticRunner

    def judge(self, items: Any, mode: str = "logits", debias: bool = False) -> list[Verdict]:
        if mode not in MODES:
            raise InvalidInput(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
        forward = self.encoder.encode_judge_items(items)
        swapped = self.encoder.encode_judge_items(items, swap=True) if debias else None
        return self.judge_encoded(forward, swapped, mode)

    def judge_encoded(self, forward: list[Encoded], swapped: list[Encoded] | None, mode: str) -> list[Verdict]:
        """Verdicts for encoded judge prompts; `swapped` (A and B exchanged) turns on debiasing."""
        both = forward + (swapped or [])
        ids = [e.ids for e in both]
        if mode == "logits":
            probs = self.runner.verdict_probs(ids)
            verdicts = [Verdict(winner_of(p), p, e.truncated) for p, e in zip(probs, both)]
        else:
            gens = self.runner.generate(ids, self.spec.max_new_tokens)
            verdicts = [self._from_generation(g, e) for g, e in zip(gens, both)]
        if swapped is None:
            return verdicts
        n = len(forward)
        return [combine(v, s) for v, s in zip(verdicts[:n], verdicts[n:])]

    def _from_generation(self, gen: Generation, enc: Encoded) -> Verdict:
        winner = self.runner.parse(gen.text)
        prob_a = gen.prob_a if winner is not None else None
        return Verdict(winner, prob_a, enc.truncated, gen.text)


def combine(forward: Verdict, swapped: Verdict) -> Verdict:
    """Average the two orders. In the swapped run 'A' is the original B, so P(A) = 1 - its prob_a."""
    truncated = forward.truncated or swapped.truncated
    text = {"text": forward.text, "text_swapped": swapped.text}
    if forward.prob_a is not None and swapped.prob_a is not None:
        prob_a = (forward.prob_a + (1.0 - swapped.prob_a)) / 2.0
        return Verdict(winner_of(prob_a), prob_a, truncated, **text)
    # generate mode where an answer held no readable verdict: agree or report no verdict
    flipped = {"A": "B", "B": "A"}.get(swapped.winner)
    winner = forward.winner if forward.winner == flipped else None
    return replace(forward, winner=winner, prob_a=None, truncated=truncated, **text)
