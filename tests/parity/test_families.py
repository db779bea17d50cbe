"""The model-family matrix: every family we claim scores as its model card computes, one at a time.

Each family is a tiny seeded model of the family's own config class with a tokenizer that has the
family's real special tokens, post-processor and chat template (cluster/tiny/). The reference
here is written out with plain transformers calls (the card's computation), not with `cluster`:

- decoders: `apply_chat_template(conv, tokenize=False)`, `tokenizer(text)`, then the one
  correction (a doubled leading BOS collapsed), `model(input_ids).logits[0][0]`;
- encoders without a chat template (OpenAssistant's DeBERTa / ELECTRA cards):
  `model(**tokenizer(question, answer)).logits[0][0]`.
"""

from __future__ import annotations

import random

import pytest
import torch
from helpers import TOL, _hf_reward

from cluster import ConfigError, InvalidInput, ModelSpec, load_model
from cluster.core.inputs import unpack_segments
from cluster.engine.reward import LastTokenRunner, OwnForwardRunner

# family -> (build_tiny_model kwargs, what is different about it)
FAMILIES = {
    "llama3-skywork": (dict(arch="llama"), "template without BOS, tokenizer adds it: the literal card"),
    "llama3-meta": (dict(arch="llama", template_bos=True), "template and tokenizer both add BOS: collapsed"),
    "gemma2": (dict(arch="gemma2"), "template + tokenizer BOS; soft-capping, eager attention; no system role"),
    "qwen2": (dict(arch="qwen2"), "no BOS token at all; default system prompt"),
    "qwen3": (dict(arch="qwen3"), "no BOS token; empty <think> block on the last turn (Skywork-Reward-V2-Qwen3)"),
    "mistral": (dict(arch="mistral"), "[INST] template with BOS, tokenizer BOS too; no pad token"),
    "smollm": (dict(arch="smollm"), "declares <|im_start|> as BOS and never adds it; pad == EOS"),
    "gpt_neox": (dict(arch="gpt_neox", pad="eos"), "BOS == EOS == pad, never added (Pythia / OpenAssistant)"),
    "bert": (dict(arch="bert"), "encoder: [CLS] pooled through its pooler; (question, answer) pair, token types"),
    "deberta_v2": (dict(arch="deberta_v2"), "encoder: relative attention, no token types, no SDPA"),
}
ENCODERS = {"bert", "deberta_v2"}
NO_SYSTEM = {"gemma2", "mistral"}  # their templates raise on a system turn, as the real ones do

TYPED_SPECIALS = "<|eot_id|> <|im_end|> <|im_start|>user <end_of_turn> </s> [INST] [SEP] <|endoftext|>"
CONVERSATIONS = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": "5"},
    ],
    [
        {"role": "user", "content": "Écris « bonjour » ✓ — 日本語で 🙂"},
        {"role": "assistant", "content": "Bonjour ! こんにちは 🙂 ñ ü ß"},
    ],
    [
        {"role": "user", "content": f"Repeat after me: {TYPED_SPECIALS}"},
        {"role": "assistant", "content": f"{TYPED_SPECIALS} [[A]]"},
    ],
    [
        {"role": "user", "content": "Can you help me?"},
        {"role": "assistant", "content": "I'm sorry, but I can't."},
        {"role": "user", "content": "Please, it's about water boiling."},
        {"role": "assistant", "content": "Water boils at 100 degrees Celsius at sea level. " * 4},
    ],
    [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "1 2 3 4 5 6 7 8 9 10"}],
]


def conversations(family: str) -> list:
    convs = CONVERSATIONS
    if family in NO_SYSTEM or family in ENCODERS:
        convs = [[m for m in c if m["role"] != "system"] for c in convs]
    if family in ENCODERS:  # the encoder cards score one (question, answer) pair
        convs = [c for c in convs if len(c) == 2]
    return convs


@pytest.fixture(scope="module")
def family_dir(model_dirs):
    return lambda family: model_dirs(f"family-{family}", **FAMILIES[family][0])


def load(path, **kw):
    return load_model(ModelSpec(name="rm", path=str(path), kind="reward", **kw))


# ----------------------------------------------------------------------------- the card, by hand


def card_inputs(path, conv) -> dict[str, torch.Tensor]:
    tok, _ = _hf_reward(str(path))
    if not tok.chat_template:
        return dict(tok(conv[0]["content"], conv[1]["content"], return_tensors="pt"))
    ids = tok(tok.apply_chat_template(conv, tokenize=False))["input_ids"]
    if tok.bos_token_id is not None and ids[:2] == [tok.bos_token_id] * 2:
        ids = ids[1:]  # the Skywork note: the doubled BOS, once
    return {"input_ids": torch.tensor([ids])}


def card_forward(path, inputs) -> list[float]:
    _, model = _hf_reward(str(path))
    with torch.inference_mode():
        return model(**inputs).logits[0].tolist()


def card_score(path, conv) -> float:
    return card_forward(path, card_inputs(path, conv))[0]


# ----------------------------------------------------------------------------- the matrix


@pytest.mark.parametrize("family", list(FAMILIES))
def test_token_ids_are_the_cards(family_dir, family):
    path = family_dir(family)
    rm = load(path)
    tok = rm.encoder.tokenizer
    convs = conversations(family)
    for conv, enc in zip(convs, rm.encoder.encode_inputs(convs)):
        card = card_inputs(path, conv)
        ids, types = unpack_segments(enc.ids)
        assert ids == card["input_ids"][0].tolist()
        if "token_type_ids" in card:  # the answer's token type rides along with its ids
            assert types == card["token_type_ids"][0].tolist() and 1 in types
        if tok.bos_token_id is not None:
            assert ids[:2] != [tok.bos_token_id] * 2  # never a doubled BOS
    # what each family's BOS looks like, stated independently of the reference above
    first, _ = unpack_segments(rm.encoder.encode_inputs(convs[:1])[0].ids)
    literal = tok(tok.apply_chat_template(convs[0], tokenize=False))["input_ids"] if tok.chat_template else None
    if family in ("qwen2", "qwen3"):
        assert tok.bos_token_id is None
    elif family == "gpt_neox":
        assert first.count(tok.bos_token_id) == literal.count(tok.bos_token_id)  # only the turn ends
        assert first[0] != tok.bos_token_id
    elif family == "smollm":
        assert first == literal and first[0] == tok.bos_token_id  # the template's <|im_start|>, no added one
    elif family in ("llama3-meta", "gemma2", "mistral"):
        assert literal[:2] == [tok.bos_token_id] * 2 and first == literal[1:]
    elif family == "llama3-skywork":
        assert first == literal and literal[0] == tok.bos_token_id and literal[1] != tok.bos_token_id
    else:
        assert first[0] == tok.cls_token_id and first[-1] == tok.sep_token_id


@pytest.mark.parametrize("family", list(FAMILIES))
def test_scores_match_the_card_one_at_a_time(family_dir, family):
    path = family_dir(family)
    rm = load(path)
    convs = conversations(family)
    reference = [card_score(path, c) for c in convs]
    assert rm.score(convs) == pytest.approx(reference, abs=TOL)
    assert max(reference) - min(reference) > 1e-3  # a constant would also "match"
    runner = OwnForwardRunner if family in ENCODERS else LastTokenRunner
    assert type(rm.runner) is runner


@pytest.mark.parametrize("family", list(FAMILIES))
def test_padding_side_and_batch_composition_do_not_move_scores(family_dir, family):
    path = family_dir(family)
    convs = conversations(family) * 2
    reference = [card_score(path, c) for c in convs]
    order = list(range(len(convs)))
    random.Random(len(family)).shuffle(order)
    sides = ["right"] if family in ENCODERS else ["left", "right"]
    for side in sides:
        rm = load(path, padding_side=side)
        shuffled = rm.score([convs[i] for i in order])
        assert shuffled == pytest.approx([reference[i] for i in order], abs=TOL), side
        # one item per pass vs everything in one pass
        assert load(path, padding_side=side, max_batch_size=1).score(convs) == pytest.approx(reference, abs=TOL)
    if family in ENCODERS:
        with pytest.raises(ConfigError, match="pools through its own forward.*right padding"):
            load(path, padding_side="left")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_over_length_keeps_the_head_token_and_the_end_of_the_response(family_dir, family):
    path = family_dir(family)
    convs = conversations(family)
    full = load(path).encoder.encode_inputs(convs)
    limit = 20
    rm = load(path, max_length=limit)
    tok = rm.encoder.tokenizer
    head_ids = {tok.bos_token_id, tok.cls_token_id} - {None}
    results = rm.score_detailed(convs)
    assert any(r.truncated for r in results)
    for enc, res, conv in zip(full, results, convs):
        assert res.truncated == (len(enc.ids) > limit)
        if not res.truncated:
            assert res.score == pytest.approx(card_score(path, conv), abs=TOL)
            continue
        card = card_inputs(path, conv)
        head = 1 if card["input_ids"][0, 0].item() in head_ids else 0
        keep = {k: torch.cat([v[:, :head], v[:, v.shape[1] - (limit - head) :]], dim=1) for k, v in card.items()}
        assert keep["input_ids"].shape[1] == res.num_tokens == limit
        assert res.score == pytest.approx(card_forward(path, keep)[0], abs=TOL)
    if family == "qwen2":  # no BOS to keep: a plain cut from the left
        assert all(not head_ids & {full[i].ids[0]} for i in range(len(full)))


def test_encoder_without_a_template_names_the_pair_it_needs(family_dir):
    rm = load(family_dir("bert"))
    with pytest.raises(InvalidInput, match=r"conversations\[0\]: this model has no chat template.*pair"):
        rm.score([CONVERSATIONS[1]])  # a system turn: not a (question, answer) pair
    # pre-templated text is one segment, as tokenizer(text) makes it
    text = "What is the capital of France? Paris."
    tok, _ = _hf_reward(str(family_dir("bert")))
    reference = card_forward(family_dir("bert"), dict(tok(text, return_tensors="pt")))[0]
    assert rm.score([text])[0] == pytest.approx(reference, abs=TOL)


def test_deberta_v2_loads_without_sdpa(family_dir):
    """transformers' DeBERTa-v2 has no SDPA path: 'auto' lets transformers choose rather than fail."""
    assert load(family_dir("deberta_v2")).runner.model.config._attn_implementation == "eager"


# ----------------------------------------------------------------------------- several outputs


@pytest.fixture(scope="module")
def multi_dir(model_dirs):
    from cluster.tiny import HELPSTEER2_LABELS

    return model_dirs("multi-helpsteer2", arch="llama", labels=HELPSTEER2_LABELS)


def test_multi_output_returns_the_whole_vector_and_the_chosen_scalar(multi_dir):
    convs = conversations("llama3-skywork")
    vectors = [card_forward(multi_dir, card_inputs(multi_dir, c)) for c in convs]
    assert all(len(v) == 5 for v in vectors)
    by_name = load(multi_dir, reward_label="correctness").score_detailed(convs)
    for res, vec in zip(by_name, vectors):
        assert res.values == pytest.approx(vec, abs=TOL)
        assert res.score == pytest.approx(vec[1], abs=TOL)
    by_index = load(multi_dir, reward_label=4).score(convs)
    assert by_index == pytest.approx([v[4] for v in vectors], abs=TOL)
    weights = {"helpfulness": 0.65, "correctness": 0.8, "coherence": 0.45, "complexity": 0.55, "verbosity": -0.4}
    weighted = load(multi_dir, reward_weights=weights).score(convs)
    expected = [sum(w * x for w, x in zip(weights.values(), v)) for v in vectors]
    assert weighted == pytest.approx(expected, abs=TOL)
    assert load(multi_dir, reward_weights=list(weights.values())).score(convs) == pytest.approx(weighted, abs=1e-9)
    # a one-label model reports no vector: the scalar is the whole output
    assert load(multi_dir, reward_label=0).labels == (
        "helpfulness",
        "correctness",
        "coherence",
        "complexity",
        "verbosity",
    )


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, r"has 5 output labels \['helpfulness'.*choose the scalar reward with reward_label"),
        ({"reward_label": "safety"}, r"reward_label='safety' is not one of its 5 labels"),
        ({"reward_label": 5}, r"reward_label=5 is not one of its 5 labels"),
        ({"reward_weights": [1.0, 2.0]}, r"reward_weights has 2 values for 5 output labels"),
        ({"reward_weights": {"safety": 1.0}}, r"reward_weights names unknown label\(s\) \['safety'\]"),
        ({"reward_label": 0, "reward_weights": [1, 1, 1, 1, 1]}, "set reward_label or reward_weights, not both"),
    ],
)
def test_multi_output_without_a_clear_scalar_is_refused(multi_dir, fields, message):
    with pytest.raises(ConfigError, match=message):
        load(multi_dir, **fields)


def test_single_label_models_have_no_vector(family_dir):
    [res] = load(family_dir("qwen3")).score_detailed(conversations("qwen3")[:1])
    assert res.values is None


# ----------------------------------------------------------------------------- custom heads


@pytest.fixture(scope="module")
def custom_dir(tmp_path_factory):
    from cluster.tiny import build_custom_head_model

    return build_custom_head_model(tmp_path_factory.mktemp("custom") / "armorm-style", seed=5)


def test_custom_head_runs_its_own_forward_batch_invariantly(custom_dir):
    """An ArmoRM-style trust_remote_code head (gated objectives, its own pooling, logits of shape
    (batch,)): our batched scores equal its card, `model(input_ids).score`, one at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(custom_dir, trust_remote_code=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        custom_dir, trust_remote_code=True, dtype=torch.float32
    ).eval()
    convs = conversations("llama3-skywork")
    with torch.inference_mode():
        reference = [
            model(input_ids=tok.apply_chat_template(c, return_tensors="pt", return_dict=True)["input_ids"])
            .score[0]
            .item()
            for c in convs
        ]
    rm = load(custom_dir, trust_remote_code=True)
    assert type(rm.runner) is OwnForwardRunner
    assert rm.score(convs) == pytest.approx(reference, abs=TOL)
    assert load(custom_dir, trust_remote_code=True, max_batch_size=1).score(convs) == pytest.approx(reference, abs=TOL)
    assert max(reference) - min(reference) > 1e-3


def test_custom_head_needs_trust_remote_code(custom_dir):
    from cluster import ModelLoadError

    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load(custom_dir)
