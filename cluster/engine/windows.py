"""Long texts tokenized by the part truncation keeps, so a request's cost is bounded before its
text meets the tokenizer (issue: one 30 MB message took 4 GB and stalled the process for 40 s).

A text is cut to `limit` tokens from one side: left truncation keeps its last tokens (and a leading
BOS / [CLS]), right truncation its first. Tokenizing the whole text to keep a few thousand of its
tokens costs memory in proportion to the text (about 600 bytes per token in a fast tokenizer's
encoding and the Python lists); tokenizing a window at the kept end costs the window.

The window's ids are the whole text's ids where both tokenizations agree: a window that starts
(left) or ends (right) at a pre-tokenizer boundary of the whole text is tokenized, after its first
(or before its last) pre-token, exactly as the whole text is, since pre-tokens are tokenized each
on its own. A boundary used here is a space after a non-space character: every pre-tokenizer
accepted by `windowable` splits there (byte-level BPE with the GPT-2 / Llama-3 / Qwen regexes,
whitespace and BERT pre-tokenizers, Metaspace with split), which is checked on the tokenizer
itself at load. The ids kept must all come from pre-tokens after the window's first (before its
last) one, which the token offsets show; a window that is too short for that is doubled.

Whatever cannot be windowed (a tokenizer that does not split at spaces, a text with no such space
near its kept end, a slow tokenizer with no offsets, texts that are never cut) is tokenized whole
only up to WHOLE_CHARS characters, and refused above with InputTooLong naming the limit.
"""

from __future__ import annotations

import json
import re
from functools import cached_property

GUARD_TOKENS = 16  # tokens a window holds beyond what is kept (the first pre-tokens' share)
CHARS_PER_TOKEN = 6  # a first window's characters per token kept (English runs at about 4)
WHOLE_CHARS = 1 << 18  # the most characters one text is tokenized whole (about 150 MB at one char per token)
BATCH_CHARS = 1 << 18  # the most characters of texts tokenized in one tokenizer call
BOUNDARY = re.compile(r"(?<=\S) ")  # a space after a non-space: a pre-token starts there
# pre-tokenizers that split at every BOUNDARY (Split: with a regex, each match its own pre-token)
SPLITTING = {"ByteLevel", "Split", "Whitespace", "WhitespaceSplit", "BertPreTokenizer", "Metaspace"}
PROBE = "Alpha beta, gamma  delta 123 4.5 x-ray (eps) 'zeta' end."


class Windows:
    """The windows of one tokenizer; `ids_call(texts)` is the encoder's own tokenizer call."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @cached_property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for: its longest vocabulary string (a byte-level
        token's string has a character per byte, at least as many as the text characters it is)."""
        longest = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        return max(1, longest)

    @cached_property
    def windowable(self) -> bool:
        """A fast tokenizer whose pre-tokenizer splits at every BOUNDARY (checked on a probe text)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None or not getattr(self.tokenizer, "is_fast", False):
            return False
        try:
            pre = json.loads(backend.to_str()).get("pre_tokenizer")
        except (ValueError, TypeError):
            return False
        if not _splitting(pre) or backend.pre_tokenizer is None:
            return False
        try:
            pieces = backend.pre_tokenizer.pre_tokenize_str(PROBE)
        except Exception:  # noqa: BLE001 - a pre-tokenizer that cannot say: not windowed
            return False
        starts = {start for _, (start, _) in pieces}
        return all(m.start() in starts for m in BOUNDARY.finditer(PROBE))

    def certainly_over(self, chars: int, limit: int) -> bool:
        """A text of `chars` characters holds more than `limit` tokens whatever it says."""
        return chars > (limit + 1) * self.max_token_chars

    def kept(self, text: str, keep: int, side: str, special: bool) -> list[int] | None:
        """The first (`side` "right") or last ("left") `keep` ids of `tokenizer(text)`, from a window
        at that end; None where no window gives them exactly (the caller tokenizes whole or refuses)."""
        if not self.windowable:
            return None
        width = (keep + GUARD_TOKENS) * CHARS_PER_TOKEN
        while width < len(text):
            got = self._from_window(text, keep, side, special, width)
            if got is not None:
                return got
            width *= 2
        return None

    def _from_window(self, text: str, keep: int, side: str, special: bool, width: int) -> list[int] | None:
        if side == "left":
            first = BOUNDARY.search(text, len(text) - width)
            if first is None:
                return None
            window = text[first.start() :]
            second = BOUNDARY.search(window, 1)  # the kept ids must start in a later pre-token
            if second is None:
                return None
            ids, offsets = self._encode(window, special)
            # the first id whose text starts at or after the second boundary (offsets of added
            # special tokens are (0, 0): a leading BOS is not it)
            start = next((k for k, (a, b) in enumerate(offsets) if b > a and a >= second.start()), None)
            if start is None or len(ids) - start < keep:
                return None
            return ids[len(ids) - keep :]
        end = None
        for match in BOUNDARY.finditer(text, 0, min(len(text), width)):
            end = match
        if end is None:
            return None
        window = text[: end.start()]
        last = None
        for match in BOUNDARY.finditer(window):
            last = match
        if last is None:
            return None
        ids, offsets = self._encode(window, special)
        # the ids whose text ends by the window's last boundary (a leading BOS's (0, 0) included;
        # the last pre-token's ids, then any special token appended, end after it)
        inside = 0
        for _, b in offsets:
            if b > last.start():
                break
            inside += 1
        if inside < keep:
            return None
        return ids[:keep]

    def _encode(self, text: str, special: bool) -> tuple[list[int], list[tuple[int, int]]]:
        out = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        return list(out["input_ids"]), [tuple(o) for o in out["offset_mapping"]]


def _splitting(pre) -> bool:
    """The pre-tokenizer (its JSON) holds one that splits at every space after a non-space."""
    if not isinstance(pre, dict):
        return False
    kind = pre.get("type")
    if kind == "Sequence":
        return any(_splitting(p) for p in pre.get("pretokenizers", ()))
    if kind == "ByteLevel":
        return bool(pre.get("use_regex", True))
    if kind == "Split":
        return "Regex" in (pre.get("pattern") or {}) and pre.get("behavior") == "Isolated"
    if kind == "Metaspace":
        return bool(pre.get("split", True))
    return kind in SPLITTING
