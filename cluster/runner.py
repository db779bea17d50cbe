"""What reward and critic runners share: padding, budgeted batches, failures as ModelFailure; and
the loaded-model base class that pairs a spec with its encoder and runner."""

from __future__ import annotations

import torch

from cluster.batching import pad_batch, run_batched
from cluster.config import ModelSpec
from cluster.errors import ModelFailure
from cluster.tokenization import ChatEncoder


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

    def _run(self, seqs, fn, cost=len) -> list:
        if not seqs:
            return []
        try:
            with torch.inference_mode():
                return run_batched(seqs, fn, self.max_batch_tokens, self.max_batch_size, cost=cost)
        except torch.OutOfMemoryError as err:
            raise ModelFailure(
                f"model '{self.name}' ran out of memory; lower max_batch_tokens ({self.max_batch_tokens}): {err}"
            ) from err
        except RuntimeError as err:
            raise ModelFailure(f"model '{self.name}' failed on a batch: {type(err).__name__}: {err}") from err

    def _pad(self, seqs, pad_id: int | None = None):
        return pad_batch(seqs, self.pad_id if pad_id is None else pad_id, self.padding_side).to(self.device)


class LoadedModel:
    """A spec with the encoder (text -> ids) and runner (ids -> outputs) it was loaded into."""

    kind: str

    def __init__(self, spec: ModelSpec, encoder: ChatEncoder, runner: ForwardRunner):
        self.spec = spec
        self.encoder = encoder
        self.runner = runner

    @property
    def name(self) -> str:
        return self.spec.name
