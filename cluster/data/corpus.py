"""Corpus rows -> what a model scores, and model outputs -> the row's result columns.

No Ray here: the Ray Data pipeline (cluster/data/pipeline.py) calls these per batch, and tests call them
directly. A row is a plain dict; its own columns are carried through untouched.

Row shapes (detected from the columns, or named):
- "conversations": a `conversations` (or `messages`) column holding one message list per row;
- "prompt_response": `prompt` + `response` (strings; the prompt may also be a message list);
- "pairs": `chosen` + `rejected` (+ `prompt`), each side a string, a message list (the response
  turn(s), or the whole conversation when it starts with the user), or a list of several responses
  (RM-Bench style). `prompt` may be left out when both sides are whole conversations.

Pair results use one convention whatever the model: `margins[i*m + j]` is how much chosen response i
beats rejected response j. For a reward model that is r_chosen - r_rejected; for a critic it is the
log-odds of its verdict, log P(chosen) / P(rejected), so that sigmoid(margin) is P(chosen better)
either way. Ties lose (RewardBench's rule): chosen wins only with margin > 0.

The other two kinds score one response at a time, so their pairs are a reward model's (each side
scored alone, margin = chosen - rejected):
- a process reward model ("prm") scores a solution: `prompt` + `steps` (a list of strings) or
  `response` (one text, split at the model's step_separator), optional `system`; or a conversation
  whose last message is the solution. Its score is the aggregate of its step rewards (the spec's
  step_aggregate); the rewards themselves are kept (`step_rewards`, `weakest_step`, ...). In pairs
  each side is a response text or message list, as for a reward model.
- a pointwise judge ("pointwise") rates `prompt` + `response` (strings; plus any field its
  template names, read from the row's column of that name): its score is the expected rating over
  its scale, `rating` the most probable one. In pairs both responses are rated.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cluster.core.errors import InvalidInput
from cluster.core.inputs import validate_conversation
from cluster.core.results import aggregate_steps, debiased_prob_a, rating_of, swap_ab
from cluster.kinds import kind_of

SHAPES = ("conversations", "prompt_response", "pairs")
CONVERSATION_COLUMNS = ("conversations", "messages")
# Written by the pipeline. An input column with one of these names is kept, moved aside (`aside`).
OUTPUT_COLUMNS = (
    "score",
    "chosen_score",
    "rejected_score",
    "chosen_scores",
    "rejected_scores",
    "prob_chosen",
    "probs_chosen",
    "margin",
    "margins",
    "win_rate",
    "chosen_wins",
    "truncated",
    "num_tokens",
    "source_file",
    "source_row",
    "error",
    "values",
    "chosen_values",
    "rejected_values",
    # process reward models
    "step_rewards",
    "num_steps",
    "weakest_step",
    "weakest_step_reward",
    "chosen_step_rewards",
    "rejected_step_rewards",
    # pointwise judges
    "rating",
    "rating_probs",
    "chosen_rating",
    "rejected_rating",
    "chosen_ratings",
    "rejected_ratings",
)
# The pipeline's own columns between its stages (never written), also kept out of the input's way.
STAGE_COLUMNS = ("_ids", "_truncated", "_chosen_is_b", "_n_chosen", "_error")
RESERVED_COLUMNS = frozenset(OUTPUT_COLUMNS + STAGE_COLUMNS)
ASIDE_PREFIX = "input_"


def _is_moved(name: str) -> bool:
    """Whether an input column is moved aside: a name of ours, or one of ours already prefixed
    (so `input_error` moves to `input_input_error` when `error` takes its place)."""
    while name not in RESERVED_COLUMNS and name.startswith(ASIDE_PREFIX):
        name = name[len(ASIDE_PREFIX) :]
    return name in RESERVED_COLUMNS


def aside(name: str) -> str:
    """Where an input column ends up in the output: its own name, or `input_<name>` when the name
    is one of the pipeline's columns (`error`, `score`, `margin`, ...). Real datasets carry such
    columns (RM-Bench's `error`); they are kept, never overwritten, never a reason to stop. The
    map is one-to-one: `input_<name>` of the input, if there is one, moves on to `input_input_<name>`."""
    return ASIDE_PREFIX + name if _is_moved(name) else name


def move_aside(row: dict[str, Any]) -> dict[str, Any]:
    """A row (a dict of input columns) with every clashing column renamed by `aside`."""
    if not any(_is_moved(k) for k in row):
        return row
    return {aside(k): v for k, v in row.items()}


def moved_columns(columns: Sequence[str]) -> dict[str, str]:
    """{input name: output name} of the moved columns among an output table's columns."""
    found = {}
    for name in columns:
        if name.startswith(ASIDE_PREFIX) and _is_moved(name[len(ASIDE_PREFIX) :]):
            found[name[len(ASIDE_PREFIX) :]] = name
    return found


@dataclass(frozen=True)
class Layout:
    """What a corpus holds, decided once per run (so every output batch has the same columns)."""

    shape: str
    kind: str  # "reward" | "critic" | "prm" | "pointwise"
    multi: bool = False  # pairs with lists of several responses per side
    conversation_column: str = "conversations"
    values: bool = False  # a multi-output reward model: every label's value per scored response too
    step_aggregate: str | None = None  # a prm: how its step rewards become the score (min, last, mean, product)
    rating_values: tuple[float, ...] | None = None  # a pointwise judge: each rating's value, in scale order
    item_fields: tuple[str, ...] = ()  # a pointwise judge: the further fields its template reads from each row
    generate: bool = False  # a judge writes its answers (mode="generate"); they are kept in judge_texts

    @property
    def unit(self) -> str:
        """What one scored unit is, as the kind declares it (cluster/kinds): "reward" (a
        conversation's reward), "pair" (a pair judged in one prompt), "steps" (a solution's step
        rewards), "rating" (a response's rating). The data layer knows units, not kinds."""
        return kind_of(self.kind).unit

    @property
    def result_columns(self) -> tuple[str, ...]:
        return (*self._result_columns, *(("judge_texts",) if self.generate else ()))

    @property
    def _result_columns(self) -> tuple[str, ...]:
        if self.shape != "pairs":
            if self.unit == "steps":
                return (
                    "score",
                    "step_rewards",
                    "num_steps",
                    "weakest_step",
                    "weakest_step_reward",
                    "truncated",
                    "num_tokens",
                )
            if self.unit == "rating":
                return ("score", "rating", "rating_probs", "truncated", "num_tokens")
            return ("score", "truncated", "num_tokens", *(("values",) if self.values else ()))
        if self.unit == "pair":
            sides = ("probs_chosen", "margins") if self.multi else ("prob_chosen",)
        else:
            sides = (
                ("chosen_scores", "rejected_scores", "margins") if self.multi else ("chosen_score", "rejected_score")
            )
        extra = ("win_rate",) if self.multi else ()
        vectors = ("chosen_values", "rejected_values") if self.values else ()
        if self.unit == "steps":
            vectors = ("chosen_step_rewards", "rejected_step_rewards")
        elif self.unit == "rating":
            vectors = ("chosen_ratings", "rejected_ratings") if self.multi else ("chosen_rating", "rejected_rating")
        return (*sides, "margin", *extra, "chosen_wins", "truncated", "num_tokens", *vectors)


def detect_shape(columns: Sequence[str], where: str) -> str:
    cols = set(columns)
    if {"chosen", "rejected"} <= cols:
        return "pairs"
    if any(c in cols for c in CONVERSATION_COLUMNS):
        return "conversations"
    if {"prompt", "response"} <= cols or {"prompt", "steps"} <= cols:  # steps: a prm's solution, as a list
        return "prompt_response"
    if cols & {"chosen", "rejected"}:  # half a pair: name the other half
        missing = ({"chosen", "rejected"} - cols).pop()
        raise InvalidInput(f"{where}: missing column {missing!r} (a preference pair needs 'chosen' and 'rejected')")
    raise InvalidInput(
        f"{where}: cannot tell the row shape from the columns {sorted(cols)}; expected 'conversations' "
        "(a message list), 'prompt' + 'response' (a process reward model: or 'prompt' + 'steps'), or "
        "'prompt' + 'chosen' + 'rejected'"
    )


def check_columns(columns: Sequence[str], shape: str, where: str) -> str | None:
    """Raise naming the missing column; return the conversation column for that shape."""
    cols = set(columns)
    if shape == "conversations":
        for name in CONVERSATION_COLUMNS:
            if name in cols:
                return name
        raise InvalidInput(f"{where}: missing column 'conversations' (shape='conversations')")
    if shape == "prompt_response" and {"prompt", "steps"} <= cols:  # a prm's solutions as lists of steps
        return None
    needed = ("prompt", "response") if shape == "prompt_response" else ("chosen", "rejected")
    for name in needed:
        if name not in cols:
            raise InvalidInput(f"{where}: missing column {name!r} (shape={shape!r} needs {', '.join(needed)})")
    return None


def is_multi(row: Mapping[str, Any]) -> bool:
    """A pair row with several responses per side: a list whose items are responses, not messages."""
    value = row.get("chosen")
    return _is_list(value) and len(value) > 0 and not isinstance(value[0], Mapping)


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


# ---------------------------------------------------------------- rows -> units


def row_units(row: Mapping[str, Any], layout: Layout, where: str) -> list:
    """What one row asks to score, in the order `row_result` expects it: conversations (reward
    model; a prm's solutions too, the last message the solution), a prm's items {prompt, steps or
    response, system}, a pointwise judge's items {prompt, response, ...}, or a critic's judge items."""
    if layout.shape == "conversations":
        if layout.unit == "rating":
            raise InvalidInput(
                f"{where}: a pointwise judge rates 'prompt' + 'response' rows or pairs, not conversations"
            )
        return [_conversation(row.get(layout.conversation_column), f"{where}: {layout.conversation_column}")]
    if layout.shape == "prompt_response":
        if layout.unit == "pair":
            raise InvalidInput(f"{where}: a critic judges pairs; this corpus has no chosen/rejected columns")
        if layout.unit == "steps":
            return [_solution(row, where)]
        if layout.unit == "rating":
            return [
                _rating_item(
                    row,
                    _text(row.get("prompt"), f"{where}: prompt"),
                    _text(row.get("response"), f"{where}: response"),
                    layout,
                    where,
                )
            ]
        context = _context(row, where, required=True)
        return [context + [{"role": "assistant", "content": _text(row.get("response"), f"{where}: response")}]]
    chosen = _side(row, "chosen", layout, where)
    rejected = _side(row, "rejected", layout, where)
    if layout.unit in ("reward", "steps"):
        return chosen + rejected
    if layout.unit == "rating":
        question = _question(row, chosen, where, "a pointwise judge")
        return [_rating_item(row, question, _last_response(c), layout, where) for c in chosen + rejected]
    question = _question(row, chosen, where)
    items = []
    for c in chosen:
        for r in rejected:
            items.append({"prompt": question, "response_a": _last_response(c), "response_b": _last_response(r)})
    return items


def _conversation(value: Any, where: str) -> list[dict]:
    return validate_conversation(value, where, require_assistant_last=True)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{where}: must be a string, got {type(value).__name__}")
    return value


def _context(row: Mapping[str, Any], where: str, required: bool, system: bool = False) -> list[dict]:
    """The prompt as leading messages: a string is one user turn; a message list is kept as is.
    With `system` (a prm) the row's `system` column, when set, is the system message before them."""
    prompt = row.get("prompt")
    if prompt is None:
        if required:
            raise InvalidInput(f"{where}: prompt: missing")
        return []
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = validate_conversation(prompt, f"{where}: prompt", require_assistant_last=False)
    if system and row.get("system") is not None:
        if any(m["role"] == "system" for m in messages):
            raise InvalidInput(f"{where}: system: the prompt's messages hold a system message already")
        messages = [{"role": "system", "content": _text(row["system"], f"{where}: system")}, *messages]
    return messages


def _solution(row: Mapping[str, Any], where: str) -> dict | list[dict]:
    """A prm's solution row: the item {prompt, steps or response, system} for a string prompt (steps
    when the row has them, else its response), or the conversation prompt + response for a prompt
    given as messages."""
    prompt, steps = row.get("prompt"), row.get("steps")
    if prompt is None:
        raise InvalidInput(f"{where}: prompt: missing")
    if not isinstance(prompt, str):
        if steps is not None:
            raise InvalidInput(
                f"{where}: steps: with the prompt given as messages, give the solution as one "
                "'response' text (split at the model's step_separator)"
            )
        return _context(row, where, required=True, system=True) + [
            {"role": "assistant", "content": _text(row.get("response"), f"{where}: response")}
        ]
    item: dict[str, Any] = {"prompt": prompt}
    if row.get("system") is not None:
        item["system"] = _text(row["system"], f"{where}: system")
    if steps is None:
        item["response"] = _text(row.get("response"), f"{where}: response")
        return item
    if not _is_list(steps) or isinstance(steps, Mapping):
        raise InvalidInput(f"{where}: steps: must be a list of strings, got {type(steps).__name__}")
    if not steps:
        raise InvalidInput(f"{where}: steps: empty; a solution needs at least one step")
    item["steps"] = [_text(step, f"{where}: steps[{j}]") for j, step in enumerate(steps)]
    return item


def _rating_item(row: Mapping[str, Any], prompt: str, response: str, layout: Layout, where: str) -> dict[str, str]:
    """A pointwise judge's item: the prompt, the response, and each further field its template
    names, from the row's column of that name."""
    item = {"prompt": prompt, "response": response}
    for field in layout.item_fields:
        if row.get(field) is None:
            raise InvalidInput(f"{where}: {field}: missing (this judge's template uses it)")
        item[field] = _text(row[field], f"{where}: {field}")
    return item


def _side(row: Mapping[str, Any], side: str, layout: Layout, where: str) -> list[list[dict]]:
    """One side of a pair as whole conversations (one, or several when the corpus is multi)."""
    value, at = row.get(side), f"{where}: {side}"
    if value is None:
        raise InvalidInput(f"{at}: missing")
    if layout.multi:
        if not _is_list(value) or not value:
            raise InvalidInput(f"{at}: expected a non-empty list of responses, like the corpus's other rows")
        return [_response(row, v, where, f"{at}[{i}]", layout.unit == "steps") for i, v in enumerate(value)]
    if _is_list(value) and value and not isinstance(value[0], Mapping):
        raise InvalidInput(f"{at}: a list of several responses, but the corpus's other rows hold one per side")
    return [_response(row, value, where, at, layout.unit == "steps")]


def _response(row: Mapping[str, Any], value: Any, row_where: str, where: str, system: bool = False) -> list[dict]:
    if isinstance(value, str):
        return _context(row, row_where, required=True, system=system) + [{"role": "assistant", "content": value}]
    messages = validate_conversation(value, where, require_assistant_last=True)
    if messages[0]["role"] == "assistant":  # the response turn(s) only: the prompt comes first
        return _context(row, row_where, required=True, system=system) + messages
    return messages  # a whole conversation, prompt included


def _question(row: Mapping[str, Any], chosen: list[list[dict]], where: str, judge: str = "a critic") -> str:
    """The judge's question: the prompt string, or the last user turn before the response."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    before = chosen[0][:-1]
    users = [m["content"] for m in before if m["role"] == "user"]
    if not users:
        raise InvalidInput(f"{where}: prompt: {judge} needs the question (a 'prompt' string or a user turn)")
    return users[-1]


def _last_response(conversation: list[dict]) -> str:
    return conversation[-1]["content"]


def critic_swap(item: Mapping[str, str]) -> bool:
    """Without debias, put the chosen response second for about half the pairs (a stable hash of
    the texts, so reruns and both pipelines agree): a judge's position bias then cannot inflate or
    deflate accuracy the way always-chosen-first would."""
    key = "\x00".join((item["prompt"], item["response_a"], item["response_b"])).encode()
    return zlib.crc32(key) & 1 == 1


def critic_orders(items: list[dict], debias: bool) -> tuple[list[dict], list[bool]]:
    """The judge prompts to run for a row's items, and for each whether chosen sits in position B.
    debias runs both orders of every item (forward first, then swapped)."""
    if debias:
        return items + [swap_ab(it) for it in items], [False] * len(items) + [True] * len(items)
    flags = [critic_swap(it) for it in items]
    return [swap_ab(it) if f else it for it, f in zip(items, flags)], flags


# ---------------------------------------------------------------- outputs -> result columns


def logit(p: float) -> float:
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)


def prob_chosen(prob_a: list[float], chosen_is_b: list[bool], n_items: int) -> list[float]:
    """P(chosen better) per item from the judge's P(A) per prompt. With debias (twice as many
    prompts as items: chosen first, then swapped so chosen is B) the orders are combined as
    everywhere else (`debiased_prob_a`)."""
    if len(prob_a) == n_items:
        return [1.0 - p if b else p for p, b in zip(prob_a, chosen_is_b)]
    return [debiased_prob_a(prob_a[i], prob_a[n_items + i]) for i in range(n_items)]


def solution_result(step_rewards: list[float], aggregate: str) -> dict[str, Any]:
    """A prm's columns for one solution: the aggregate, the rewards, and the weakest step (the
    first, on a tie: `StepRewards.weakest_step`)."""
    weakest = min(range(len(step_rewards)), key=step_rewards.__getitem__)
    return {
        "score": aggregate_steps(step_rewards, aggregate),
        "step_rewards": step_rewards,
        "num_steps": len(step_rewards),
        "weakest_step": weakest,
        "weakest_step_reward": step_rewards[weakest],
    }


def row_result(
    layout: Layout,
    outputs: list,
    truncated: bool,
    num_tokens: int,
    *,
    n_chosen: int = 1,
    chosen_is_b: list[bool] | None = None,
    debias: bool = False,
    values: list[list[float]] | None = None,
) -> dict[str, Any]:
    """A row's result columns from its units' outputs: reward scores (chosen first, then
    rejected), a prm's step rewards or a pointwise judge's rating probabilities per unit (in the
    same order), or a critic's P(A) per judge prompt, ordered and flagged as `critic_orders` made them.
    `values`: a multi-output reward model's vectors, one per unit, in the order of `outputs`."""
    if layout.unit == "steps":
        solutions = [solution_result(list(steps), layout.step_aggregate or "min") for steps in outputs]
        if layout.shape != "pairs":
            return {**solutions[0], "truncated": truncated, "num_tokens": num_tokens}
        steps = [s["step_rewards"] for s in solutions]
        out = row_result(
            replace(layout, kind="reward"), [s["score"] for s in solutions], truncated, num_tokens, n_chosen=n_chosen
        )
        chosen_steps, rejected_steps = steps[:n_chosen], steps[n_chosen:]
        return {
            **out,
            "chosen_step_rewards": chosen_steps if layout.multi else chosen_steps[0],
            "rejected_step_rewards": rejected_steps if layout.multi else rejected_steps[0],
        }
    if layout.unit == "rating":
        ratings = [rating_of(probs, layout.rating_values) for probs in outputs]
        if layout.shape != "pairs":
            return {
                "score": ratings[0][0],
                "rating": ratings[0][1],
                "rating_probs": list(outputs[0]),
                "truncated": truncated,
                "num_tokens": num_tokens,
            }
        out = row_result(
            replace(layout, kind="reward"),
            [expected for expected, _ in ratings],
            truncated,
            num_tokens,
            n_chosen=n_chosen,
        )
        best = [rating for _, rating in ratings]
        if layout.multi:
            return {**out, "chosen_ratings": best[:n_chosen], "rejected_ratings": best[n_chosen:]}
        return {**out, "chosen_rating": best[0], "rejected_rating": best[1]}
    if layout.shape != "pairs":
        return {
            "score": outputs[0],
            "truncated": truncated,
            "num_tokens": num_tokens,
            **({"values": values[0]} if layout.values else {}),
        }
    if layout.unit == "reward":
        chosen, rejected = outputs[:n_chosen], outputs[n_chosen:]
        margins = [c - r for c in chosen for r in rejected]
        sides = (
            {"chosen_scores": chosen, "rejected_scores": rejected, "margins": margins}
            if layout.multi
            else {"chosen_score": chosen[0], "rejected_score": rejected[0]}
        )
    else:
        n_items = len(outputs) // 2 if debias else len(outputs)
        probs = prob_chosen(outputs, chosen_is_b or [False] * len(outputs), n_items)
        margins = [logit(p) for p in probs]
        sides = {"probs_chosen": probs, "margins": margins} if layout.multi else {"prob_chosen": probs[0]}
    wins = [m > 0 for m in margins]
    out: dict[str, Any] = {**sides, "margin": sum(margins) / len(margins)}
    if layout.multi:
        out["win_rate"] = sum(wins) / len(wins)
    out.update(chosen_wins=all(wins), truncated=truncated, num_tokens=num_tokens)
    if layout.values:
        chosen_v, rejected_v = values[:n_chosen], values[n_chosen:]
        out.update(
            chosen_values=chosen_v if layout.multi else chosen_v[0],
            rejected_values=rejected_v if layout.multi else rejected_v[0],
        )
    return out
