"""Critic runner and CriticModel: pairwise verdicts from an LLM judge (Skywork-Critic format).

Fast path (mode="logits", op "verdicts"): one forward pass over judge prompt + the verdict
strings' shared prefix (`[[`), reading the next-token logits of the two tokens where the verdicts
differ (`A`, `B`): prob_a = softmax over {A, B} = sigmoid(logit_A - logit_B). That is exactly the
comparison greedy generation makes at that step, without generating.
Slow path (mode="generate", op "generate"): greedy generation, parse `[[A]]`/`[[B]]`; an output
with no verdict is reported as such (winner None), never guessed.
debias=True runs both orders and averages prob_a (cluster/core/results.py: `combine`).
The fast path reads like a reward model (cluster/engine/runner.py: CausalRunner): right padding with
no mask, the LM head (and Gemma-2's final soft-capping) on the read positions only, the two
orders' shared judge-prompt prefix computed once. A model whose own forward computes its logits
some other way (checked once at load) is read through its own forward instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from cluster.core.inputs import VerdictTokens
from cluster.core.results import Generated, Verdict
from cluster.engine.generation import ChatRunner
from cluster.engine.local import LoadedModel
from cluster.engine.runner import CausalRunner, LMHead, RunnerOp
from cluster.kinds import Op


@dataclass(frozen=True)
class Generation:
    text: str
    prob_a: float | None  # read at the step after the verdict prefix, if the output has one


class CriticRunner(CausalRunner):
    """Verdict reads pad right with no mask and share prefixes (CausalRunner); generation pads left."""

    def __init__(
        self, model, tokenizer, verdict: VerdictTokens, verdicts: tuple[str, str], eos_ids, max_new_tokens: int, **kw
    ):
        super().__init__(model, **kw)
        self.read_side = "right"
        self.lm = LMHead(model)
        self.max_new_tokens = max_new_tokens
        self.tokenizer = tokenizer
        self.verdict = verdict
        self.verdict_pattern = re.compile("|".join(re.escape(v) for v in verdicts))
        self.verdicts = verdicts
        self.eos_ids = eos_ids
        self.own_head = self._check_head()

    chat_max_length = 4096  # prompt + answer of a chat completion: the spec's max_length, set at load

    @cached_property
    def chat_runner(self) -> ChatRunner:
        """Chat completions on this model, continuously batched (cluster/engine/generation.py)."""
        return ChatRunner(
            self.model,
            self.tokenizer,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            max_length=self.chat_max_length,
            max_new_tokens=self.max_new_tokens,
            max_batch_tokens=self.pass_tokens,
        )

    def ops(self) -> dict[str, RunnerOp]:
        if self.own_head:  # the model's own forward, left-padded (see `_check_head`)
            return {Op.VERDICTS: RunnerOp(self._own_head_verdicts), Op.GENERATE: self._generate_op}
        return {Op.VERDICTS: RunnerOp(self.read_rows, read_limit=self.read_index), Op.GENERATE: self._generate_op}

    @property
    def _generate_op(self) -> RunnerOp:
        return RunnerOp(self._generate_verdicts, cost=lambda s: len(s) + self.max_new_tokens)

    def run(self, op: str, seqs):
        if op == "verdicts":  # the verdict strings' shared prefix (`[[`) after each judge prompt
            seqs = [list(s) + self.verdict.prefix for s in seqs]
        return super().run(op, seqs)

    # -- fast path: P(A) vs P(B) at the step after the verdict prefix, for each judge prompt

    def read_index(self, seq: Sequence[int]) -> int:
        return len(seq) - 1

    def readout(self, hidden: torch.Tensor) -> list:
        return self._answer(self.lm(hidden))

    def _answer(self, last: torch.Tensor) -> list:
        """The next-token logits where the answer is read ([B, vocab]) -> one output per row."""
        return self._prob_a(last)

    def _prob_a(self, last: torch.Tensor) -> list[float]:
        # float64 sigmoid: P(A) keeps its log-odds recoverable (the pipeline's margins) up to ~36
        return torch.sigmoid((last[:, self.verdict.token_a] - last[:, self.verdict.token_b]).double()).tolist()

    def _check_head(self) -> bool:
        """Whether the model's own forward computes its last logits some other way than LM head +
        final soft-capping (a logit scale, a custom head): then the fast path calls its forward."""
        return not self.lm.matches_forward(self.base, [self.pad_id, *self.verdict.prefix], self.device)

    def _own_head_verdicts(self, seqs: list[Sequence[int]]) -> list[float]:
        batch = self._pad(seqs, side="left")
        # left padding: every row's last real token is the last column, so logits_to_keep=1 runs
        # the model's own head on one position per row
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=1,
        )
        return self._answer(out.logits[:, -1, :].float())

    # -- slow path

    def _generate_verdicts(self, seqs: list[Sequence[int]]) -> list[Generated]:
        """Greedy answers, the verdict each states and P(A) read at its verdict token."""
        out = []
        for gen in self._generate(seqs, self.max_new_tokens):
            winner = self.parse(gen.text)  # the model's own verdict strings, never guessed
            out.append(Generated(gen.text, winner, gen.prob_a if winner is not None else None))
        return out

    def _generate(self, seqs: list[Sequence[int]], max_new_tokens: int) -> list[Generation]:
        batch = self._pad(seqs)
        out = self.model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
            output_logits=True,
            return_dict_in_generate=True,
            temperature=None,
            top_p=None,
            top_k=None,
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
            if new_ids[t : t + n] == prefix and new_ids[t + n] in (self.verdict.token_a, self.verdict.token_b):
                step = step_logits[t + n].float()
                return torch.sigmoid(step[self.verdict.token_a] - step[self.verdict.token_b]).item()
        return None

    def parse(self, text: str) -> str | None:
        match = self.verdict_pattern.search(text)
        if match is None:
            return None
        return "A" if match.group(0) == self.verdicts[0] else "B"


class CriticModel(LoadedModel):
    """A loaded critic: `judge(items, mode, debias)` -> one Verdict per item, in input order. Calls
    go through the request core (cluster/core/service.py), as a route's do."""

    kind = "critic"
    runner: CriticRunner

    def judge(self, items: Any, mode: str = "logits", debias: bool = False) -> list[Verdict]:
        return self.service.one(self.service.judge_job(self.spec, items, mode, debias)).results
