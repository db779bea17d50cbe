"""What the protocol modules share: a reward model's per-label values for a request, the
classification activation the inference servers apply, and the error styles built from a
status table."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cluster.core.config import Ensemble, ModelSpec
from cluster.core.errors import InvalidInput, UnknownModel
from cluster.core.inputs import EncodeOptions, Piece, Prompt
from cluster.core.results import sigmoid
from cluster.core.service import Rewards, ScoringService
from cluster.kinds import KINDS, NAMES, kind_of

ONE_LABEL = {"labels": ["LABEL_0"], "problem_type": None}
# the kinds served as causal LMs (a next-token head): what generative scores read
CAUSAL_KINDS = tuple(name for name, kind in KINDS.items() if kind.head == "next_token")


async def label_values(
    service: ScoringService, model: ModelSpec | Ensemble, inputs: list, what: str, options: EncodeOptions | None = None
) -> tuple[Rewards, list[list[float]], dict[str, Any]]:
    """(the rewards, every label's value per item, the head's labels and problem type). A one-label
    model's value is its reward, shaped when the model has shaping (what an RL client reads as the
    reward); a multi-output model gives its raw outputs; an ensemble its combined reward."""
    result = await service.submit(service.rewards_job(model, inputs, what, options))
    head = ONE_LABEL if isinstance(model, Ensemble) else await service.head(model.name)
    rows = result.values if result.values is not None else [[s] for s in result.scores]
    return result, rows, head


def classify_activation(values: list[float], problem_type: str | None) -> list[float]:
    """vLLM's classify activation (vllm-project/vllm@1c713679,
    vllm/model_executor/layers/pooler/activations.py: get_classification_activation_function and
    PoolerClassify): identity for regression heads, sigmoid per label for multi-label ones, else
    sigmoid for one label and softmax over several. TEI's /predict without raw_scores is the same
    (router/src/... core/src/infer.rs `predict`: sigmoid for one label, softmax otherwise)."""
    if problem_type == "regression":
        return list(values)
    if problem_type == "multi_label_classification" or len(values) == 1:
        return [sigmoid(v) for v in values]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def top_label(row: list[float], labels: list[str]) -> str:
    return labels[max(range(len(row)), key=row.__getitem__)]


def status_style(statuses: dict[int, int], body: Callable[[Any, int], dict]):
    """An ErrorStyle: our status mapped through `statuses` (e.g. 422 -> 400), then `body(failure, status)`."""

    def style(f) -> tuple[int, dict]:
        status = statuses.get(f.status, f.status)
        return status, body(f, status)

    return style


def causal_lm(service: ScoringService, name: str | None, route: str) -> ModelSpec:
    """The causal LM a generative-scoring request names (none: the first served); a model of
    another kind, or an ensemble, is refused (400) saying it is not a causal LM."""
    try:
        return service.resolve(name, CAUSAL_KINDS)
    except (InvalidInput, UnknownModel) as err:
        if name is None:
            raise
        try:
            other = service.resolve(name, NAMES)
        except UnknownModel:
            raise err from None
        what = "an ensemble of reward models" if isinstance(other, Ensemble) else kind_of(other).title
        raise InvalidInput(
            f"model '{other.name}' is {what}, not a causal LM: {route} reads a causal LM's next-token "
            "probabilities (serve it as a critic or a pointwise judge)"
        ) from None


def query_item_prompts(
    query: str | list[int], items: list, *, item_first: bool, add_special_tokens: bool, join_texts: bool
) -> list[Prompt]:
    """Each item's prompt: query then item (item then query with `item_first`). vLLM's
    /generative_scoring tokenizes the query with `add_special_tokens` and each item without, and
    joins the ids (`join_texts` False); SGLang's /v1/score joins two texts into one and tokenizes
    it as the tokenizer does by default (`join_texts`), or joins token ids as given."""
    out = []
    for i, item in enumerate(items):
        where = f"items[{i}]"
        if join_texts and isinstance(query, str):
            text = f"{item}{query}" if item_first else f"{query}{item}"
            pieces: tuple[Piece, ...] = (Piece(text, special=True, where=where),)
        else:
            q = Piece(query if isinstance(query, str) else tuple(query), special=add_special_tokens, where="query")
            it = Piece(item if isinstance(item, str) else tuple(item), special=False, where=where)
            pieces = (it, q) if item_first else (q, it)
        out.append(Prompt(pieces))
    return out
