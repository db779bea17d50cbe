"""The shared tokenization deployment (CPU, autoscaled): one call per request, never per item.

It holds a `ChatEncoder` per served model (tokenizers only, no weights): the same code that
`load_model(...).score` runs in-process, so a conversation gets the same ids, and the same score,
over HTTP as in a notebook.
"""

from __future__ import annotations

from typing import Any

from cluster.core.config import ModelSpec
from cluster.core.errors import ScoringError, UnknownModel
from cluster.core.tokenization import ChatEncoder


class Tokenizer:
    def __init__(self, specs: list[dict[str, Any]]):
        self.encoders = {}
        for fields in specs:
            spec = ModelSpec(**fields)
            self.encoders[spec.name] = ChatEncoder.for_spec(spec)

    def _encoder(self, model: str) -> ChatEncoder:
        if model not in self.encoders:
            raise UnknownModel(f"model '{model}' is not served here")
        return self.encoders[model]

    def encode_inputs(self, model: str, inputs: list, what: str = "conversations") -> list[tuple[list[int], bool]]:
        """Conversations or pre-templated strings -> (ids, truncated) per item."""
        return [(e.ids, e.truncated) for e in self._encoder(model).encode_inputs(inputs, what)]

    def encode_many(self, model: str, requests: list[tuple[list, str]]) -> list:
        """Several requests' inputs in one call; a request with bad input gets its error back in
        its place, so one caller's mistake does not fail the others."""
        out = []
        for inputs, what in requests:
            try:
                out.append(self.encode_inputs(model, inputs, what))
            except ScoringError as err:
                out.append(err)
        return out

    def encode_judge_items(self, model: str, items: list, swap: bool = False) -> list[tuple[list[int], bool]]:
        return [(e.ids, e.truncated) for e in self._encoder(model).encode_judge_items(items, swap=swap)]

    def check_health(self) -> None:
        for encoder in self.encoders.values():
            encoder.tokenizer("ok")
