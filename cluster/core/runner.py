"""What reward and critic runners share: padding, budgeted batches, failures as ModelFailure; and
the loaded-model base class that pairs a spec with its encoder and runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from cluster.core.batching import padding_efficiency, plan_batches, run_batched
from cluster.core.config import ModelSpec
from cluster.core.errors import ModelFailure
from cluster.core.tokenization import ChatEncoder


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
        return PaddedBatch(self.input_ids.to(device), self.attention_mask.to(device),
                           self.position_ids.to(device), self.offsets)


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
        ids[row, start:start + len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[row, start:start + len(s)] = 1
        pos[row, start:start + len(s)] = torch.arange(len(s))
        offsets.append(start)
    return PaddedBatch(ids, mask, pos, offsets)




@dataclass(frozen=True)
class Ran:
    """What a runner pass returns: one output per sequence, in input order, and the plan it ran
    (item indices per forward pass), so metrics read it rather than plan again."""

    outputs: list
    batches: list[list[int]]
    lengths: list[int]

    @property
    def padding_efficiency(self) -> float:
        return padding_efficiency([[self.lengths[i] for i in b] for b in self.batches])


class ForwardRunner:
    """Shared plumbing for runners: device, padding, budgeted batches, failures as ModelFailure."""

    def __init__(self, model, *, name: str, pad_id: int, padding_side: str, max_batch_tokens: int,
                 max_batch_size: int):
        self.model = model
        self.name = name
        self.pad_id = pad_id
        self.padding_side = padding_side
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.device = next(model.parameters()).device

    def ops(self) -> dict[str, tuple[Callable[[list[Sequence[int]]], list], Callable[[Sequence[int]], int]]]:
        """op name -> (the function one forward pass runs, an item's token cost in the plan)."""
        raise NotImplementedError

    def run(self, op: str, seqs: Sequence[Sequence[int]]) -> Ran:
        """The public entry point (backends, replicas, benchmarks): `seqs` planned into
        length-sorted token-budget passes, run, outputs in input order, failures as ModelFailure."""
        fn, cost = self.ops()[op]
        seqs = list(seqs)
        lengths = [cost(s) for s in seqs]
        plan = plan_batches(lengths, self.max_batch_tokens, self.max_batch_size) if seqs else []
        try:
            with torch.inference_mode():
                outputs = run_batched(seqs, fn, self.max_batch_tokens, self.max_batch_size, plan=plan)
        except torch.OutOfMemoryError as err:
            raise ModelFailure(
                f"model '{self.name}' ran out of memory; lower max_batch_tokens ({self.max_batch_tokens}): {err}"
            ) from err
        except RuntimeError as err:
            raise ModelFailure(f"model '{self.name}' failed on a batch: {type(err).__name__}: {err}") from err
        return Ran(outputs, plan, lengths)

    def _pad(self, seqs, pad_id: int | None = None):
        return pad_batch(seqs, self.pad_id if pad_id is None else pad_id, self.padding_side).to(self.device)


class LoadedModel:
    """A spec with the encoder (text -> ids) and runner (ids -> outputs) it was loaded into, and
    the request core over the two (`service`): in-process calls take the same flow as a route."""

    kind: str

    def __init__(self, spec: ModelSpec, encoder: ChatEncoder, runner: ForwardRunner):
        self.spec = spec
        self.encoder = encoder
        self.runner = runner

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def service(self) -> Any:
        from cluster.core.local import LocalBackend, LocalEncoder
        from cluster.core.service import ScoringService

        return ScoringService([self.spec], LocalEncoder({self.name: self.encoder}),
                              LocalBackend({self.name: self.runner}))
