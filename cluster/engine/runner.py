"""What reward and critic runners share: padding, budgeted batches, failures as ModelFailure; and
the loaded-model base class that pairs a spec with its encoder and runner."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from cluster.core.batching import PrefixGroup, padding_efficiency, plan_batches, shared_prefix_groups
from cluster.core.errors import ModelFailure


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T], 1 for real tokens
    position_ids: torch.Tensor  # [B, T], 0.. for real tokens whatever the padding side
    offsets: list[int]  # where each row's first real token sits (0 with right padding)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)

    def to(self, device) -> PaddedBatch:
        return PaddedBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device), self.offsets
        )


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> PaddedBatch:
    """Pad to the longest sequence. Position ids count real tokens only, so a row's positions are
    the same as when it runs alone, on either padding side."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, s in enumerate(seqs):
        start = width - len(s) if side == "left" else 0
        ids[row, start : start + len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, start : start + len(s)] = 1
        pos[row, start : start + len(s)] = torch.arange(len(s))
        offsets.append(start)
    return PaddedBatch(ids, mask, pos, offsets)


@dataclass(frozen=True)
class Ran:
    """What a runner pass returns: one output per sequence, in input order, and the plan it ran
    (item indices per forward pass), so metrics read it rather than plan again."""

    outputs: list
    batches: list[list[int]]
    lengths: list[int]
    computed: int = 0  # tokens the forward passes computed, padding included, shared prefixes once

    @property
    def padding_efficiency(self) -> float:
        return padding_efficiency([[self.lengths[i] for i in b] for b in self.batches])


@dataclass(frozen=True)
class RunnerOp:
    """What a runner does for one op: one forward pass over some sequences, an item's token cost in
    the plan, and, for ops that read one position per item of a causal model, the longest prefix an
    item may share with others (None: this op never shares)."""

    forward: Callable[[list[Sequence[int]]], list]
    cost: Callable[[Sequence[int]], int] = len
    read_limit: Callable[[Sequence[int]], int] | None = None
    # a causal runner's op that reads hidden states its own way (a causal LM's next-token
    # log-probabilities): [B, hidden] at the read positions -> one output per row; None: `readout`
    readout: Callable[[torch.Tensor], list] | None = None


# On a CPU a forward pass is compute-bound from a few hundred tokens on: a bigger pass gains
# nothing and loses to cache misses (bench --lengths, docs/benchmarks.md: 1k-token items 0.78x the
# one-at-a-time loop in passes of 8k tokens, 1.01x in passes of 2k). GPUs keep max_batch_tokens.
CPU_PASS_TOKENS = 2048


class ForwardRunner:
    """Shared plumbing for runners: device, padding, budgeted batches, failures as ModelFailure."""

    def __init__(
        self,
        model,
        *,
        name: str,
        pad_id: int,
        padding_side: str,
        max_batch_tokens: int,
        max_batch_size: int,
        share_prefixes: bool = True,
    ):
        self.model = model
        self.name = name
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.share_prefixes = share_prefixes
        self.device = next(model.parameters()).device

    def ops(self) -> dict[str, RunnerOp]:
        raise NotImplementedError

    def lm_ops(self) -> dict[str, RunnerOp]:
        """The ops a model answers whatever its kind's own (`ops`): a causal LM's next-token
        log-probabilities (Op.NEXT_TOKEN, cluster/engine/critic.py). None here."""
        return {}

    @property
    def pass_tokens(self) -> int:
        """Padded tokens per forward pass: max_batch_tokens, or less on a CPU (CPU_PASS_TOKENS)."""
        if self.device.type == "cpu":
            return min(self.max_batch_tokens, CPU_PASS_TOKENS)
        return self.max_batch_tokens

    def run(self, op: str, seqs: Sequence[Sequence[int]]) -> Ran:
        """The public entry point (backends, replicas, benchmarks): `seqs` planned into
        length-sorted token-budget passes, run, outputs in input order, failures as ModelFailure.
        Items that share a long enough token prefix (the n responses to one prompt, a debiased
        judgement's two orders) run as a group: the prefix once, each item's rest against its keys
        and values (see CausalRunner)."""
        spec = {**self.ops(), **self.lm_ops()}[op]
        seqs = list(seqs)
        lengths = [spec.cost(s) for s in seqs]
        groups = []
        if self.share_prefixes and spec.read_limit is not None and len(seqs) > 1:
            groups = shared_prefix_groups(seqs, [spec.read_limit(s) for s in seqs])
        grouped = {i for g in groups for i in g.members}
        alone = [i for i in range(len(seqs)) if i not in grouped]
        plan = [
            [alone[k] for k in b]
            for b in plan_batches([lengths[i] for i in alone], self.pass_tokens, self.max_batch_size)
        ]
        outputs: list = [None] * len(seqs)
        computed = sum(max(lengths[i] for i in b) * len(b) for b in plan)
        try:
            with torch.inference_mode():
                for batch in plan:
                    self._place(outputs, batch, spec.forward([seqs[i] for i in batch]))
                for group in groups:
                    computed += group.prefix
                    for batch, rest in self._run_group(group, seqs, lengths, spec.readout):
                        self._place(outputs, batch, rest)
                        plan.append(batch)
                        computed += max(lengths[i] for i in batch) * len(batch) - group.prefix * len(batch)
        except torch.OutOfMemoryError as err:
            raise ModelFailure(
                f"model '{self.name}' ran out of memory; lower max_batch_tokens ({self.max_batch_tokens}): {err}"
            ) from err
        except RuntimeError as err:
            raise ModelFailure(f"model '{self.name}' failed on a batch: {type(err).__name__}: {err}") from err
        return Ran(outputs, plan, lengths, computed)

    def _run_group(self, group: PrefixGroup, seqs: list[Sequence[int]], lengths: list[int], readout=None):
        raise NotImplementedError

    @staticmethod
    def _place(outputs: list, batch: list[int], results: list) -> None:
        if len(results) != len(batch):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
        for i, out in zip(batch, results):
            outputs[i] = out

    def _pad(self, seqs, pad_id: int | None = None, side: str | None = None):
        return pad_batch(seqs, self.pad_id if pad_id is None else pad_id, side or self.padding_side).to(self.device)


class PrefixLayer(DynamicLayer):
    """One layer's keys and values of a shared prefix ([1, heads, P, dim]), put in front of every
    row's own keys and values at each forward, never grown: the prefix serves any number of passes,
    and no pass keeps a batch-sized copy of it beyond the layer it is in."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        rows = key_states.shape[0]
        return (
            torch.cat([self.keys.expand(rows, -1, -1, -1), key_states], dim=-2),
            torch.cat([self.values.expand(rows, -1, -1, -1), value_states], dim=-2),
        )


def cache_argument(base) -> str:
    """The keyword a decoder's forward takes its key/value cache in: `cache` from transformers 5.24
    (`past_key_values` is deprecated there, removed in 5.40), `past_key_values` in earlier releases
    and in remote code written for them."""
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class CausalRunner(ForwardRunner):
    """Runners that read one position per item from a causal decoder's last hidden states (a
    reward model's last non-pad token; a critic's verdict position). Two ways to pad, both exact:
    - right padding with no attention mask (the default): in a causal model a real token never
      attends to a later one, so padding at the end cannot reach a read position, and with no mask
      attention takes the backend's fused causal kernel. A padded batch with a mask goes to a path
      that materializes every [T, T] score matrix (2x slower than one at a time at 4k tokens on
      CPU, docs/benchmarks.md).
    - left padding (padding_side "left"): a mask and real-token position ids, as before.
    Shared prefixes: the prefix runs once (batch of one, no padding) and keeps its keys / values
    per layer (`PrefixLayer`); each member's rest runs as a right-padded batch after it, at
    positions P.., its read position in its own rest."""

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self.base = getattr(model, model.base_model_prefix)
        self.read_side = self.padding_side  # how read passes pad (a critic generates with left, reads with right)
        self.cache_arg = cache_argument(self.base)

    def read_index(self, seq: Sequence[int]) -> int:
        """The position whose output is read."""
        raise NotImplementedError

    def readout(self, hidden: torch.Tensor) -> list:
        """[B, hidden] at the read positions -> one output per row."""
        raise NotImplementedError

    def read_rows(self, seqs: list[Sequence[int]], readout: Callable[[torch.Tensor], list] | None = None) -> list:
        """One forward pass over `seqs` (any lengths), the outputs read at each one's read position
        (by `readout`, else the runner's own)."""
        batch = self._pad(seqs, side=self.read_side)
        if self.read_side == "right":  # no mask, no position ids: the fused causal path (see the class docstring)
            hidden = self.base(input_ids=batch.input_ids, use_cache=False).last_hidden_state
        else:
            hidden = self.base(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            ).last_hidden_state
        cols = [off + self.read_index(s) for s, off in zip(seqs, batch.offsets)]
        return self._read(hidden, cols, readout)

    def _read(self, hidden: torch.Tensor, cols: list[int], readout=None) -> list:
        # on the device the hidden states end on (the last one, when layers span several GPUs)
        rows = torch.arange(len(cols), device=hidden.device)
        return (readout or self.readout)(hidden[rows, torch.tensor(cols, device=hidden.device)])

    def _run_group(self, group: PrefixGroup, seqs: list[Sequence[int]], lengths: list[int], readout=None):
        """(item indices, outputs) per pass: the prefix once, then the members' rests."""
        p = group.prefix
        prefix_ids = torch.tensor([list(seqs[group.members[0]][:p])], device=self.device)
        cache = DynamicCache()
        self.base(input_ids=prefix_ids, use_cache=True, **{self.cache_arg: cache})
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        del cache
        rests = [lengths[i] - p for i in group.members]
        for sub in plan_batches(rests, self.pass_tokens, self.max_batch_size):
            batch = [group.members[k] for k in sub]
            yield (
                batch,
                self._read_after_prefix(
                    layers,
                    p,
                    [list(seqs[i][p:]) for i in batch],
                    [self.read_index(seqs[i]) - p for i in batch],
                    readout,
                ),
            )

    def _read_after_prefix(self, layers, p: int, rests: list[list[int]], reads: list[int], readout=None) -> list:
        """Always right-padded: the rows start at position P together, and padding at the end reaches
        no read position. (Left padding would put a gap between the prefix and a row's tokens, which
        a sliding-window layer, counting distance in cache slots, would misread.)"""
        cache = DynamicCache()
        cache.layers = [PrefixLayer(k, v) for k, v in layers]
        batch = self._pad(rests, side="right")
        hidden = self.base(input_ids=batch.input_ids, use_cache=True, **{self.cache_arg: cache}).last_hidden_state
        return self._read(hidden, reads, readout)


class LMHead:
    """A causal LM's next-token logits computed on chosen hidden states only (not on every position
    of a batch: [B, T, vocab] would dwarf the model's activations): the output embeddings, then the
    final soft-capping of models that have one (Gemma-2). `matches_forward` checks once, at load,
    that this is what the model's own forward computes (a logit scale or custom head would not be)."""

    def __init__(self, model):
        self.model = model
        self.lm_head = model.get_output_embeddings()
        self.cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden).float()
        return torch.tanh(logits / self.cap) * self.cap if self.cap else logits

    def matches_forward(self, base, probe: list[int], device) -> bool:
        ids = torch.tensor([probe], device=device)
        with torch.inference_mode():
            own = self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
            ours = self(base(input_ids=ids, use_cache=False).last_hidden_state[:, -1])[0]
        return bool(torch.allclose(own, ours, atol=1e-4 * max(1.0, own.abs().max().item()), rtol=1e-4))
