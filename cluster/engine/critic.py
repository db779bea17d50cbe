"""Critic runner and CriticModel: pairwise verdicts from an LLM judge (Skywork-Critic format).

Fast path (mode="logits", op "verdicts"): one forward pass over judge prompt + the verdict
strings' shared prefix (`[[`), reading the next-token logits of the two tokens where the verdicts
differ (`A`, `B`): prob_a = softmax over {A, B} = sigmoid(logit_A - logit_B). That is exactly the
comparison greedy generation makes at that step, without generating.
Slow path (mode="generate", op "generate"): greedy generation on the model's continuous-batching
loop (shared with every other generation on it), the verdict read after the judge's reasoning (the
last `</think>`) by the exact strings or the judge's own `verdict_pattern`, and P(A) read by one
forward pass at the token that wrote it; an output with no verdict is reported as such (winner
None), never guessed.
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
from typing import Any

import torch

from cluster.core.batching import plan_batches
from cluster.core.errors import ModelFailure
from cluster.core.inputs import VerdictTokens
from cluster.core.results import Generated, Verdict
from cluster.engine.lm import LMRunner
from cluster.engine.local import LoadedModel
from cluster.engine.runner import Ran, RunnerOp
from cluster.kinds import Op


@dataclass(frozen=True)
class Found:
    """A verdict (or rating) an answer states: its index among the kind's choices and where its
    text sits in the answer."""

    choice: int
    start: int
    end: int


class CriticRunner(LMRunner):
    """Verdict reads pad right with no mask and share prefixes (CausalRunner); generation joins the
    shared loop."""

    def __init__(
        self, model, tokenizer, verdict: VerdictTokens, verdicts: tuple[str, str], eos_ids, max_new_tokens: int, **kw
    ):
        super().__init__(model, tokenizer, eos_ids, max_new_tokens, probe=verdict.prefix, **kw)
        self.verdict = verdict
        self.verdict_pattern = re.compile("|".join(re.escape(v) for v in verdicts))
        self.verdicts = verdicts
        self.labels: tuple[str, ...] = ("A", "B")  # what a verdict_pattern's group reads, per choice
        self.choice_tokens: list[int] = (
            list(verdict.tokens) if hasattr(verdict, "tokens") else [verdict.token_a, verdict.token_b]
        )
        self.answer_pattern: re.Pattern | None = None  # a judge's own pattern, its group the choice
        self.reasoning_end: str | None = "</think>"

    def read_answers(self, *, verdict_pattern: str | None, reasoning_end: str | None) -> None:
        """How generate mode reads an answer: after the reasoning's end (the last `</think>`) when
        the answer writes one, and by the judge's own pattern (its one group the verdict or
        rating: `\\boxed\\{(A|B)\\}`, `"winner": "(A|B)"`) instead of the exact verdict strings."""
        self.answer_pattern = re.compile(verdict_pattern, re.DOTALL) if verdict_pattern else None
        self.reasoning_end = reasoning_end or None

    def ops(self) -> dict[str, RunnerOp]:
        if self.own_head:  # the model's own forward, left-padded (see LMRunner)
            return {Op.VERDICTS: RunnerOp(self._own_head_verdicts), Op.GENERATE: self._generate_op}
        return {Op.VERDICTS: RunnerOp(self.read_rows, read_limit=self.read_index), Op.GENERATE: self._generate_op}

    @property
    def _generate_op(self) -> RunnerOp:  # run() sends generation to the shared loop, unplanned
        return RunnerOp(self._generate_verdicts, cost=lambda s: len(s) + self.max_new_tokens)

    def run(self, op: str, seqs):
        if op == "verdicts":  # the verdict strings' shared prefix (`[[`) after each judge prompt
            seqs = [list(s) + self.verdict.prefix for s in seqs]
        if op == "generate":  # every prompt joins the shared decode loop at once (not planned in passes)
            seqs = list(seqs)
            try:
                with torch.inference_mode():
                    outputs = self._generate_verdicts(seqs)
            except RuntimeError as err:
                raise ModelFailure(f"model '{self.name}' failed generating: {type(err).__name__}: {err}") from err
            lengths = [len(s) + self.max_new_tokens for s in seqs]
            return Ran(outputs, [list(range(len(seqs)))], lengths, sum(lengths))
        return super().run(op, seqs)

    # -- fast path: P(A) vs P(B) at the step after the verdict prefix, for each judge prompt

    def readout(self, hidden: torch.Tensor) -> list:
        return self._answer(self.lm(hidden))

    def _answer(self, last: torch.Tensor) -> list:
        """The next-token logits where the answer is read ([B, vocab]) -> one output per row."""
        return self._prob_a(last)

    def _prob_a(self, last: torch.Tensor) -> list[float]:
        # float64 sigmoid: P(A) keeps its log-odds recoverable (the pipeline's margins) up to ~36
        return torch.sigmoid((last[:, self.verdict.token_a] - last[:, self.verdict.token_b]).double()).tolist()

    def _own_head_verdicts(self, seqs: list[Sequence[int]]) -> list[float]:
        return self._answer(self._own_head_last_logits(seqs))

    # -- slow path: the judge writes its answer on the shared continuous-batching loop

    def _generate_verdicts(self, seqs: list[Sequence[int]]) -> list[Generated]:
        """Greedy answers, the verdict each states and P(A) read at its verdict token."""
        out = []
        for text, found, read in self._generate(seqs):
            winner = "AB"[found.choice] if found else None  # the model's own verdict strings, never guessed
            out.append(Generated(text, winner, read[0] if read is not None else None))
        return out

    def _generate(self, seqs: list[Sequence[int]]) -> list[tuple[str, Found | None, list | None]]:
        """Each judge prompt's greedy answer (continuously batched with every other generation on
        this model), the verdict it states, and the kind's reading where the answer wrote it: one
        forward pass over the prompt and the answer up to the verdict token, read there as the
        fast path reads (the same logits greedy decoding chose that token from)."""
        gens = self.chat_runner.generator.generate([list(s) for s in seqs], self.max_new_tokens)
        answers, reads, where = [], [], []
        for row, gen in enumerate(gens):
            new = list(gen.token_ids)
            cut = next((j for j, tok in enumerate(new) if tok in self.eos_ids), len(new))
            new = new[:cut]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            found = self.find(text)
            t = self._choice_token(new, found) if found else None
            answers.append((text, found))
            if t is not None:
                where.append(row)
                reads.append(list(seqs[row]) + new[:t])
        read_out: list = [None] * len(seqs)
        for row, value in zip(where, self._read_next(reads)):
            read_out[row] = [value]
        return [(text, found, read_out[row]) for row, (text, found) in enumerate(answers)]

    def _read_next(self, seqs: list[list[int]]) -> list:
        """The kind's reading (P(A); the scale's probabilities) of the next token after each
        sequence, in passes of the runner's token budget."""
        if not seqs:
            return []
        read = self._own_head_verdicts if self.own_head else self.read_rows
        out: list = [None] * len(seqs)
        for batch in plan_batches([len(s) for s in seqs], self.pass_tokens, self.max_batch_size):
            for i, value in zip(batch, read([seqs[i] for i in batch])):
                out[i] = value
        return out

    def answer_start(self, text: str) -> int | None:
        """Where the verdict is looked for: after the last end of reasoning when the answer writes
        one; None when it opened its reasoning and never closed it (no verdict yet)."""
        if self.reasoning_end:
            at = text.rfind(self.reasoning_end)
            if at >= 0:
                return at + len(self.reasoning_end)
            opening = self.reasoning_end.replace("</", "<", 1)
            if opening != self.reasoning_end and opening in text:
                return None
        return 0

    def found_all(self, text: str) -> list[Found]:
        """Every verdict the answer states after its reasoning, in order."""
        start = self.answer_start(text)
        if start is None:
            return []
        if self.answer_pattern is not None:
            return [
                Found(self.labels.index(m.group(1)), *m.span(1))
                for m in self.answer_pattern.finditer(text, start)
                if m.group(1) in self.labels
            ]
        return [Found(self.verdicts.index(m.group(0)), *m.span(0)) for m in self.verdict_pattern.finditer(text, start)]

    def find(self, text: str) -> Found | None:
        """A critic's verdict: the first it states."""
        found = self.found_all(text)
        return found[0] if found else None

    def _choice_token(self, new_ids: list[int], found: Found) -> int | None:
        """The answer token that wrote the verdict's choice: the choice's own token (`A` of `[[A]]`),
        ending inside the verdict's text. None if the tokens there are not the choice's own."""
        want = self.choice_tokens[found.choice]
        for t, tok in enumerate(new_ids):
            if tok != want:
                continue
            end = len(self.tokenizer.decode(new_ids[: t + 1], skip_special_tokens=True))
            if found.start < end <= found.end:
                return t
            if end > found.end:
                return None
        return None

    def parse(self, text: str) -> str | None:
        found = self.find(text)
        return None if found is None else "AB"[found.choice]


class CriticModel(LoadedModel):
    """A loaded critic: `judge(items, mode, debias)` -> one Verdict per item, in input order. Calls
    go through the request core (cluster/core/service.py), as a route's do."""

    kind = "critic"
    runner: CriticRunner

    def judge(self, items: Any, mode: str = "logits", debias: bool = False) -> list[Verdict]:
        return self.service.one(self.service.judge_job(self.spec, items, mode, debias)).results
