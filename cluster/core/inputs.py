"""What a request's items may be, checked before any tokenizer sees them: conversations, judge,
rating and step items, token ids, the options an encoding takes (`EncodeOptions`) and what it
gives back (`Encoded`). The request core and the front doors validate with these; the encoders
(cluster/engine/encoders.py) turn what passes into token ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.core.errors import InvalidInput

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    truncated: bool = False  # cut to the limit (a long text's count before the cut is never computed)


@dataclass(frozen=True)
class EncodeOptions:
    """A request's own tokenization settings, where a protocol lets its client choose them (vLLM's
    `truncate_prompt_tokens` and `add_special_tokens`, TEI's `truncate`); the model's spec decides
    whatever is left as None. Only reward inputs take options; judge items always follow the card."""

    # "error" | "left" (keep the end) | "right" (keep the start) | k: keep the last k | "none": no limit
    truncate: str | int | None = None
    add_special_tokens: bool | None = None  # None: as the card's computation (see the module docstring)
    any_role: bool = False  # messages with any role, the last one not necessarily the assistant's
    strip_padding: bool = False  # texts: drop padding decoded into the text (OpenRLHF <= 0.8 clients)
    tagged: bool = False  # a prm's conversations already hold the step tags (vLLM's /pooling): rendered as sent
    # token ids a request reads at the next position (generative scores): checked against the
    # vocabulary with its prompts, before any forward pass
    read_tokens: tuple[int, ...] = ()

    def limit(self, max_length: int, what: str) -> int:
        if self.truncate == "none":
            return 1 << 62
        if isinstance(self.truncate, int) and not isinstance(self.truncate, bool):
            if not 1 <= self.truncate:
                raise InvalidInput(f"{what}: truncate_prompt_tokens must be at least 1, got {shown_int(self.truncate)}")
            if self.truncate > max_length:
                raise InvalidInput(
                    f"{what}: truncate_prompt_tokens ({shown_int(self.truncate)}) is larger than this "
                    f"model's max_length ({max_length})"
                )
            return self.truncate
        return max_length


DEFAULT_OPTIONS = EncodeOptions()


@dataclass(frozen=True)
class ChoiceTokens:
    """Several answer strings (a pointwise judge's ratings as it writes them): their shared prefix
    (e.g. `[[`) and, per string, the one token where it differs from all the others."""

    prefix: list[int]
    tokens: list[int]


@dataclass(frozen=True)
class VerdictTokens:
    """The verdict strings' shared prefix (e.g. `[[`) and the first token where they differ."""

    prefix: list[int]
    token_a: int
    token_b: int


@dataclass(frozen=True)
class Piece:
    """One piece of a prompt: a text (tokenized with the tokenizer's special tokens or without) or
    token ids (used as given); `where` names it in errors (`query`, `items[2]`)."""

    value: str | tuple[int, ...]
    special: bool = False
    where: str = "input"


@dataclass(frozen=True)
class Prompt:
    """A causal LM's prompt as a request builds it, read at its next token: pieces tokenized one by
    one and joined in order (vLLM's /generative_scoring: the query with the request's
    add_special_tokens, then the item without; SGLang's /v1/score: query + item as one text)."""

    pieces: tuple[Piece, ...]


# ---------------------------------------------------------------- validation (input -> messages)


def item_location(field: str, index: int | None) -> str:
    return field if index is None else f"{field}[{index}]"


SHOWN_CHARS = 80  # the most of a client's own value an error message repeats


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A client's value as an error message repeats it: its repr (lone surrogates escaped, so the
    message is always valid UTF-8), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown_int(n: int) -> str:
    """An integer as an error message repeats it; one of thousands of digits by its size."""
    return str(n) if abs(n) < 10**24 else f"{'-' if n < 0 else ''}a {len(str(abs(n)))}-digit number"


def unicode_problem(text: str) -> str | None:
    """What makes `text` not valid Unicode, or None. JSON lets a client send a lone UTF-16
    surrogate (`"\\ud800"`), which no tokenizer (nor UTF-8, nor an answer that repeats it) can take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (
            f"not valid Unicode: a lone surrogate {text[err.start]!r} at character {err.start} (a "
            "\\ud800-\\udfff escape must be one of a high-low pair)"
        )
    return None


def check_text(text: str, where: str) -> str:
    """Text that can be tokenized: valid Unicode."""
    problem = unicode_problem(text)
    if problem is not None:
        raise InvalidInput(f"{where}: {problem}")
    return text


def validate_conversation(conv: Any, where: str, require_assistant_last: bool, any_role: bool = False) -> list[dict]:
    """Check one conversation and return it as plain `{"role", "content"}` dicts."""
    if isinstance(conv, str | bytes) or not isinstance(conv, Sequence):
        raise InvalidInput(f"{where}: a conversation must be a list of messages, got {type(conv).__name__}")
    if len(conv) == 0:
        raise InvalidInput(f"{where}: the conversation is empty")
    messages = []
    for j, msg in enumerate(conv):
        at = f"{where}[{j}]"
        if not isinstance(msg, Mapping):
            raise InvalidInput(f"{at}: a message must be an object with 'role' and 'content', got {type(msg).__name__}")
        role, content = msg.get("role"), msg.get("content")
        if any_role and isinstance(role, str) and role:
            check_text(role, f"{at}.role")
        elif role not in ROLES:
            raise InvalidInput(f"{at}.role: unknown role {shown(role)} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise InvalidInput(f"{at}.content: must be a string, got {type(content).__name__}")
        check_text(content, f"{at}.content")
        messages.append({"role": role, "content": content})
    if require_assistant_last and not any_role and messages[-1]["role"] != "assistant":
        raise InvalidInput(
            f"{where}: the last message must be the assistant's response to score, got role {messages[-1]['role']!r}"
        )
    return messages


def validate_judge_item(item: Any, where: str) -> dict[str, str]:
    if not isinstance(item, Mapping):
        raise InvalidInput(f"{where}: a judge item must be an object with prompt, response_a, response_b")
    return _text_fields(item, where, ("prompt", "response_a", "response_b"))


def _text_fields(item: Mapping, where: str, keys: Sequence[str], required_by: Sequence[str] = ()) -> dict[str, str]:
    """Exactly these string fields (`required_by`: the ones a template asks for, said so when missing)."""
    out = {}
    for key in keys:
        if key not in item:
            raise InvalidInput(
                f"{where}.{key}: missing" + (" (this judge's template uses it)" if key in required_by else "")
            )
        if not isinstance(item[key], str):
            raise InvalidInput(f"{where}.{key}: must be a string, got {type(item[key]).__name__}")
        out[key] = check_text(item[key], f"{where}.{key}")
    unknown = sorted(map(str, set(item) - set(out)))
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {shown(unknown)} (expected {', '.join(keys)})")
    return out


def validate_rating_item(item: Any, where: str, extra_fields: Sequence[str] = ()) -> dict[str, str]:
    """A pointwise judge's item: the prompt, the one response to rate, and any other field its
    template names (e.g. Prometheus' rubric)."""
    keys = ("prompt", "response", *extra_fields)
    if not isinstance(item, Mapping):
        raise InvalidInput(f"{where}: a rating item must be an object with {', '.join(keys)}")
    return _text_fields(item, where, keys, required_by=extra_fields)


STEP_ITEM_KEYS = ("prompt", "steps", "response", "system")


def validate_step_item(item: Mapping, where: str) -> tuple[str, list[str] | str, str | None]:
    """A prm's item: {prompt, steps: [...]} or {prompt, response: "..."} (split by the model's
    separator), and an optional system message. -> (prompt, steps or response, system)."""
    unknown = sorted(map(str, set(item) - set(STEP_ITEM_KEYS)))
    if unknown:
        raise InvalidInput(
            f"{where}: unknown field(s) {shown(unknown)} (expected prompt, and steps or response; system is optional)"
        )
    if "prompt" not in item:
        raise InvalidInput(f"{where}.prompt: missing")
    for key in ("prompt", "system", "response"):
        if key in item and not isinstance(item[key], str):
            raise InvalidInput(f"{where}.{key}: must be a string, got {type(item[key]).__name__}")
    if ("steps" in item) == ("response" in item):
        raise InvalidInput(
            f"{where}: give the solution as steps (a list of strings) or as response (one text split "
            "at the model's step_separator), " + ("not both" if "steps" in item else "got neither")
        )
    check_text(item["prompt"], f"{where}.prompt")
    system = check_text(item["system"], f"{where}.system") if "system" in item else None
    if "response" in item:
        return item["prompt"], check_text(item["response"], f"{where}.response"), system
    steps = item["steps"]
    if isinstance(steps, str | bytes | Mapping) or not isinstance(steps, Sequence):
        raise InvalidInput(f"{where}.steps: must be a list of strings, got {type(steps).__name__}")
    if not steps:
        raise InvalidInput(f"{where}.steps: empty; a solution needs at least one step")
    for j, step in enumerate(steps):
        if not isinstance(step, str):
            raise InvalidInput(f"{where}.steps[{j}]: must be a string, got {type(step).__name__}")
        check_text(step, f"{where}.steps[{j}]")
    return item["prompt"], list(steps), system


def is_token_ids(item: Any) -> bool:
    """A list of ints (not bools): an item the client tokenized itself."""
    return (
        isinstance(item, list | tuple)
        and len(item) > 0
        and all(isinstance(t, int) and not isinstance(t, bool) for t in item)
    )


def check_list(items: Any, what: str) -> list:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise InvalidInput(f"{what}: expected a list, got {type(items).__name__}")
    return list(items)


# ---------------------------------------------------------------- the encoder


# Segment B of a text pair (token type 1, for encoders that embed token types, e.g. BERT/ELECTRA)
# travels inside the id: id + SEGMENT_B. Only a runner built for such a model unpacks it; any other
# consumer fails loudly on the out-of-range id rather than scoring the pair as one segment.
SEGMENT_B = 1 << 32


def pack_segments(ids: Sequence[int], type_ids: Sequence[int]) -> list[int]:
    return [i + SEGMENT_B if t else i for i, t in zip(ids, type_ids)]


def unpack_segments(seq: Sequence[int]) -> tuple[list[int], list[int]]:
    """-> (token ids, token type ids)."""
    return [i % SEGMENT_B for i in seq], [int(i >= SEGMENT_B) for i in seq]
