"""Reward scoring equals the model card's one-at-a-time computation, however it is batched."""

from __future__ import annotations

import random

import pytest
import torch
from helpers import (
    REWARD_VARIANTS,
    TOL,
    card_ids,
    card_score,
    card_score_ids,
    conversations_for,
)

from cluster import InputTooLong, ModelSpec, load_model
from cluster.core.results import sigmoid
from cluster.engine.reward import read_position


def load_rm(path, **kw):
    return load_model(ModelSpec(name="rm", path=str(path), kind="reward", **kw))


@pytest.mark.parametrize("variant", list(REWARD_VARIANTS))
def test_batched_scores_match_the_model_card(reward_dir, variant):
    path = reward_dir(variant)
    convs = conversations_for(variant)
    rm = load_rm(path)
    scores = rm.score(convs)
    reference = [card_score(path, c) for c in convs]
    assert scores == pytest.approx(reference, abs=TOL)
    # and the scores are not all alike (a constant would also "match" a broken reference)
    assert max(reference) - min(reference) > 1e-3


# variant -> how many BOS tokens lead the card's literal ids, and how many lead ours
LEADING_BOS = {
    "llama": (1, 1),  # Skywork: the tokenizer's BOS only
    "llama-bos-in-template-and-tokenizer": (2, 1),  # the doubled BOS, collapsed
    "llama-bos-in-template-only": (1, 1),
    "llama-bos-nowhere": (0, 0),  # a BOS the card does not have is never added
    "llama-pad-is-eos": (1, 1),
    "llama-no-pad": (1, 1),
    "gemma2": (2, 1),
    "gemma2-pad-is-eos": (1, 1),
}


def leading(ids: list[int], token: int) -> int:
    n = 0
    while n < len(ids) and ids[n] == token:
        n += 1
    return n


@pytest.mark.parametrize("variant", list(REWARD_VARIANTS))
def test_token_ids_are_the_cards_with_a_doubled_bos_collapsed(reward_dir, variant):
    path = reward_dir(variant)
    rm = load_rm(path)
    tok = rm.encoder.tokenizer
    bos = tok.bos_token_id
    card_bos, our_bos = LEADING_BOS[variant]
    for conv, enc in zip(conversations_for(variant), rm.encoder.encode_inputs(conversations_for(variant))):
        literal = tok(tok.apply_chat_template(conv, tokenize=False))["input_ids"]
        assert leading(literal, bos) == card_bos and leading(enc.ids, bos) == our_bos
        assert enc.ids == literal[card_bos - our_bos :]  # otherwise exactly the card's ids
        assert enc.ids == card_ids(path, conv)


def test_skywork_setup_is_the_literal_model_card(reward_dir):
    """Template without BOS + tokenizer adding it (Skywork's setup): no correction at all."""
    path = reward_dir("llama")
    rm = load_rm(path)
    tok = rm.encoder.tokenizer
    for conv, enc in zip(conversations_for("llama"), rm.encoder.encode_inputs(conversations_for("llama"))):
        assert enc.ids == tok(tok.apply_chat_template(conv, tokenize=False))["input_ids"]


@pytest.mark.parametrize("variant", ["llama", "gemma2", "llama-pad-is-eos", "llama-no-pad"])
def test_left_padding_equals_right_padding_equals_single(reward_dir, variant):
    path = reward_dir(variant)
    convs = conversations_for(variant)
    right = load_rm(path, padding_side="right").score(convs)
    left = load_rm(path, padding_side="left").score(convs)
    single = [load_rm(path).score([c])[0] for c in convs]
    assert right == pytest.approx(single, abs=TOL)
    assert left == pytest.approx(single, abs=TOL)


@pytest.mark.parametrize("variant", ["llama", "gemma2-pad-is-eos"])
def test_batch_composition_and_order_do_not_change_scores(reward_dir, variant):
    path = reward_dir(variant)
    convs = conversations_for(variant) * 3
    rm = load_rm(path, max_batch_tokens=4096)
    expected = [card_score(path, c) for c in convs]
    order = list(range(len(convs)))
    random.Random(0).shuffle(order)
    shuffled = rm.score([convs[i] for i in order])
    assert shuffled == pytest.approx([expected[i] for i in order], abs=TOL)
    # a tiny budget forces one item per batch; a large one puts all in one: same scores
    tiny_budget = load_rm(path, max_length=256, max_batch_tokens=256).score(convs)
    assert tiny_budget == pytest.approx(expected, abs=TOL)


def test_results_land_in_input_order_when_batches_are_reordered(reward_dir):
    """Length sorting runs the longest item first; each score still lands at its input index."""
    path = reward_dir("llama")
    convs = conversations_for("llama")
    rm = load_rm(path, max_batch_tokens=4096)
    lengths = [len(e.ids) for e in rm.encoder.encode_inputs(convs)]
    assert lengths != sorted(lengths, reverse=True)  # the fixture really is out of length order
    ran = rm.runner.run("score", [e.ids for e in rm.encoder.encode_inputs(convs)])  # the plan it reports
    assert lengths[ran.batches[0][0]] == max(lengths)
    assert [score for score, _ in ran.outputs] == pytest.approx([card_score(path, c) for c in convs], abs=TOL)
    assert rm.score(convs) == pytest.approx([card_score(path, c) for c in convs], abs=TOL)


def test_pad_equal_to_eos_reads_the_token_before_the_trailing_eos(reward_dir):
    path = reward_dir("llama-pad-is-eos")
    rm = load_rm(path)
    eos = rm.encoder.tokenizer.eos_token_id
    enc = rm.encoder.encode_inputs(conversations_for("llama-pad-is-eos")[:1])[0]
    assert enc.ids[-1] == eos  # the template ends each turn with <|eot_id|> == pad
    assert read_position(enc.ids, eos) == len(enc.ids) - 2
    assert read_position(enc.ids, None) == len(enc.ids) - 1
    # HF's own forward reads there too, and so do we in a padded batch
    reading_before_eos = card_score_ids(path, enc.ids[:-1])
    assert card_score_ids(path, enc.ids) == pytest.approx(reading_before_eos, abs=1e-6)
    assert rm.score(conversations_for("llama-pad-is-eos"))[0] == pytest.approx(reading_before_eos, abs=TOL)


def test_pretemplated_text_is_scored_as_given_without_a_second_bos(reward_dir):
    path = reward_dir("llama-bos-in-template-and-tokenizer")
    rm = load_rm(path)
    tok = rm.encoder.tokenizer
    convs = conversations_for("llama")
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
    assert texts[0].startswith(tok.bos_token)  # OpenRLHF sends text that already holds the BOS
    assert rm.score(texts) == pytest.approx(rm.score(convs), abs=1e-6)
    assert rm.score(texts) == pytest.approx([card_score(path, t) for t in texts], abs=TOL)
    # mixed lists work too
    mixed = rm.score([texts[0], convs[1]])
    assert mixed == pytest.approx([card_score(path, texts[0]), card_score(path, convs[1])], abs=TOL)


def test_left_truncation_keeps_bos_and_the_end_of_the_response(reward_dir):
    path = reward_dir("llama")
    convs = conversations_for("llama")
    full = load_rm(path).encoder.encode_inputs(convs)
    limit = 24
    rm = load_rm(path, max_length=limit)
    results = rm.score_detailed(convs)
    bos = rm.encoder.tokenizer.bos_token_id
    for enc, res, conv in zip(full, results, convs):
        assert res.truncated == (len(enc.ids) > limit)
        if res.truncated:
            assert res.num_tokens == limit
            kept = [bos] + enc.ids[-(limit - 1) :]
            assert res.score == pytest.approx(card_score_ids(path, kept), abs=TOL)
        else:
            assert res.score == pytest.approx(card_score(path, conv), abs=TOL)
    assert any(r.truncated for r in results) and not all(r.truncated for r in results)


def test_truncation_error_rejects_long_items_by_index(reward_dir):
    rm = load_rm(reward_dir("llama"), max_length=24, truncation="error")
    with pytest.raises(InputTooLong, match=r"conversations\[0\]: \d+ tokens, over this model's limit of 24"):
        rm.score(conversations_for("llama"))


def test_compare_is_sigmoid_of_the_reward_difference(reward_dir):
    path = reward_dir("llama")
    rm = load_rm(path)
    items = [
        {"prompt": "What is the capital of France?", "response_a": "Paris.", "response_b": "London."},
        {"prompt": "Add 2 and 3.", "response_a": "6", "response_b": "2 + 3 = 5"},
    ]
    out = rm.compare(items)
    for item, cmp in zip(items, out):
        r_a, r_b = (
            card_score(path, [{"role": "user", "content": item["prompt"]}, {"role": "assistant", "content": item[key]}])
            for key in ("response_a", "response_b")
        )
        assert cmp.reward_a == pytest.approx(r_a, abs=TOL) and cmp.reward_b == pytest.approx(r_b, abs=TOL)
        assert cmp.prob_a == pytest.approx(1 / (1 + torch.exp(torch.tensor(r_b - r_a)).item()), abs=1e-5)
        assert cmp.winner == ("A" if r_a >= r_b else "B")


def test_sigmoid_is_stable_at_the_extremes():
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0 and sigmoid(0.0) == 0.5


def test_gemma2_never_runs_on_sdpa(reward_dir):
    from cluster import ConfigError

    path = reward_dir("gemma2")
    assert load_rm(path).runner.model.config._attn_implementation == "eager"
    with pytest.raises(ConfigError, match="sdpa.*soft-capping"):
        load_rm(path, attn_implementation="sdpa")
    assert load_rm(reward_dir("llama")).runner.model.config._attn_implementation == "sdpa"


def test_empty_input_gives_empty_output(reward_dir):
    assert load_rm(reward_dir("llama")).score([]) == []
