"""Conversations, pre-templated texts and judge items -> token ids (+ truncated flags).

This is the one tokenization component: in-process scoring, the Serve tokenizer deployment and the
Ray Data tokenization stage all call `ChatEncoder`, so an item gets the same ids, and therefore the
same score, whichever way it arrives.

Semantics: the ids the model card's own computation produces, with one correction.
- Reward models: `apply_chat_template(conv, tokenize=False)`, then `tokenizer(text)` (the tokenizer
  adds whatever special tokens its post-processor adds: a BOS for Llama-3, nothing for Qwen or
  GPT-NeoX, [CLS]/[SEP] for BERT-style encoders).
- Critics (Skywork-Critic card): `apply_chat_template(..., tokenize=True, add_generation_prompt=True)`,
  which tokenizes the rendered text with `add_special_tokens=False`: the template alone decides.
- The one correction: a doubled leading BOS (template and tokenizer both add one) collapses to one,
  the Skywork note. A BOS is never added where the card's computation has none: many tokenizers
  declare a BOS token and never add it (GPT-NeoX, SmolLM/ChatML), and some have none (Qwen).
- Encoders with no chat template (the OpenAssistant DeBERTa/ELECTRA reward models) score a
  (question, answer) text pair the way their cards do: `tokenizer(question, answer)`.
Too long -> cut from the left (keeping a leading BOS/[CLS] and the end of the response) and flag it,
or reject with truncation="error". A long text is tokenized by the part the cut keeps (a window at
that end, exact: cluster/engine/windows.py), so its cost is bounded by `max_length`, not its size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cluster.core.config import ModelSpec
from cluster.core.errors import ConfigError, InputTooLong, InvalidInput, ModelLoadError
from cluster.core.inputs import (
    DEFAULT_OPTIONS,
    ChoiceTokens,
    Encoded,
    EncodeOptions,
    Prompt,
    VerdictTokens,
    check_list,
    check_text,
    is_token_ids,
    item_location,
    pack_segments,
    shown,
    shown_int,
    validate_conversation,
    validate_judge_item,
    validate_rating_item,
    validate_step_item,
)
from cluster.core.results import swap_ab
from cluster.engine.weights import local_spec
from cluster.engine.windows import BATCH_CHARS, GUARD_TOKENS, WHOLE_CHARS, Windows
from cluster.kinds import Op, kind_of
from cluster.kinds.pointwise import rating_extra_fields


class ChatEncoder:
    """Turns validated inputs into token ids for one model. Tokenizes in batches (fast tokenizer)."""

    def __init__(
        self,
        tokenizer,
        *,
        max_length: int,
        truncation: str,
        verdicts: tuple[str, str] | None = None,
        judge_template: str | None = None,
        add_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.truncation = truncation
        self.bos_id: int | None = tokenizer.bos_token_id
        # a leading token that left truncation keeps: the BOS, or an encoder's [CLS] (its pooled token)
        self.head_ids = {i for i in (tokenizer.bos_token_id, tokenizer.cls_token_id) if i is not None}
        self.add_special_tokens = add_special_tokens
        self.judge_template = judge_template
        # no chat template, but a [SEP]-style pair format: the encoder cards' tokenizer(question, answer)
        self.text_pairs = not tokenizer.chat_template and tokenizer.sep_token_id is not None
        self.verdict_tokens = self._verdict_tokens(verdicts) if verdicts else None
        self.windows = Windows(tokenizer)

    @classmethod
    def for_spec(cls, spec: ModelSpec, tokenizer=None) -> ChatEncoder:
        """Build the encoder a spec implies; loads only the tokenizer when none is given."""
        if tokenizer is None:
            tokenizer = load_tokenizer(spec)
        kind = kind_of(spec)
        if kind.needs_chat_template and not tokenizer.chat_template:
            raise ModelLoadError(f"model '{spec.name}': {kind.title} needs a chat template and {spec.path} has none")
        if kind.encoder == "steps":
            return StepEncoder(tokenizer, spec)
        if kind.encoder == "rating":
            return RatingEncoder(tokenizer, spec)
        if kind.encoder == "judge":
            # the critic card tokenizes with apply_chat_template(tokenize=True): no special tokens added
            return cls(
                tokenizer,
                max_length=spec.max_length,
                truncation=spec.truncation,
                verdicts=spec.verdicts,
                judge_template=spec.template,
                add_special_tokens=False,
            )
        return cls(tokenizer, max_length=spec.max_length, truncation=spec.truncation)

    # -- public entry points ------------------------------------------------------------------

    def encode(
        self,
        op: str,
        inputs: Any,
        what: str = "conversations",
        swap: bool = False,
        options: EncodeOptions | None = None,
    ) -> list[Encoded]:
        """What the request core asks for: reward inputs for op "score", causal-LM prompts for
        "next_token", judge items otherwise."""
        if op == Op.NEXT_TOKEN:
            return self.encode_prompts(inputs, what, options or DEFAULT_OPTIONS)
        if op in ("score", "tokenize"):
            return self.encode_inputs(inputs, what, options or DEFAULT_OPTIONS)
        return self.encode_judge_items(inputs, what, swap=swap)

    def encode_inputs(
        self, inputs: Any, what: str = "conversations", options: EncodeOptions = DEFAULT_OPTIONS
    ) -> list[Encoded]:
        """Reward inputs: each item is a conversation (list of messages), a pre-templated string, or
        token ids (a list of ints, used as given: the client tokenized it)."""
        items = check_list(inputs, what)
        if items and isinstance(items[0], Mapping) and "role" in items[0]:
            raise InvalidInput(f"{what}: got a single conversation; pass a list of conversations, e.g. [conversation]")
        texts: list[str | tuple[str, str] | list[int]] = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                check_text(item, item_location(what, i))
                text = self.strip_padding(item) if options.strip_padding else item
                if not text:
                    raise InvalidInput(
                        f"{item_location(what, i)}: the text is empty"
                        + (" once its padding and EOS tokens are stripped" if item else "")
                    )
                texts.append(text)
            elif isinstance(item, list) and not item and what in ("input", "input_ids"):
                raise InvalidInput(f"{item_location(what, i)}: an empty list: no token ids (nor messages) to score")
            elif is_token_ids(item):
                texts.append(self._check_ids(item, item_location(what, i)))
            else:
                messages = validate_conversation(
                    item, item_location(what, i), require_assistant_last=True, any_role=options.any_role
                )
                if self.text_pairs:
                    texts.append(self._text_pair(messages, item_location(what, i)))
                else:
                    texts.append(self.render(messages, item_location(what, i), add_generation_prompt=False))
        return self._encode_texts(texts, what, options.limit(self.max_length, what), options=options)

    def encode_prompts(
        self, prompts: Any, what: str = "items", options: EncodeOptions = DEFAULT_OPTIONS
    ) -> list[Encoded]:
        """Causal-LM prompts read at their next token (`Prompt`s, op "next_token"): each piece
        tokenized as the request says (a text with or without the tokenizer's special tokens, a
        doubled leading BOS collapsed as everywhere; token ids as given), the pieces joined in
        order. A text shared by several prompts (the query) is tokenized once. Never cut: the
        token after the prompt's end is what is read, so a prompt over max_length is refused, as is
        a token id to read (`options.read_tokens`) outside the vocabulary."""
        items = check_list(prompts, what)
        vocab = len(self.tokenizer)
        for k, token in enumerate(options.read_tokens):
            if not 0 <= token < vocab:
                raise InvalidInput(
                    f"label_token_ids[{k}]: token id {shown_int(token)} is outside this model's vocabulary "
                    f"(0..{vocab - 1})"
                )
        texts: dict[tuple[str, bool], list[int] | None] = {}
        for i, prompt in enumerate(items):
            if not isinstance(prompt, Prompt) or not prompt.pieces:
                raise InvalidInput(f"{item_location(what, i)}: an empty prompt")
            chars = 0
            for piece in prompt.pieces:
                if isinstance(piece.value, str):
                    if len(piece.value) > WHOLE_CHARS:
                        raise InputTooLong(
                            f"{piece.where}: {len(piece.value)} characters; a text is tokenized whole up to "
                            f"{WHOLE_CHARS} characters"
                        )
                    check_text(piece.value, piece.where)
                    texts[(piece.value, piece.special)] = None
                    chars += len(piece.value)
                else:
                    self._check_ids(list(piece.value), piece.where)
            if self.windows.certainly_over(chars, self.max_length):
                raise InputTooLong(
                    f"{item_location(what, i)}: {chars} characters, more than {self.max_length} tokens whatever "
                    f"they say: over this model's limit of {self.max_length}"
                )
        for special in (True, False):
            keys = [k for k in texts if k[1] == special]
            for key, ids in zip(keys, self._tokenize([text for text, _ in keys], add_special_tokens=special)):
                texts[key] = ids
        out = []
        for i, prompt in enumerate(items):
            ids = [
                t
                for piece in prompt.pieces
                for t in (texts[(piece.value, piece.special)] if isinstance(piece.value, str) else piece.value)
            ]
            if not ids:
                raise InvalidInput(f"{item_location(what, i)}: the prompt is empty once tokenized")
            if len(ids) > self.max_length:
                raise InputTooLong(
                    f"{item_location(what, i)}: {len(ids)} tokens, over this model's limit of {self.max_length}"
                )
            out.append(Encoded(ids, False))
        return out

    def strip_padding(self, text: str) -> str:
        """Padding that a client decoded into its text, removed as OpenRLHF's own reward server did
        (openrlhf 0.5.4, openrlhf/cli/serve_rm.py `strip_sequence`): its clients sent left-padded
        prompts and right-padded responses decoded with the special tokens. Leading runs of pad/EOS
        tokens go; a trailing run goes too, but one EOS is kept where the run held one (the server
        appended one; its clients always wrote one after the response). Text without padding is
        returned unchanged.

        Only the text's true ends count (`\\A`, `\\Z`): padding is the last thing a padded text
        holds, so a text that ends in anything else, a newline or a space after an EOS included
        (every ChatML template ends `<|im_end|>\\n`), has no trailing padding. (`$` would also match
        before a final newline and eat the `<|im_end|>` before it: the score read at another token.)"""
        marks = [t for t in {self.tokenizer.pad_token, self.tokenizer.eos_token} if t]
        if not marks:
            return text
        either = "|".join(re.escape(t) for t in sorted(marks, key=len, reverse=True))
        text = re.sub(rf"\A(?:{either})+", "", text)
        tail = re.search(rf"(?:{either})+\Z", text)
        if tail is None:
            return text
        eos = self.tokenizer.eos_token
        return text[: tail.start()] + (eos if eos and eos in tail.group(0) else "")

    def _check_ids(self, ids: list[int], where: str) -> list[int]:
        vocab = len(self.tokenizer)
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidInput(
                f"{where}: token id {shown_int(bad)} is outside this model's vocabulary (0..{vocab - 1})"
            )
        return list(ids)

    def encode_judge_items(self, items: Any, what: str = "items", swap: bool = False) -> list[Encoded]:
        """Critic inputs: the judge prompt as one user turn, with the generation prompt."""
        if self.judge_template is None or self.verdict_tokens is None:
            raise ConfigError("this encoder belongs to a reward model; judge items need a critic")
        checked = [validate_judge_item(item, item_location(what, i)) for i, item in enumerate(check_list(items, what))]
        if swap:
            checked = [swap_ab(it) for it in checked]
        return self._encode_judge_texts(checked, what, self.verdict_tokens.prefix)

    def _encode_judge_texts(self, checked: list[dict[str, str]], what: str, prefix: list[int]) -> list[Encoded]:
        """Judge prompts of checked items, each leaving room for the answer prefix the fast path
        appends; one too long is shortened by its response (`_shorten_judge_item`)."""
        limit = self.max_length - len(prefix)
        texts = [self._judge_text(it, item_location(what, i)) for i, it in enumerate(checked)]
        encoded = self._encode_texts(texts, what, limit, allow_truncation=False)
        for i, enc in enumerate(encoded):
            if enc is None:
                encoded[i] = self._shorten_judge_item(checked[i], item_location(what, i), limit)
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

    def collapse_bos(self, ids: list[int]) -> list[int]:
        """A doubled leading BOS (template and tokenizer both wrote one) becomes one. Nothing is
        ever added: where the card's computation has no BOS, neither do we."""
        start = 0
        while self.bos_id is not None and start + 1 < len(ids) and ids[start + 1] == ids[start] == self.bos_id:
            start += 1
        return ids[start:] if start else ids

    def _tokenize(
        self, texts: list[str | tuple[str, str] | list[int]], add_special_tokens: bool | None = None
    ) -> list[list[int]]:
        """The card's tokenizer call, batched. Text pairs go through the tokenizer's own pair format
        ([CLS] q [SEP] a [SEP]); where it marks the answer with token type 1, the type rides in the
        id (see pack_segments), since every transport carries one list of ints per item. Token ids
        pass as they are."""
        special = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        out: list[list[int]] = [t if isinstance(t, list) else [] for t in texts]
        for chunk in _by_chars(texts):  # at most BATCH_CHARS characters per tokenizer call
            singles = [i for i in chunk if isinstance(texts[i], str)]
            pairs = [i for i in chunk if isinstance(texts[i], tuple)]
            if singles:
                batch = self.tokenizer([texts[i] for i in singles], add_special_tokens=special)
                for i, ids in zip(singles, batch["input_ids"]):
                    out[i] = self.collapse_bos(list(ids))
            if pairs:
                batch = self.tokenizer(
                    [texts[i][0] for i in pairs],
                    [texts[i][1] for i in pairs],
                    add_special_tokens=special,
                    return_token_type_ids=True,
                )
                for row, i in enumerate(pairs):
                    out[i] = pack_segments(batch["input_ids"][row], batch["token_type_ids"][row])
        return out

    def _encode_texts(
        self,
        texts: list[str | tuple[str, str] | list[int]],
        what: str,
        limit: int,
        allow_truncation: bool = True,
        options: EncodeOptions = DEFAULT_OPTIONS,
    ):
        """Each text's Encoded within `limit` tokens: whole when it fits, cut as the request or spec
        says, refused (InputTooLong) under truncation "error"; None where the caller shortens it
        itself (`allow_truncation=False`: judge prompts). A long text is cut through a window at the
        kept end (`Windows.kept`); one that cannot be is tokenized whole up to WHOLE_CHARS."""
        if not texts:
            return []
        # a request's own cut: a side, or keep the last k (vLLM's truncate_prompt_tokens), whatever the spec says
        truncation = (
            options.truncate
            if isinstance(options.truncate, str)
            else "left"
            if options.truncate is not None
            else self.truncation
        )
        special = self.add_special_tokens if options.add_special_tokens is None else options.add_special_tokens
        out: list[Encoded | None] = [None] * len(texts)
        whole: list[int] = []  # the texts tokenized whole
        refused: dict[int, InputTooLong] = {}  # known too long without tokenizing
        for i, text in enumerate(texts):
            chars = len(text[0]) + len(text[1]) if isinstance(text, tuple) else len(text)
            bound = self.max_length if truncation == "none" else limit  # "none" (/tokenize): as long as the model takes
            if isinstance(text, list) or chars <= (bound + GUARD_TOKENS) * 4:
                whole.append(i)
                continue
            where = item_location(what, i)
            if allow_truncation and truncation in ("left", "right") and isinstance(text, str):
                kept = self._kept(text, limit, truncation, special)
                if kept is not None:
                    out[i] = Encoded(kept, True)
                    continue
            if truncation in ("error", "none") or not allow_truncation:
                if self.windows.certainly_over(chars, bound):
                    if not allow_truncation:
                        continue  # the caller shortens it (None)
                    refused[i] = InputTooLong(
                        f"{where}: {chars} characters, more than {bound} tokens whatever they say: over this "
                        f"model's limit of {bound}"
                        + (
                            " (truncation='error'; use truncation='left' to keep the end instead)"
                            * (options.truncate is None)
                        )
                    )
                    continue
            if chars > WHOLE_CHARS:
                if not allow_truncation:
                    continue
                refused[i] = InputTooLong(
                    f"{where}: {chars} characters; a text is tokenized whole up to {WHOLE_CHARS} characters, and "
                    "this one cannot be cut at a word boundary near its kept end: send less of it"
                )
                continue
            whole.append(i)
        tokenized = dict(zip(whole, self._tokenize([texts[i] for i in whole], options.add_special_tokens)))
        for i in range(len(texts)):  # the first item refused, by index, is the one named
            if i in refused:
                raise refused[i]
            if i in tokenized:
                out[i] = self._fit(tokenized[i], limit, truncation, allow_truncation, item_location(what, i), options)
        return out

    def _fit(
        self, ids: list[int], limit: int, truncation: str, allow_truncation: bool, where: str, options: EncodeOptions
    ) -> Encoded | None:
        if len(ids) <= limit:
            return Encoded(ids, False)
        if truncation == "error":
            raise InputTooLong(
                f"{where}: {len(ids)} tokens, over this model's limit of {limit}"
                + (
                    " (truncation='error'; use truncation='left' to keep the end instead)"
                    if options.truncate is None
                    else ""
                )
            )
        if not allow_truncation:
            return None
        if truncation == "right":
            return Encoded(ids[:limit], True)
        return Encoded(self._cut_left(ids, limit), True)

    def _kept(self, text: str, limit: int, side: str, special: bool) -> list[int] | None:
        """What `_fit` keeps of a long text, from a window at the kept end (None: no exact window);
        the text is known to be longer than `limit` tokens once the window gives that many."""
        if side == "right":  # the first ids, a doubled BOS collapsed as for the whole text
            kept = self.windows.kept(text, limit + 2, "right", special)
            return None if kept is None else self.collapse_bos(kept)[:limit]
        # the leading BOS / [CLS] the whole text's ids start with, and the last ids
        start = self._tokenize([text[: 4 * self.windows.max_token_chars + 64]], special)[0][:1]
        head = start if start and start[0] in self.head_ids else []
        kept = self.windows.kept(text, limit - len(head), "left", special)
        return None if kept is None else head + kept

    def _cut_left(self, ids: list[int], limit: int) -> list[int]:
        """Keep a leading BOS / [CLS] (the encoder's pooled position) and the last tokens (the end
        of the response)."""
        head = ids[:1] if ids and ids[0] in self.head_ids else []
        return head + ids[len(ids) - (limit - len(head)) :]

    def _text_pair(self, messages: list[dict], where: str) -> tuple[str, str]:
        roles = [m["role"] for m in messages]
        if roles != ["user", "assistant"]:
            raise InvalidInput(
                f"{where}: this model has no chat template and scores a (question, answer) pair as its "
                f"card does; send one user turn then one assistant turn (got roles {shown(roles)}), or "
                "pre-templated text"
            )
        return messages[0]["content"], messages[1]["content"]

    def _judge_text(self, item: dict[str, str], where: str) -> str:
        prompt = self.judge_template.format(
            input=item["prompt"], response_a=item["response_a"], response_b=item["response_b"]
        )
        return self.render([{"role": "user", "content": prompt}], where, add_generation_prompt=True)

    def _shorten_judge_item(self, item: dict[str, str], where: str, limit: int) -> Encoded:
        """A judge prompt that is too long loses the start of the question, never the instructions
        or either response (the verdict depends on all of both). Binary search on characters."""

        def encode(question: str) -> list[int]:
            return self._tokenize([self._judge_text({**item, "prompt": question}, where)])[0]

        others = sum(len(v) for k, v in item.items() if k != "prompt")
        if self.windows.certainly_over(others, limit) or len(encode("")) > limit:
            responses = "the response" if "response" in item else "the two responses"
            raise InputTooLong(
                f"{where}: {responses} and the judge instructions alone exceed this model's "
                f"limit of {limit} tokens; responses are never cut, so this item cannot be judged"
            )
        # what is kept of the question is at most `limit` tokens, so at most this many characters
        question = item["prompt"][-(limit + 1) * self.windows.max_token_chars :]
        lo, hi = 1, len(question)  # cut question[:k]; find the smallest k that fits
        while lo < hi:
            mid = (lo + hi) // 2
            if len(encode(question[mid:])) <= limit:
                hi = mid
            else:
                lo = mid + 1
        return Encoded(encode(question[lo:]), True)

    def _verdict_tokens(self, verdicts: tuple[str, str]) -> VerdictTokens:
        a = self.tokenizer(verdicts[0], add_special_tokens=False)["input_ids"]
        b = self.tokenizer(verdicts[1], add_special_tokens=False)["input_ids"]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        if n == len(a) or n == len(b):
            raise ConfigError(f"verdicts {verdicts}: one tokenizes as a prefix of the other; they cannot be told apart")
        return VerdictTokens(prefix=list(a[:n]), token_a=a[n], token_b=b[n])

    def _choice_tokens(self, strings: Sequence[str], what: str) -> ChoiceTokens:
        """The answer strings' shared prefix and the one token that tells each apart (e.g. `[[` and
        the rating's digit). Strings that differ only later, or first at the same token, cannot be
        read in one step: refused, naming them."""
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in strings]
        n = 0
        while all(len(x) > n for x in ids) and len({x[n] for x in ids}) == 1:
            n += 1
        short = [t for t, x in zip(strings, ids) if len(x) <= n]
        if short:
            raise ConfigError(
                f"{what}: {short[0]!r} tokenizes as the shared prefix of all the others; they cannot be told apart"
            )
        first: dict[int, str] = {}
        for t, x in zip(strings, ids):
            if x[n] in first:
                raise ConfigError(
                    f"{what}: {first[x[n]]!r} and {t!r} begin with the same token after their shared prefix, so one "
                    "forward pass cannot tell them apart; use ratings that are one token each in this tokenizer "
                    "(e.g. a 1-9 scale) or another rating_format"
                )
            first[x[n]] = t
        return ChoiceTokens(prefix=list(ids[0][:n]), tokens=[x[n] for x in ids])


class StepEncoder(ChatEncoder):
    """A process reward model's inputs -> token ids with the step tag after each step.

    An item is {prompt, steps} or {prompt, response} (split at `step_separator`; pieces that are only
    whitespace are dropped), with an optional system message; or a conversation whose last message
    is the solution (split the same way); or a text / token ids already holding the tags (vLLM's
    /pooling). The solution is written as the card writes it: each step with its tag
    (`step_format`), joined by `step_joiner`, as the assistant turn of the chat template
    (Qwen2.5-Math-PRM) or into `prm_template` (Math-Shepherd: "{prompt} {response}"), then
    tokenized as the card does (`tokenizer.encode`: its own special tokens). The tag id is the last
    token of the tag alone (the cards' `encode(step_tag)[-1]`); each item must hold it exactly once per
    step. A prm reads every step, so an input over max_length is refused, never cut."""

    def __init__(self, tokenizer, spec: ModelSpec):
        super().__init__(tokenizer, max_length=spec.max_length, truncation="error")
        self.spec = spec
        tag_ids = tokenizer(spec.step_tag, add_special_tokens=False)["input_ids"]
        if not tag_ids:
            raise ConfigError(f"model '{spec.name}': step_tag {spec.step_tag!r} tokenizes to nothing")
        self.tag_id: int = tag_ids[-1]
        if spec.prm_template is None and not tokenizer.chat_template:
            raise ModelLoadError(
                f"model '{spec.name}': its tokenizer has no chat template; give prm_template (e.g. "
                "'{prompt} {response}', as Math-Shepherd's card formats its input)"
            )

    def encode(
        self, op: str, inputs: Any, what: str = "items", swap: bool = False, options: EncodeOptions | None = None
    ) -> list[Encoded]:
        options = options or DEFAULT_OPTIONS
        items = check_list(inputs, what)
        texts: list[str | list[int]] = []
        steps: list[int | None] = []  # the number of tags each item must hold (None: as sent)
        for i, item in enumerate(items):
            where = item_location(what, i)
            if isinstance(item, Mapping) and "role" not in item:
                prompt, solution, system = validate_step_item(item, where)
                head = ([{"role": "system", "content": system}] if system is not None else []) + [
                    {"role": "user", "content": prompt}
                ]
                text, n = self._tagged(head, solution, where)
            elif isinstance(item, str):
                text, n = check_text(item, where), None
                if not text:
                    raise InvalidInput(f"{where}: the text is empty")
            elif is_token_ids(item):
                text, n = self._check_ids(item, where), None
            elif options.tagged:  # the client wrote the tags itself: its messages as sent, in the card's format
                messages = validate_conversation(item, where, require_assistant_last=True, any_role=options.any_role)
                if self.spec.prm_template is not None:  # the card's plain text, not a chat template
                    text, n = self._plain(messages[:-1], messages[-1]["content"], where), None
                else:
                    text, n = self.render(messages, where, add_generation_prompt=False), None
            else:
                messages = validate_conversation(item, where, require_assistant_last=True, any_role=options.any_role)
                text, n = self._tagged(messages[:-1], messages[-1]["content"], f"{where}[{len(messages) - 1}]")
            texts.append(text)
            steps.append(n)
        limit = options.limit(self.max_length, what)
        for i, text in enumerate(texts):  # never cut: one certainly too long is refused untokenized
            if isinstance(text, str) and (self.windows.certainly_over(len(text), limit) or len(text) > WHOLE_CHARS):
                raise InputTooLong(
                    f"{item_location(what, i)}: {len(text)} characters, over what this model takes ({limit} "
                    f"tokens; {WHOLE_CHARS} characters tokenized at most); a prm reads every step, so its input is "
                    "never cut"
                )
        out = []
        for i, (ids, n) in enumerate(zip(self._tokenize(texts, options.add_special_tokens), steps)):
            where = item_location(what, i)
            found = ids.count(self.tag_id)
            if n is not None and found != n:
                raise InvalidInput(
                    f"{where}: {n} step(s) but the step tag {self.spec.step_tag!r} (token {self.tag_id}) is found "
                    f"{found} time(s) once tokenized; the text around a tag must not merge with it (check step_format)"
                )
            if found == 0:
                raise InvalidInput(
                    f"{where}: no step tag {self.spec.step_tag!r} (token {self.tag_id}) in it; a prm "
                    "reads a reward at each tag after a step (or send prompt and steps)"
                )
            if len(ids) > limit:
                raise InputTooLong(
                    f"{where}: {len(ids)} tokens, over this model's limit of {limit}; a prm reads every "
                    "step, so its input is never cut"
                )
            out.append(Encoded(ids, False))
        return out

    def split(self, response: str) -> list[str]:
        """A solution given as one text -> its steps (pieces that are only whitespace dropped)."""
        return [s for s in response.split(self.spec.step_separator) if s.strip()]

    def _plain(self, head: list[dict], response: str, where: str) -> str:
        """`prm_template` filled with the one user message before the solution and the tagged solution."""
        users = [m["content"] for m in head if m["role"] == "user"]
        if len(users) != 1 or len(head) != 1:
            raise InvalidInput(
                f"{where}: this prm reads plain text ({self.spec.prm_template!r}): send one prompt, "
                f"no system message (got roles {[m['role'] for m in head]})"
            )
        return self.spec.prm_template.format(prompt=users[0], response=response)

    def _tagged(self, head: list[dict], solution: list[str] | str, where: str) -> tuple[str, int]:
        """The card's text for a solution after `head` (system / user messages), and its step count."""
        steps = self.split(solution) if isinstance(solution, str) else solution
        if not steps:
            raise InvalidInput(
                f"{where}: the response has no steps (nothing but whitespace between separators "
                f"{self.spec.step_separator!r})"
            )
        tag = self.spec.step_tag
        for j, step in enumerate(steps):
            if tag in step:
                raise InvalidInput(f"{where}: step {j} contains the step tag {tag!r}; a step's own text must not")
        response = self.spec.step_joiner.join(
            self.spec.step_format.format(step=s, tag=tag, index=j + 1) for j, s in enumerate(steps)
        )
        if self.spec.prm_template is not None:
            return self._plain(head, response, where), len(steps)
        if self.spec.system_prompt is not None and not any(m["role"] == "system" for m in head):
            head = [{"role": "system", "content": self.spec.system_prompt}, *head]
        messages = [*head, {"role": "assistant", "content": response}]
        return self.render(messages, where, add_generation_prompt=False), len(steps)


class RatingEncoder(ChatEncoder):
    """A pointwise judge's items ({prompt, response} and any field its template adds) -> the judge
    prompt as one user turn (after the spec's system prompt, if any) with the generation prompt,
    tokenized as the critic card does (the template alone decides the special tokens)."""

    def __init__(self, tokenizer, spec: ModelSpec):
        super().__init__(
            tokenizer,
            max_length=spec.max_length,
            truncation=spec.truncation,
            judge_template=spec.template,
            add_special_tokens=False,
        )
        self.system_prompt = spec.system_prompt
        self.extra_fields = rating_extra_fields(spec.template)
        self.rating_tokens = self._choice_tokens(spec.rating_strings, f"model '{spec.name}': ratings")
        self.verdict_tokens = self.rating_tokens  # what the fast path appends (the shared prefix) and reads

    def encode(
        self, op: str, inputs: Any, what: str = "items", swap: bool = False, options: EncodeOptions | None = None
    ) -> list[Encoded]:
        if op == Op.NEXT_TOKEN:  # any causal LM's next-token log-probabilities
            return self.encode_prompts(inputs, what, options or DEFAULT_OPTIONS)
        if op in ("score", "tokenize"):
            raise InvalidInput(f"{what}: a pointwise judge rates items {{prompt, response}}; it has no reward to score")
        return self.encode_judge_items(inputs, what)

    def encode_judge_items(self, items: Any, what: str = "items", swap: bool = False) -> list[Encoded]:
        checked = [
            validate_rating_item(item, item_location(what, i), self.extra_fields)
            for i, item in enumerate(check_list(items, what))
        ]
        return self._encode_judge_texts(checked, what, self.rating_tokens.prefix)

    def _judge_text(self, item: dict[str, str], where: str) -> str:
        extra = {f: item[f] for f in self.extra_fields}
        prompt = self.judge_template.format(input=item["prompt"], response=item["response"], **extra)
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        return self.render([*system, {"role": "user", "content": prompt}], where, add_generation_prompt=True)


def _by_chars(texts: Sequence) -> list[list[int]]:
    """The texts' indices in consecutive groups of at most BATCH_CHARS characters (one text alone
    may be more): the tokenizer's memory is in proportion to what one call holds."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, text in enumerate(texts):
        chars = 0 if isinstance(text, list) else len(text) if isinstance(text, str) else len(text[0]) + len(text[1])
        if groups[-1] and size + chars > BATCH_CHARS:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += chars
    return [g for g in groups if g]


def load_tokenizer(spec: ModelSpec):
    from transformers import AutoTokenizer

    spec = local_spec(spec, weights=False)  # a URI path: this node's copy of its small files (engine/weights.py)
    try:
        return AutoTokenizer.from_pretrained(
            spec.path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except Exception as err:
        raise ModelLoadError(f"model '{spec.name}': cannot load a tokenizer from {spec.path!r}: {err}") from None
