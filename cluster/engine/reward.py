"""Reward runners (token ids -> the model's outputs) and RewardModel (inputs -> scores).

Two ways to run a sequence classifier, both batch-invariant:
- `LastTokenRunner`, for transformers' own decoder classifiers (Llama, Gemma-2, Qwen2/3, Mistral,
  GPT-NeoX, ...: a `.score` head over the last non-pad token). The score is read where HF's own
  single-sequence forward reads it: the last token whose id is not the config's pad id (so with
  pad == EOS, the token before a trailing EOS), or the last token when the config has no pad id.
  We compute that position from the unpadded ids ourselves, run the base model on the padded batch
  with real-token position ids, and apply the head only there, so padding side, pad id and batch
  composition cannot move it.
- `OwnForwardRunner`, for everything else (encoders such as BERT / DeBERTa-v2 that pool [CLS]
  through their own pooler, custom `trust_remote_code` heads): the model's own forward on a
  right-padded batch padded with the config's pad id, reading its `logits`. Right padding keeps
  every real token's position; the attention mask keeps padding out of them.

Each item's output is the model's whole vector (`num_labels` values); the scalar reward is the one
label or the weighted sum of labels that the spec picks (`RewardHead`), raw logits by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cluster.core.errors import ModelFailure
from cluster.core.inputs import unpack_segments
from cluster.core.results import Comparison, RewardResult
from cluster.engine.local import LoadedModel
from cluster.engine.runner import CausalRunner, ForwardRunner, RunnerOp
from cluster.kinds import Op


@dataclass(frozen=True)
class RewardHead:
    """Which scalar a model's output vector gives: one label (exact) or a weighted sum."""

    labels: tuple[str, ...]  # the model's id2label names, in output order
    index: int | None = 0
    weights: tuple[float, ...] | None = None

    def scalar(self, values: Sequence[float]) -> float:
        if self.weights is None:
            return values[self.index]
        return math.fsum(w * v for w, v in zip(self.weights, values))


def read_position(ids: Sequence[int], pad_token_id: int | None) -> int:
    """Index HF's sequence-classification forward pools at for this sequence run alone."""
    if pad_token_id is None:
        return len(ids) - 1
    for j in range(len(ids) - 1, -1, -1):
        if ids[j] != pad_token_id:
            return j
    return 0  # all pad: HF's argmax over a zero mask gives 0


class RewardRunner(ForwardRunner):
    """Token ids -> the model's output vector per item, and the scalar reward the head picks."""

    def __init__(self, model, *, head: RewardHead, **kw):
        super().__init__(model, **kw)
        self.reward_head = head

    @property
    def num_labels(self) -> int:
        return len(self.reward_head.labels)

    def ops(self) -> dict[str, RunnerOp]:
        return {Op.SCORE: RunnerOp(self._rewards)}

    def describe_head(self) -> dict[str, Any]:
        """The output labels and the config's problem type (vLLM's classify activation reads it)."""
        return {
            "labels": list(self.reward_head.labels),
            "problem_type": getattr(self.model.config, "problem_type", None),
        }

    def rewards_ids(self, seqs: Sequence[Sequence[int]]) -> list[tuple[float, list[float] | None]]:
        """(scalar reward, every label's value when there is more than one) per item, input order."""
        return self.run("score", seqs).outputs

    def score_ids(self, seqs: Sequence[Sequence[int]]) -> list[float]:
        """Scalar rewards (raw logits by default) for token-id sequences, in input order."""
        return [score for score, _ in self.rewards_ids(seqs)]

    def _rewards(self, seqs: list[Sequence[int]]) -> list[tuple[float, list[float] | None]]:
        return self._shape(self._forward(seqs))

    def _shape(self, vectors: list[list[float]]) -> list[tuple[float, list[float] | None]]:
        many = self.num_labels > 1
        return [(self.reward_head.scalar(v), v if many else None) for v in vectors]

    def _forward(self, seqs: list[Sequence[int]]) -> list[list[float]]:
        raise NotImplementedError


class LastTokenRunner(RewardRunner, CausalRunner):
    """transformers' decoder classifiers: base model on the padded batch (see CausalRunner: right
    padding with no mask, or left padding with one; shared prefixes once), head at the read position."""

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.head = model.score
        self.score_pad_id = model.config.get_text_config().pad_token_id

    def ops(self) -> dict[str, RunnerOp]:
        return {Op.SCORE: RunnerOp(self.read_rows, read_limit=self.read_index)}

    def read_index(self, seq: Sequence[int]) -> int:
        return read_position(seq, self.score_pad_id)

    def readout(self, hidden: torch.Tensor) -> list[tuple[float, list[float] | None]]:
        return self._shape(self.head(hidden).float().tolist())


class OwnForwardRunner(RewardRunner):
    """Any other classifier: its own forward (own pooling, own head) on a right-padded batch."""

    def __init__(self, model, *, token_types: bool, **kw):
        super().__init__(model, **kw)
        self.token_types = token_types  # the tokenizer returns token_type_ids: the card passes them

    def _forward(self, seqs: list[Sequence[int]]) -> list[list[float]]:
        unpacked = [unpack_segments(s) for s in seqs]
        batch = self._pad([ids for ids, _ in unpacked])
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if self.token_types:
            inputs["token_type_ids"] = self._pad([types for _, types in unpacked], pad_id=0).input_ids
        logits = self.model(**inputs).logits
        if logits.dim() == 1:  # custom heads such as ArmoRM's return the score alone, shape (batch,)
            logits = logits.unsqueeze(-1)
        if logits.dim() != 2 or logits.shape[0] != len(seqs) or logits.shape[1] != self.num_labels:
            raise ModelFailure(
                f"model '{self.name}' returned logits of shape {tuple(logits.shape)} for {len(seqs)} "
                f"items; its config declares {self.num_labels} output label(s) "
                f"(a sequence classifier returns [batch, num_labels])"
            )
        return logits.float().tolist()


class RewardModel(LoadedModel):
    """A loaded reward model: `score(conversations)` -> raw logits in input order. Calls go
    through the request core (cluster/core/service.py), as a route's do."""

    kind = "reward"
    runner: RewardRunner

    def score(self, inputs: Any) -> list[float]:
        """Conversations (lists of {role, content}, ending with the assistant) or pre-templated
        strings -> raw logits (higher is better), in input order."""
        return [r.score for r in self.score_detailed(inputs)]

    def score_detailed(self, inputs: Any) -> list[RewardResult]:
        rewards = self.service.one(self.service.rewards_job(self.spec, inputs))
        values = rewards.values or [None] * len(rewards.scores)
        return [RewardResult(*r) for r in zip(rewards.scores, rewards.truncated, rewards.num_tokens, values)]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.runner.reward_head.labels

    def compare(self, items: Any) -> list[Comparison]:
        """Pairs {prompt, response_a, response_b} -> prob_a = sigmoid(r_a - r_b) and both rewards."""
        return self.service.one(self.service.compare_job(self.spec, items, "conversations")).results
