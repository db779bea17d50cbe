"""Long texts are tokenized by the part truncation keeps (cluster/engine/windows.py), and what is
kept is exactly what tokenizing the whole text and cutting it keeps: every family's tokenizer, both
sides, vLLM's keep-the-last-k, with and without special tokens, texts of every kind of character.
What cannot be windowed is tokenized whole up to WHOLE_CHARS and refused above, naming the limit."""

from __future__ import annotations

import pytest
from helpers import card_score_ids
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster import ModelSpec, load_model
from cluster.core.errors import InputTooLong
from cluster.core.inputs import EncodeOptions
from cluster.engine.windows import WHOLE_CHARS

# pieces that stress pre-tokenizers at a cut: digit runs (grouped by 3 from their start in Llama-3's
# regex), contractions, punctuation runs, newlines, several spaces, CJK, emoji, combining marks
PIECES = [
    "word",
    "Paris",
    "1234567",
    "3.14",
    "don't",
    "'s",
    "?!",
    "...",
    "\n",
    "\n\n",
    "  ",
    "\t",
    "中文字",
    "🙂",
    "é",
    "e\u0301",
    "x-ray",
    "(a)",
    "<b>",
    "__init__",
    "\u00a0",
]
ARCHES = ["llama", "gemma2", "qwen2", "qwen3", "mistral", "smollm", "gpt_neox"]


def long_text(draw_pieces: list[str], seps: list[str], repeat: int) -> str:
    return "".join(p + s for p, s in zip(draw_pieces * repeat, seps * repeat))


texts = st.builds(
    long_text,
    st.lists(st.sampled_from(PIECES), min_size=20, max_size=60),
    st.lists(st.sampled_from([" ", "", " ", "\n", "  "]), min_size=20, max_size=60),
    st.integers(min_value=40, max_value=120),
)


@pytest.fixture(scope="module")
def encoders(model_dirs):
    """Each family's reward model encoder, max_length 64 (so a few thousand characters are long)."""
    out = {}
    for arch in ARCHES:
        path = model_dirs(f"long-{arch}", arch=arch)
        out[arch] = load_model(ModelSpec(name=arch, path=str(path), kind="reward", max_length=64)).encoder
    return out


def whole_cut(encoder, text: str, limit: int, side: str, special: bool) -> list[int]:
    """The whole text tokenized, then cut as `_fit` cuts it: the reference the window must equal."""
    ids = encoder._tokenize([text], special)[0]
    assert len(ids) > limit  # a long text: the cut is what is compared
    return ids[:limit] if side == "right" else encoder._cut_left(ids, limit)


@pytest.mark.parametrize("arch", ARCHES)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts, special=st.booleans(), side=st.sampled_from(["left", "right"]), keep=st.sampled_from([8, 64]))
def test_the_window_keeps_exactly_what_the_whole_text_keeps(encoders, arch, text, special, side, keep):
    encoder = encoders[arch]
    assert encoder.windows.windowable
    got = encoder._kept(text, keep, side, special)
    assert got is not None, "a text with spaces throughout is windowed"
    assert got == whole_cut(encoder, text, keep, side, special)


@pytest.mark.parametrize("arch", ARCHES)
def test_a_30_mb_message_is_scored_as_its_cut_whole_and_fast(encoders, arch):
    """The attack's body: one message of 6.3M words. The ids are the whole text's cut (checked on a
    shorter text of the same words, whose cut is the same ids) and the encode takes well under a
    second, where tokenizing the whole took seconds and gigabytes."""
    import time

    encoder = encoders[arch]
    tail = [{"role": "assistant", "content": "Paris is the capital. 1234567 don't."}]
    huge = [{"role": "user", "content": "word " * 6_300_000}, *tail]
    small = [{"role": "user", "content": "word " * 20_000}, *tail]
    started = time.perf_counter()
    [big] = encoder.encode_inputs([huge])
    seconds = time.perf_counter() - started
    reference = whole_cut(encoder, encoder.render(small, "c", add_generation_prompt=False), 64, "left", True)
    assert big.truncated and big.ids == reference
    assert seconds < 2.0, seconds


@pytest.mark.parametrize("variant", ["llama", "llama-bos-in-template-only", "gemma2"])
def test_long_conversations_score_as_the_card_on_the_cut_ids(reward_dir, variant):
    """Every place a BOS can come from (template, tokenizer, both, neither): the windowed left cut
    keeps it, and the score is the card's forward pass on the whole text's cut ids."""
    path = reward_dir(variant)
    rm = load_model(ModelSpec(name="rm", path=str(path), kind="reward", max_length=48))
    conv = [{"role": "user", "content": "Tell me. " * 3000}, {"role": "assistant", "content": "No 12345 thanks."}]
    text = rm.encoder.render(conv, "c", add_generation_prompt=False)
    assert len(text) > (48 + 16) * 4  # long enough to be windowed
    reference = whole_cut(rm.encoder, text, 48, "left", True)
    [res] = rm.score_detailed([conv])
    assert res.truncated and res.num_tokens == 48
    assert res.score == pytest.approx(card_score_ids(path, reference), abs=1e-4)
    [enc] = rm.encoder.encode_inputs([conv], options=EncodeOptions(truncate=16))  # vLLM's keep-the-last-k
    assert enc.ids == whole_cut(rm.encoder, text, 16, "left", True)
    [enc] = rm.encoder.encode_inputs([conv], options=EncodeOptions(truncate="right"))  # TEI's right cut
    assert enc.ids == whole_cut(rm.encoder, text, 48, "right", True)


def test_what_cannot_be_windowed_is_tokenized_whole_up_to_the_limit_then_refused(reward_dir):
    rm = load_model(ModelSpec(name="rm", path=str(reward_dir("llama")), kind="reward", max_length=32))
    fits = "a" * (WHOLE_CHARS // 2)  # no space anywhere: no window; tokenized whole, cut as ever
    [enc] = rm.encoder.encode_inputs([fits])
    assert enc.truncated and enc.ids == whole_cut(rm.encoder, fits, 32, "left", True)
    with pytest.raises(InputTooLong, match=rf"inputs\[1\]: {WHOLE_CHARS + 1} characters; .* up to {WHOLE_CHARS}"):
        rm.encoder.encode_inputs(["ok", "a" * (WHOLE_CHARS + 1)], "inputs")


def test_never_cut_inputs_certainly_too_long_are_refused_untokenized(reward_dir, tmp_path):
    import time

    rm = load_model(
        ModelSpec(name="rm", path=str(reward_dir("llama")), kind="reward", max_length=32, truncation="error")
    )
    started = time.perf_counter()
    with pytest.raises(InputTooLong, match=r"conversations\[0\]: \d+ characters, more than 32 tokens"):
        rm.score(["word " * 6_000_000])
    # /tokenize's "no limit": a text certainly over max_length is refused, not tokenized to 6M ids
    with pytest.raises(InputTooLong, match=r"more than 32 tokens"):
        rm.encoder.encode_inputs(["word " * 6_000_000], options=EncodeOptions(truncate="none"))
    assert time.perf_counter() - started < 2.0
    from cluster.tiny import build_tiny_prm

    prm_path = build_tiny_prm(tmp_path / "prm", style="qwen")
    prm = load_model(
        {
            "name": "prm",
            "kind": "prm",
            "path": str(prm_path),
            "trust_remote_code": True,
            "step_tag": "<extra_0>",
            "max_length": 64,
        }
    )
    with pytest.raises(InputTooLong, match=r"items\[0\]: \d+ characters, over what this model takes"):
        prm.step_rewards([{"prompt": "2 + 3?", "steps": ["word " * 2_000_000, "5"]}])
