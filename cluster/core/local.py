"""The in-process encoder and backend of the request core: `ChatEncoder`s and runners in this
process (a notebook's `load_model`, a Ray Data model actor). The Serve layer's twins, over
deployment handles, are in deployments/handles.py."""

from __future__ import annotations

from typing import Any

from cluster.core.service import Call, Part
from cluster.core.tokenization import ChatEncoder, Encoded


class LocalEncoder:
    def __init__(self, encoders: dict[str, ChatEncoder]):
        self.encoders = encoders

    def encode(self, parts: list[Part]) -> list[list[Encoded] | BaseException]:
        out: list = []
        for part in parts:
            try:
                out.append(self.encoders[part.model].encode(part.op, part.inputs, part.what, part.swap, part.options))
            except Exception as err:  # noqa: BLE001 - one part's failure is that part's alone (raised to its caller)
                out.append(err)
        return out


class LocalBackend:
    """Runners in this process. A call is one runner pass: the runner plans its own forward passes
    (length-sorted, under the model's max_batch_tokens), so calls need no token limit."""

    def __init__(self, runners: dict[str, Any]):
        self.runners = runners

    def call_tokens(self, model: str) -> int | None:
        return None

    def run(self, calls: list[Call]) -> list:
        out: list = []
        for call in calls:
            try:
                out.append(self.runners[call.model].run(call.op, call.seqs).outputs)
            except Exception as err:  # noqa: BLE001 - one part's failure is that part's alone (raised to its caller)
                out.append(err)
        return out

    def head(self, model: str) -> dict[str, Any]:
        return self.runners[model].describe_head()


def local_service(config) -> Any:
    """Every model of an AppConfig loaded in this process, behind the request core: the Serve
    app's logic with no Ray. The tests run the HTTP routes over it (`create_app(local_service(...))`);
    its forward passes run on the event loop's thread, so it is for tests and light local use,
    not a server under load."""
    from cluster.core.loading import load_model
    from cluster.core.service import ScoringService

    loaded = {m.name: load_model(m.spec()) for m in config.models}
    return ScoringService(config.models, LocalEncoder({n: m.encoder for n, m in loaded.items()}),
                          LocalBackend({n: m.runner for n, m in loaded.items()}), ensembles=config.ensembles,
                          max_items=config.max_items_per_request)
