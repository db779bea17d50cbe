"""What every causal-LM model served shares (critics, pointwise judges, generative judges): the LM
head on read positions only, chat completions on the model's continuous-batching loops
(cluster/engine/generation.py), the next token's log-probabilities after a prompt (generative
scores), an answer's logprobs, and one forward pass at a time through the model whichever thread
runs it. The kinds' own runners build on `LMRunner` (cluster/engine/critic.py, rating.py,
generative.py)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from functools import cached_property

import torch

from cluster.engine.generation import ChatRunner
from cluster.engine.runner import CausalRunner, LMHead, RunnerOp
from cluster.kinds import Op


def serialize_forwards(base) -> None:
    """One forward pass at a time through `base` (the decoder every pass of a causal LM goes
    through), whichever thread runs it: the generation loops' steps, a judge's reads, a scoring
    pass. transformers' forward is not safe to run twice at once on one model: it sets
    `config.is_causal` from a call's `is_causal` for the length of the call (the continuous-batching
    step passes False) and restores it after, so an overlapping pass would attend without its causal
    mask, and two overlapping restores can leave the wrong value set for good.

    And each pass runs with its own attention: a generation loop on an eager-attention model
    (Gemma-2: soft-capping, never SDPA) switches the model to `paged|eager` for as long as the loop
    lives; every other pass (reads, scoring, a seeded `generate`) runs with the implementation the
    model was loaded with, as the card computes it."""
    if getattr(base, "forward_lock", None) is not None:
        return
    lock = threading.RLock()
    inner = base.forward
    config = base.config
    loaded = config._attn_implementation

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with lock:
            current = config._attn_implementation
            if "read_index" in kwargs or current == loaded:  # a generation loop's step, or nothing switched
                return inner(*args, **kwargs)
            config._attn_implementation = loaded
            try:
                return inner(*args, **kwargs)
            finally:
                config._attn_implementation = current

    base.forward_lock = lock
    base.forward = forward


class LMRunner(CausalRunner):
    """What every causal-LM model served shares (critic, pointwise judge, generative judge): the LM
    head on read positions only, chat completions on the shared continuous-batching loop, and the
    next token's log-probabilities after a prompt (generative scores). Reads pad right with no
    mask and share prefixes (CausalRunner); a model whose own forward computes its logits some
    other way (checked once at load) is read through its forward."""

    chat_max_length = 4096  # prompt + answer of a chat completion: the spec's max_length, set at load

    def __init__(self, model, tokenizer, eos_ids, max_new_tokens: int, probe: Sequence[int] = (), **kw):
        super().__init__(model, **kw)
        serialize_forwards(self.base)
        self.read_side = "right"
        self.lm = LMHead(model)
        self.max_new_tokens = max_new_tokens
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.probe = [self.pad_id, *probe]
        self.own_head = self._check_head()

    def _check_head(self) -> bool:
        """Whether the model's own forward computes its last logits some other way than LM head +
        final soft-capping (a logit scale, a custom head): then reads call its forward."""
        return not self.lm.matches_forward(self.base, self.probe, self.device)

    @cached_property
    def chat_runner(self) -> ChatRunner:
        """Chat completions on this model, continuously batched (cluster/engine/generation.py)."""
        return ChatRunner(
            self.model,
            self.tokenizer,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            max_length=self.chat_max_length,
            capacity=self.chat_max_length + self.max_new_tokens,  # a judge prompt of max_length, then its answer
            max_new_tokens=self.max_new_tokens,
            max_batch_tokens=self.pass_tokens,
            read_logprobs=self.answer_logprobs,
        )

    def ops(self) -> dict[str, RunnerOp]:
        return {}

    def answer_logprobs(self, prompt: list[int], answer: list[int], top: int) -> tuple[list[float], list]:
        """Each answer token's log-probability under the model (log-softmax of the logits that
        predicted it) and, per token, the `top` likeliest tokens as (id, logprob): one forward pass
        over prompt + answer, the LM head on the answer's positions only, in slices."""
        ids = torch.tensor([[*prompt, *answer]], device=self.device)
        targets = torch.tensor(answer, device=self.device)
        with torch.inference_mode():
            if self.own_head:
                logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=len(answer) + 1).logits[0, :-1]
                slices = [logits.float()]
            else:
                hidden = self.base(input_ids=ids, use_cache=False).last_hidden_state[0, len(prompt) - 1 : -1]
                slices = [self.lm(hidden[i : i + 256]) for i in range(0, len(answer), 256)]
            chosen, best = [], []
            at = 0
            for logits in slices:
                logprobs = logits.double().log_softmax(dim=-1)
                rows = torch.arange(len(logprobs), device=logprobs.device)
                chosen += logprobs[rows, targets[at : at + len(logprobs)]].tolist()
                if top:
                    values, indices = logprobs.topk(top, dim=-1)
                    best += [list(zip(i, v)) for i, v in zip(indices.tolist(), values.tolist())]
                at += len(logprobs)
        return chosen, best if top else None

    def read_index(self, seq: Sequence[int]) -> int:
        return len(seq) - 1

    # -- any causal LM: the next token's log-probabilities after a prompt (Op.NEXT_TOKEN)

    def lm_ops(self) -> dict[str, RunnerOp]:
        """The next token's log-probabilities after each prompt, as given (nothing appended): one
        forward pass, the LM head on the last position only, prompts sharing a prefix (a query
        before its items) computing it once. A model whose own forward computes its logits some
        other way (`own_head`) is read through its forward, left-padded."""
        if self.own_head:
            return {Op.NEXT_TOKEN: RunnerOp(self._own_head_next_token)}
        read = self._next_token_logprobs
        return {
            Op.NEXT_TOKEN: RunnerOp(
                lambda seqs: self.read_rows(seqs, readout=read), read_limit=self.read_index, readout=read
            )
        }

    def _next_token_logprobs(self, hidden: torch.Tensor) -> list:
        """[B, hidden] at the last positions -> per row, the log-softmax over the whole vocabulary
        (float64 softmax, kept as float32: a row is what crosses from a replica, 4 bytes a token)."""
        return self._logprob_rows(self.lm(hidden))

    @staticmethod
    def _logprob_rows(logits: torch.Tensor) -> list:
        return list(logits.double().log_softmax(dim=-1).float().cpu().numpy())

    def _own_head_next_token(self, seqs: list[Sequence[int]]) -> list:
        return self._logprob_rows(self._own_head_last_logits(seqs))

    def _own_head_last_logits(self, seqs: list[Sequence[int]]) -> torch.Tensor:
        """The model's own forward, left-padded: every row's last real token is the last column, so
        logits_to_keep=1 runs its own head on one position per row ([B, vocab], float32)."""
        batch = self._pad(seqs, side="left")
        out = self.model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()
