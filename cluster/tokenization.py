"""Conversations, pre-templated texts and judge items -> token ids (+ truncated flags).

This is the one tokenization component: in-process scoring, the Serve tokenizer deployment and the
Ray Data tokenization stage all call `ChatEncoder`, so an item gets the same ids, and therefore the
same score, whichever way it arrives.

Semantics (model card): `apply_chat_template(conv, tokenize=False)`, then `tokenizer(text)`, then
exactly one BOS at the start whatever the template and the tokenizer each add; too long -> cut from
the left (keeping the BOS and the end of the response) and flag it, or reject with
truncation="error".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cluster.config import ModelSpec
from cluster.errors import ConfigError, InputTooLong, InvalidInput, ModelLoadError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Encoded:
    ids: list[int]
    truncated: bool = False
    original_length: int = 0  # tokens before truncation


@dataclass(frozen=True)
class VerdictTokens:
    """The verdict strings' shared prefix (e.g. `[[`) and the first token where they differ."""

    prefix: list[int]
    token_a: int
    token_b: int


# ---------------------------------------------------------------- validation (input -> messages)


def _where(field: str, index: int | None) -> str:
    return field if index is None else f"{field}[{index}]"


def validate_conversation(conv: Any, where: str, require_assistant_last: bool) -> list[dict]:
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
        if role not in ROLES:
            raise InvalidInput(f"{at}.role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(content, str):
            raise InvalidInput(f"{at}.content: must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if require_assistant_last and messages[-1]["role"] != "assistant":
        raise InvalidInput(
            f"{where}: the last message must be the assistant's response to score, "
            f"got role {messages[-1]['role']!r}"
        )
    return messages


def validate_judge_item(item: Any, where: str) -> dict[str, str]:
    if not isinstance(item, Mapping):
        raise InvalidInput(f"{where}: a judge item must be an object with prompt, response_a, response_b")
    out = {}
    for key in ("prompt", "response_a", "response_b"):
        if key not in item:
            raise InvalidInput(f"{where}.{key}: missing")
        if not isinstance(item[key], str):
            raise InvalidInput(f"{where}.{key}: must be a string, got {type(item[key]).__name__}")
        out[key] = item[key]
    unknown = sorted(set(item) - set(out))
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {unknown} (expected prompt, response_a, response_b)")
    return out


def check_list(items: Any, what: str) -> list:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise InvalidInput(f"{what}: expected a list, got {type(items).__name__}")
    return list(items)


# ---------------------------------------------------------------- the encoder


class ChatEncoder:
    """Turns validated inputs into token ids for one model. Tokenizes in batches (fast tokenizer)."""

    def __init__(self, tokenizer, *, max_length: int, truncation: str, verdicts: tuple[str, str] | None = None,
                 judge_template: str | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = truncation
        self.bos_id: int | None = tokenizer.bos_token_id
        self.judge_template = judge_template
        self.verdict_tokens = self._verdict_tokens(verdicts) if verdicts else None

    @classmethod
    def for_spec(cls, spec: ModelSpec, tokenizer=None) -> ChatEncoder:
        """Build the encoder a spec implies; loads only the tokenizer when none is given."""
        if tokenizer is None:
            tokenizer = load_tokenizer(spec)
        if spec.kind == "critic":
            if not tokenizer.chat_template:
                raise ModelLoadError(f"model '{spec.name}': a critic needs a chat template and {spec.path} has none")
            return cls(tokenizer, max_length=spec.max_length, truncation=spec.truncation,
                       verdicts=spec.verdicts, judge_template=spec.template)
        return cls(tokenizer, max_length=spec.max_length, truncation=spec.truncation)

    # -- public entry points ------------------------------------------------------------------

    def encode_inputs(self, inputs: Any, what: str = "conversations") -> list[Encoded]:
        """Reward inputs: each item is a conversation (list of messages) or a pre-templated string."""
        items = check_list(inputs, what)
        if items and isinstance(items[0], Mapping) and "role" in items[0]:
            raise InvalidInput(
                f"{what}: got a single conversation; pass a list of conversations, e.g. [conversation]"
            )
        texts = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                if not item:
                    raise InvalidInput(f"{_where(what, i)}: the text is empty")
                texts.append(item)
            else:
                messages = validate_conversation(item, _where(what, i), require_assistant_last=True)
                texts.append(self.render(messages, _where(what, i), add_generation_prompt=False))
        return self._encode_texts(texts, what, self.max_length)

    def encode_judge_items(self, items: Any, what: str = "items", swap: bool = False) -> list[Encoded]:
        """Critic inputs: the judge prompt as one user turn, with the generation prompt."""
        if self.judge_template is None or self.verdict_tokens is None:
            raise ConfigError("this encoder belongs to a reward model; judge items need a critic")
        checked = [validate_judge_item(item, _where(what, i)) for i, item in enumerate(check_list(items, what))]
        if swap:
            checked = [{**it, "response_a": it["response_b"], "response_b": it["response_a"]} for it in checked]
        limit = self.max_length - len(self.verdict_tokens.prefix)  # the fast path appends the prefix
        texts = [self._judge_text(it, _where(what, i)) for i, it in enumerate(checked)]
        encoded = self._encode_texts(texts, what, limit, allow_truncation=False)
        for i, enc in enumerate(encoded):
            if enc is None:
                encoded[i] = self._shorten_judge_item(checked[i], _where(what, i), limit)
        return encoded

    def render(self, messages: list[dict], where: str, add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except ValueError as err:
            if not self.tokenizer.chat_template:
                raise InvalidInput(
                    f"{where}: this model's tokenizer has no chat template; send pre-templated text instead"
                ) from None
            raise InvalidInput(f"{where}: the chat template rejected the conversation: {err}") from None
        except Exception as err:  # jinja2 TemplateError and raise_exception() inside templates
            raise InvalidInput(f"{where}: the chat template rejected the conversation: {err}") from None

    # -- internals ------------------------------------------------------------------------------

    def one_bos(self, ids: list[int]) -> list[int]:
        """Exactly one BOS at the start, whether the template, the tokenizer, both or neither added it."""
        if self.bos_id is None:
            return ids
        start = 0
        while start < len(ids) and ids[start] == self.bos_id:
            start += 1
        return [self.bos_id, *ids[start:]]

    def _encode_texts(self, texts: list[str], what: str, limit: int, allow_truncation: bool = True):
        if not texts:
            return []
        batch = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        out: list[Encoded | None] = []
        for i, raw in enumerate(batch):
            ids = self.one_bos(list(raw))
            if len(ids) <= limit:
                out.append(Encoded(ids, False, len(ids)))
            elif self.truncation == "error":
                raise InputTooLong(
                    f"{_where(what, i)}: {len(ids)} tokens, over this model's limit of {limit} "
                    f"(truncation='error'; use truncation='left' to keep the end instead)"
                )
            elif allow_truncation:
                out.append(Encoded(self._cut_left(ids, limit), True, len(ids)))
            else:
                out.append(None)
        return out

    def _cut_left(self, ids: list[int], limit: int) -> list[int]:
        """Keep the BOS and the last tokens (the end of the response)."""
        head = ids[:1] if self.bos_id is not None and ids and ids[0] == self.bos_id else []
        return head + ids[len(ids) - (limit - len(head)):]

    def _judge_text(self, item: dict[str, str], where: str) -> str:
        prompt = self.judge_template.format(
            input=item["prompt"], response_a=item["response_a"], response_b=item["response_b"]
        )
        return self.render([{"role": "user", "content": prompt}], where, add_generation_prompt=True)

    def _shorten_judge_item(self, item: dict[str, str], where: str, limit: int) -> Encoded:
        """A judge prompt that is too long loses the start of the question, never the instructions
        or either response (the verdict depends on all of both). Binary search on characters."""
        def encode(question: str) -> list[int]:
            text = self._judge_text({**item, "prompt": question}, where)
            return self.one_bos(self.tokenizer(text, add_special_tokens=True)["input_ids"])

        question = item["prompt"]
        full = len(encode(question))
        if len(encode("")) > limit:
            raise InputTooLong(
                f"{where}: the two responses and the judge instructions alone exceed this model's "
                f"limit of {limit} tokens; responses are never cut, so this item cannot be judged"
            )
        lo, hi = 1, len(question)  # cut question[:k]; find the smallest k that fits
        while lo < hi:
            mid = (lo + hi) // 2
            if len(encode(question[mid:])) <= limit:
                hi = mid
            else:
                lo = mid + 1
        return Encoded(encode(question[lo:]), True, full)

    def _verdict_tokens(self, verdicts: tuple[str, str]) -> VerdictTokens:
        a = self.tokenizer(verdicts[0], add_special_tokens=False)["input_ids"]
        b = self.tokenizer(verdicts[1], add_special_tokens=False)["input_ids"]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        if n == len(a) or n == len(b):
            raise ConfigError(f"verdicts {verdicts}: one tokenizes as a prefix of the other; they cannot be told apart")
        return VerdictTokens(prefix=list(a[:n]), token_a=a[n], token_b=b[n])


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except Exception as err:
        raise ModelLoadError(f"model '{spec.name}': cannot load a tokenizer from {spec.path!r}: {err}") from None
