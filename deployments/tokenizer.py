"""The shared tokenization deployment (CPU, autoscaled): one call per model per flow, never per item.

It holds a `ChatEncoder` per served model (tokenizers only, no weights): the same code that
`load_model(...).score` runs in-process, so a conversation gets the same ids, and the same score,
over HTTP as in a notebook.
"""

from __future__ import annotations

import logging
from typing import Any

from cluster.core.config import ModelSpec
from cluster.core.errors import ModelFailure, ScoringError, UnknownModel
from cluster.core.inputs import EncodeOptions
from cluster.core.memory import return_big_blocks
from cluster.engine.encoders import ChatEncoder

logger = logging.getLogger("ray.serve")


class Tokenizer:
    def __init__(self, specs: list[dict[str, Any]]):
        return_big_blocks()  # a 30 MB body's memory is returned after it (cluster/core/memory.py)
        self.encoders = {}
        for fields in specs:
            spec = ModelSpec(**fields)
            self.encoders[spec.name] = ChatEncoder.for_spec(spec)

    def encode(self, model: str, parts: list[tuple[str, list, str, bool, EncodeOptions | None]]) -> list:
        """Several parts' inputs for one model, each (op, inputs, what, swap, options) -> (ids,
        truncated) per item. A part with bad input gets its error back in its place,
        so one caller's mistake does not fail the others gathered with it."""
        if model not in self.encoders:
            raise UnknownModel(f"model '{model}' is not served here")
        encoder, out = self.encoders[model], []
        for op, inputs, what, swap, options in parts:
            try:
                encoded = encoder.encode(op, inputs, what, swap, options)
                out.append([(e.ids, e.truncated) for e in encoded])
            except ScoringError as err:
                out.append(err)
            except Exception as err:  # noqa: BLE001 - a tokenizer bug met by one part is that part's alone
                logger.exception("tokenizing %s for model '%s' failed", what, model)
                out.append(
                    ModelFailure(
                        f"{what}: the tokenizer of model '{model}' failed on this request "
                        f"({type(err).__name__}); the operator's log has the details"
                    )
                )
        return out

    def check_health(self) -> None:
        for encoder in self.encoders.values():
            encoder.tokenizer("ok")
