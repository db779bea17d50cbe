"""Pointwise judges: a rating of one response on a scale, from an LLM judge prompt.

Fast path (mode="logits", op "verdicts"): the critic's twin. One forward pass over the judge prompt
+ the rating strings' shared prefix (e.g. `[[`), and the next-token logits of the token that tells
each rating apart: softmax over those tokens gives P(rating) over the scale, the expected rating
is the probability-weighted value, and the most probable rating is the one greedy generation would
write there. Slow path (mode="generate", op "generate"): greedy generation, for judges that reason
before they rate; the rating is the last one the answer writes, and the scale's probabilities are
read at that rating's token. An answer with no rating is reported as such, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from cluster.core.critic import CriticRunner
from cluster.core.results import GeneratedRating, Rating
from cluster.core.runner import LoadedModel
from cluster.core.tokenization import ChoiceTokens


class RatingRunner(CriticRunner):
    """Reads P(rating) over the scale where the answer writes its rating (see the module docstring)."""

    verdict: ChoiceTokens

    def __init__(self, model, tokenizer, ratings: ChoiceTokens, rating_strings: Sequence[str], eos_ids,
                 max_new_tokens: int, **kw):
        super().__init__(model, tokenizer, ratings, tuple(rating_strings), eos_ids, max_new_tokens, **kw)
        # the longest first, so that "10" is found before "1"
        order = sorted(range(len(rating_strings)), key=lambda i: -len(rating_strings[i]))
        self.verdict_pattern = re.compile("|".join(re.escape(rating_strings[i]) for i in order))

    def describe_head(self) -> dict[str, Any]:
        return {"labels": list(self.verdicts), "problem_type": None}

    def _answer(self, last: torch.Tensor) -> list[list[float]]:
        # float64: the probabilities of a confident judge's unlikely ratings stay distinct from 0
        return last[:, self.verdict.tokens].double().softmax(dim=-1).tolist()

    def _generate_verdicts(self, seqs: list[Sequence[int]]) -> list[GeneratedRating]:
        out = []
        for gen in self._generate(seqs, self.max_new_tokens):
            choice = self.parse_choice(gen.text)
            read = gen.prob_a  # (choice, probs) found at the last rating token, or None
            probs = read[1] if read is not None and read[0] == choice else None
            out.append(GeneratedRating(gen.text, choice, probs))
        return out

    def parse_choice(self, text: str) -> int | None:
        """The index of the last rating the text writes (None: it writes none)."""
        matches = list(self.verdict_pattern.finditer(text))
        return self.verdicts.index(matches[-1].group(0)) if matches else None

    def _prob_at_verdict(self, new_ids: list[int], step_logits: list[torch.Tensor]):
        """(rating index, the scale's probabilities) at the last place the generated tokens hold the
        prefix then a rating token; None if they never do."""
        prefix, n = self.verdict.prefix, len(self.verdict.prefix)
        for t in range(len(new_ids) - n - 1, -1, -1):
            if new_ids[t:t + n] == prefix and new_ids[t + n] in self.verdict.tokens:
                probs = self._answer(step_logits[t + n].float().unsqueeze(0))[0]
                return self.verdict.tokens.index(new_ids[t + n]), probs
        return None


class PointwiseModel(LoadedModel):
    """A loaded pointwise judge: `rate(items, mode)` -> one Rating per item {prompt, response, ...},
    in input order. Calls go through the request core, as a route's do."""

    kind = "pointwise"
    runner: RatingRunner

    def rate(self, items: Any, mode: str = "logits") -> list[Rating]:
        return self.service.one(self.service.rate_job(self.spec, items, mode)).results
