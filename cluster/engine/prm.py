"""Process reward models: a reward per step of a solution, read at the step tag after each step.

Two kinds of head, each read exactly as its card reads it, at every position holding the tag id:
- a token classifier (Qwen2.5-Math-PRM: `Qwen2ForProcessRewardModel`, loaded with trust_remote_code
  through AutoModel as its card does; or transformers' own `*ForTokenClassification`): the model's
  own forward on a right-padded batch (a mask keeps padding out; real tokens keep their positions),
  softmax over its labels at the tag, the positive class (the card's `[:, 1]`);
- a causal LM (Math-Shepherd): the next-token logits at the tag, softmax over the (good, bad) tokens
  only: P(good) / (P(good) + P(bad)). The LM head runs on the tag positions alone (see `LMHead`),
  on the base model's hidden states of a right-padded batch with no mask (a causal model's real
  tokens never attend to padding after them); a model whose own forward computes its logits some
  other way is read through that forward instead.
Batches are planned like every other op: length-sorted, under the token budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cluster.core.errors import ModelFailure
from cluster.core.results import StepRewards
from cluster.engine.local import LoadedModel
from cluster.engine.runner import ForwardRunner, LMHead, RunnerOp
from cluster.kinds import Op


class StepRewardRunner(ForwardRunner):
    """Token ids holding step tags -> the step rewards of each sequence, in input order."""

    def __init__(self, model, *, tag_id: int, positive: int, step_labels: tuple[int, int] | None, **kw):
        super().__init__(model, **kw)
        self.tag_id = tag_id
        self.positive = positive  # a classifier's positive label
        self.step_labels = step_labels  # a causal LM's (good, bad) token ids; None: a token classifier
        self.own_head = True
        if step_labels is not None:
            self.base = getattr(model, model.base_model_prefix)
            self.lm = LMHead(model)
            self.own_head = not self.lm.matches_forward(self.base, [self.pad_id, tag_id], self.device)

    def ops(self) -> dict[str, RunnerOp]:
        return {Op.SCORE: RunnerOp(self.step_rewards)}

    def describe_head(self) -> dict[str, Any]:
        """The tag id, and the column of the step reward in vLLM's per-step rows: a two-label
        classifier's rows are its labels' probabilities (positive = this column); a causal LM's are
        [P(good), P(bad)] (vLLM's `returned_token_ids` order)."""
        column = self.positive if self.step_labels is None else 0
        labels = self.model.config.num_labels if self.step_labels is None else 2
        return {
            "labels": None,
            "problem_type": None,
            "step_tag_id": self.tag_id,
            "reward_column": column,
            "num_columns": labels,
        }

    def step_rewards(self, seqs: list[Sequence[int]]) -> list[list[float]]:
        """One forward pass over `seqs`; each one's rewards at its tags, in order."""
        batch = self._pad(seqs, side="right")
        places = [(r, j) for r, s in enumerate(seqs) for j, t in enumerate(s) if t == self.tag_id]
        if self.step_labels is not None and not self.own_head:
            hidden = self.base(input_ids=batch.input_ids, use_cache=False).last_hidden_state
            logits = self.lm(self._at(hidden, places))
        else:
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            every = out.logits if hasattr(out, "logits") else out[0]
            if every.dim() != 3 or tuple(every.shape[:2]) != tuple(batch.input_ids.shape):
                raise ModelFailure(
                    f"model '{self.name}' returned logits of shape {tuple(every.shape)} for a batch of "
                    f"shape {tuple(batch.input_ids.shape)}; a prm returns [batch, tokens, labels]"
                )
            logits = self._at(every, places).float()
        if self.step_labels is not None:  # Math-Shepherd: softmax over (good, bad), P(good)
            probs = logits[:, list(self.step_labels)].softmax(dim=-1)[:, 0]
        else:  # Qwen2.5-Math-PRM: softmax over the labels, the positive class
            probs = logits.softmax(dim=-1)[:, self.positive]
        values = probs.tolist()
        out: list[list[float]] = [[] for _ in seqs]
        for (r, _), v in zip(places, values):
            out[r].append(v)
        return out

    @staticmethod
    def _at(states: torch.Tensor, places: list[tuple[int, int]]) -> torch.Tensor:
        rows = torch.tensor([r for r, _ in places], dtype=torch.long, device=states.device)
        cols = torch.tensor([j for _, j in places], dtype=torch.long, device=states.device)
        return states[rows, cols]


class PrmModel(LoadedModel):
    """A loaded process reward model: `step_rewards(items)` -> the rewards of each solution's
    steps and their aggregate; `score(items)` -> the aggregates alone. Calls go through the request
    core, as a route's do."""

    kind = "prm"
    runner: StepRewardRunner

    def step_rewards(self, items: Any, aggregate: str | None = None) -> list[StepRewards]:
        """Items {prompt, steps} / {prompt, response} (split at the model's step_separator), or
        conversations whose last message is the solution -> StepRewards, in input order."""
        rewards = self.service.one(self.service.rewards_job(self.spec, items, "items", aggregate=aggregate))
        return rewards.step_results()

    def score(self, items: Any, aggregate: str | None = None) -> list[float]:
        return [r.score for r in self.step_rewards(items, aggregate)]
