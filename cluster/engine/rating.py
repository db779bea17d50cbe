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

from cluster.core.inputs import ChoiceTokens
from cluster.core.results import GeneratedRating, Rating
from cluster.engine.critic import CriticRunner, Found
from cluster.engine.local import LoadedModel


class RatingRunner(CriticRunner):
    """Reads P(rating) over the scale where the answer writes its rating (see the module docstring)."""

    verdict: ChoiceTokens

    def __init__(
        self,
        model,
        tokenizer,
        ratings: ChoiceTokens,
        rating_strings: Sequence[str],
        eos_ids,
        max_new_tokens: int,
        ratings_labels: Sequence[str] = (),
        **kw,
    ):
        super().__init__(model, tokenizer, ratings, tuple(rating_strings), eos_ids, max_new_tokens, **kw)
        self.labels = tuple(ratings_labels) if ratings_labels else tuple(rating_strings)
        # the longest first, so that "10" is found before "1"
        order = sorted(range(len(rating_strings)), key=lambda i: -len(rating_strings[i]))
        self.verdict_pattern = re.compile("|".join(re.escape(rating_strings[i]) for i in order))

    def describe_head(self) -> dict[str, Any]:
        return {"labels": list(self.verdicts), "problem_type": None}

    def _answer(self, last: torch.Tensor) -> list[list[float]]:
        # float64: the probabilities of a confident judge's unlikely ratings stay distinct from 0
        return last[:, self.verdict.tokens].double().softmax(dim=-1).tolist()

    def _generate_verdicts(self, seqs: list[Sequence[int]]) -> list[GeneratedRating]:
        return [
            GeneratedRating(text, found.choice if found else None, read[0] if read is not None else None)
            for text, found, read in self._generate(seqs)
        ]

    def find(self, text: str) -> Found | None:
        """A pointwise judge's rating: the last it states (after its reasoning)."""
        found = self.found_all(text)
        return found[-1] if found else None

    def parse_choice(self, text: str) -> int | None:
        """The index of the last rating the text writes (None: it writes none)."""
        found = self.find(text)
        return None if found is None else found.choice


class PointwiseModel(LoadedModel):
    """A loaded pointwise judge: `rate(items, mode)` -> one Rating per item {prompt, response, ...},
    in input order. Calls go through the request core, as a route's do."""

    kind = "pointwise"
    runner: RatingRunner

    def rate(self, items: Any, mode: str = "logits") -> list[Rating]:
        return self.service.one(self.service.rate_job(self.spec, items, mode)).results
