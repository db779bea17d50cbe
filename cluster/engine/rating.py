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
from cluster.engine.critic import CriticRunner
from cluster.engine.local import LoadedModel


class RatingRunner(CriticRunner):
    """Reads P(rating) over the scale where the answer writes its rating (see the module docstring)."""

    verdict: ChoiceTokens

    def __init__(
        self, model, tokenizer, ratings: ChoiceTokens, rating_strings: Sequence[str], eos_ids, max_new_tokens: int, **kw
    ):
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
            match = self._last_rating(gen.text)
            choice = self.verdicts.index(match.group(0)) if match else None
            read = gen.prob_a  # (choice, probs, where its token ends in the text), or None
            same = (
                read is not None and match is not None and read[0] == choice and match.start() < read[2] <= match.end()
            )
            out.append(GeneratedRating(gen.text, choice, read[1] if same else None))
        return out

    def _last_rating(self, text: str) -> re.Match | None:
        matches = list(self.verdict_pattern.finditer(text))
        return matches[-1] if matches else None

    def parse_choice(self, text: str) -> int | None:
        """The index of the last rating the text writes (None: it writes none)."""
        match = self._last_rating(text)
        return self.verdicts.index(match.group(0)) if match else None

    def _prob_at_verdict(self, new_ids: list[int], step_logits: list[torch.Tensor]):
        """(rating index, the scale's probabilities, where the token ends in the answer's text) at
        the last generated rating token that follows the rating prefix in the text (the tokens of
        `[[` after a space or a word need not be those of `[[` alone); None if there is none."""
        prefix = self.tokenizer.decode(self.verdict.prefix)
        cut = next((j for j, tok in enumerate(new_ids) if tok in self.eos_ids), len(new_ids))
        for t in range(cut - 1, -1, -1):
            if new_ids[t] not in self.verdict.tokens:
                continue
            text = self.tokenizer.decode(new_ids[: t + 1], skip_special_tokens=True)
            if text.endswith(prefix + self.tokenizer.decode([new_ids[t]])):
                probs = self._answer(step_logits[t].float().unsqueeze(0))[0]
                return self.verdict.tokens.index(new_ids[t]), probs, len(text)
        return None


class PointwiseModel(LoadedModel):
    """A loaded pointwise judge: `rate(items, mode)` -> one Rating per item {prompt, response, ...},
    in input order. Calls go through the request core, as a route's do."""

    kind = "pointwise"
    runner: RatingRunner

    def rate(self, items: Any, mode: str = "logits") -> list[Rating]:
        return self.service.one(self.service.rate_job(self.spec, items, mode)).results
