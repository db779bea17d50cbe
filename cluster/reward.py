"""Reward runner (token ids -> raw logits) and RewardModel (inputs -> scores).

The score is read where HF's own single-sequence forward reads it: the last token whose id is not
the config's pad id (so with pad == EOS, the token before a trailing EOS), or the last token when the
config has no pad id. We compute that position from the unpadded ids ourselves, run the base model
on the padded batch, and apply the score head only there, so padding side, pad id and batch
composition cannot move it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cluster.runner import ForwardRunner, LoadedModel
from cluster.tokenization import Encoded, check_list, validate_judge_item


@dataclass(frozen=True)
class RewardResult:
    score: float
    truncated: bool
    num_tokens: int


@dataclass(frozen=True)
class Comparison:
    """An RM's pairwise judgement: prob_a = sigmoid(reward_a - reward_b)."""

    winner: str  # "A" | "B" (ties go to A)
    prob_a: float
    reward_a: float
    reward_b: float
    truncated: bool


def read_position(ids: Sequence[int], pad_token_id: int | None) -> int:
    """Index HF's sequence-classification forward pools at for this sequence run alone."""
    if pad_token_id is None:
        return len(ids) - 1
    for j in range(len(ids) - 1, -1, -1):
        if ids[j] != pad_token_id:
            return j
    return 0  # all pad: HF's argmax over a zero mask gives 0


class RewardRunner(ForwardRunner):
    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.base = getattr(model, model.base_model_prefix)
        self.head = model.score
        self.score_pad_id = model.config.get_text_config().pad_token_id

    def score_ids(self, seqs: Sequence[Sequence[int]]) -> list[float]:
        """Raw logits for token-id sequences, in input order."""
        return self._run(list(seqs), self._forward)

    def _forward(self, seqs: list[Sequence[int]]) -> list[float]:
        batch = self._pad(seqs)
        rows = torch.arange(len(seqs), device=self.device)
        cols = torch.tensor([off + read_position(s, self.score_pad_id) for s, off in zip(seqs, batch.offsets)],
                            device=self.device)
        hidden = self.base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           position_ids=batch.position_ids, use_cache=False).last_hidden_state
        logits = self.head(hidden[rows, cols])
        return logits[:, 0].float().tolist()


class RewardModel(LoadedModel):
    """A loaded reward model: `score(conversations)` -> raw logits in input order."""

    kind = "reward"
    runner: RewardRunner

    def score(self, inputs: Any) -> list[float]:
        """Conversations (lists of {role, content}, ending with the assistant) or pre-templated
        strings -> raw logits (higher is better), in input order."""
        return [r.score for r in self.score_detailed(inputs)]

    def score_detailed(self, inputs: Any) -> list[RewardResult]:
        return self.score_encoded(self.encoder.encode_inputs(inputs))

    def score_encoded(self, encoded: list[Encoded]) -> list[RewardResult]:
        scores = self.runner.score_ids([e.ids for e in encoded])
        return [RewardResult(s, e.truncated, len(e.ids)) for s, e in zip(scores, encoded)]

    def compare(self, items: Any) -> list[Comparison]:
        """Pairs {prompt, response_a, response_b} -> prob_a = sigmoid(r_a - r_b) and both rewards."""
        checked = [validate_judge_item(it, f"items[{i}]") for i, it in enumerate(check_list(items, "items"))]
        results = self.score_detailed(pair_conversations(checked))
        return pair_comparisons([r.score for r in results], [r.truncated for r in results])


def pair_conversations(items: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Each pair as two conversations (prompt + response_a, prompt + response_b), interleaved."""
    return [[{"role": "user", "content": it["prompt"]}, {"role": "assistant", "content": it[key]}]
            for it in items for key in ("response_a", "response_b")]


def pair_comparisons(scores: list[float], truncated: list[bool]) -> list[Comparison]:
    """Interleaved (a, b) rewards -> prob_a = sigmoid(r_a - r_b); ties go to A."""
    out = []
    for i in range(0, len(scores), 2):
        r_a, r_b = scores[i], scores[i + 1]
        prob_a = sigmoid(r_a - r_b)
        out.append(Comparison("A" if prob_a >= 0.5 else "B", prob_a, r_a, r_b, truncated[i] or truncated[i + 1]))
    return out


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)
