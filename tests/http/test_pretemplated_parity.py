"""Pre-templated texts on every route that takes them, per chat-template family, against the card.

The defect this guards (issue 'OpenRLHF's /get_reward reads ChatML rewards at the wrong token'):
`/get_reward` strips the padding OpenRLHF <= 0.8 decoded into its texts, and a `$` anchor also
matched before a final newline, so every ChatML text (`...<|im_end|>\\n`) lost its last newline and
was scored at another token. Llama-3 texts end in `<|eot_id|>` with nothing after it, so the family
the earlier tests used could not show it. Here every route that takes a templated string is run
with the real client's request (cited in the test_client_* files this reuses, verbatim code there)
for each family whose end differs:

- ChatML with pad == EOS == `<|im_end|>` and a trailing `\\n` (SmolLM2-Instruct);
- ChatML with a separate pad and an empty `<think>` block (Qwen3, Skywork-Reward-V2-Qwen3);
- Llama-3 (ends `<|eot_id|>`, BOS added by the tokenizer: Skywork-Reward-Llama-3.1);
- Gemma-2 (BOS in the template and the tokenizer; ends `<end_of_turn>\\n`);
- Mistral (`[INST]`; ends `</s>`; no pad token at all);
- a template that ends in whitespace after the EOS (`<|eot_id|>\\n\\n`) with pad == EOS.

The reference is the card's own computation written out with plain transformers calls
(conftest `card_score`: `apply_chat_template(conv, tokenize=False)`, `tokenizer(text)`, the doubled
BOS collapsed, `logits[0][0]`), one conversation at a time, fp32, within `TOL` (1e-4).
"""

from __future__ import annotations

import asyncio

import pytest
from helpers import API_KEY, TOL, LiveServer, card_score
from test_client_openrlhf import SingleTurnAgentExecutor, read_reward
from test_client_verl import RewardLoopWorker
from test_client_vllm import post_http_request

from cluster.core.results import sigmoid

requests = pytest.importorskip("requests")

# a template whose text ends in whitespace after its EOS, with pad == EOS: the hardest case for a
# padding strip (a `$`-anchored one removed the EOS and the whitespace alike)
TRAILING_WHITESPACE_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>\n\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# family -> (build_tiny_model kwargs, chat template override or None, what its texts end with)
FAMILIES = {
    "chatml-smollm": (dict(arch="smollm"), None, "<|im_end|>\\n, pad == EOS"),
    "chatml-qwen3": (dict(arch="qwen3"), None, "<|im_end|>\\n, separate pad, <think> block"),
    "llama3": (dict(arch="llama"), None, "<|eot_id|>, tokenizer adds BOS"),
    "gemma2": (dict(arch="gemma2"), None, "<end_of_turn>\\n, BOS in template and tokenizer"),
    "mistral": (dict(arch="mistral"), None, "</s>, no pad token"),
    "trailing-whitespace": (
        dict(arch="llama", pad="eos"),
        TRAILING_WHITESPACE_TEMPLATE,
        "<|eot_id|>\\n\\n, pad == EOS",
    ),
}
NO_SYSTEM = {"gemma2", "mistral"}  # their templates refuse a system turn, as the real ones do

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
    # a response that itself ends in newlines (templates that trim and templates that do not)
    [{"role": "user", "content": "Write two lines."}, {"role": "assistant", "content": "Line one.\nLine two.\n\n"}],
    [
        {"role": "user", "content": "Can you help me?"},
        {"role": "assistant", "content": "I'm sorry, but I can't."},
        {"role": "user", "content": "Please, it's about water boiling."},
        {"role": "assistant", "content": "Water boils at 100 degrees Celsius at sea level. " * 3},
    ],
]


def conversations(family: str) -> list:
    if family in NO_SYSTEM:
        return [[m for m in c if m["role"] != "system"] for c in CONVERSATIONS]
    return CONVERSATIONS


@pytest.fixture(scope="module")
def servers(model_dirs):
    """One app per family (the model is each app's default, as OpenRLHF names none), served by
    uvicorn on loopback: API key on, 127.0.0.0/8 trusted for the clients that send no key."""
    from transformers import AutoTokenizer

    from cluster import ModelSpec, load_model
    from cluster.core.config import AppConfig
    from cluster.engine.loading import local_service
    from cluster.http.app import create_app

    out = {}
    for family, (kwargs, template, _) in FAMILIES.items():
        path = model_dirs(f"pretemplated-{family}", **kwargs)
        if template is not None and AutoTokenizer.from_pretrained(path).chat_template != template:
            tok = AutoTokenizer.from_pretrained(path)
            tok.chat_template = template
            tok.save_pretrained(path)
        config = AppConfig.parse({"models": [{"name": family, "path": str(path), "kind": "reward"}]})
        app = create_app(
            local_service(config), api_keys=[API_KEY], max_request_bytes=200_000, trusted_networks=["127.0.0.0/8"]
        )
        rm = load_model(ModelSpec(name=family, path=str(path), kind="reward"))
        out[family] = {"server": LiveServer(app), "path": path, "rm": rm}
    yield out
    for entry in out.values():
        entry["server"].stop()


def texts_and_cards(entry, family):
    tok = entry["rm"].encoder.tokenizer
    convs = conversations(family)
    texts = [tok.apply_chat_template(c, tokenize=False) for c in convs]
    return convs, texts, [card_score(entry["path"], c) for c in convs]


def test_the_families_end_as_described(servers):
    """The matrix covers what it claims: the texts' last characters, and the pad/EOS setups."""
    for family, entry in servers.items():
        tok = entry["rm"].encoder.tokenizer
        text = tok.apply_chat_template(conversations(family)[0], tokenize=False)
        end = FAMILIES[family][2].split(",")[0].replace("\\n", "\n")
        assert text.endswith(end), (family, text[-20:])
        if "pad == EOS" in FAMILIES[family][2]:
            assert tok.pad_token == tok.eos_token, family
        if family == "mistral":
            assert tok.pad_token is None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_openrlhf_get_reward(servers, family):
    """OpenRLHF 0.11.2 `_fetch_rewards_via_http`, one query per request as its rollout workers
    send them, read as `_process_response_into_experience` reads them."""
    entry = servers[family]
    convs, queries, expected = texts_and_cards(entry, family)
    prompts = [
        entry["rm"].encoder.tokenizer.apply_chat_template(c[:-1], tokenize=False, add_generation_prompt=True)
        for c in convs
    ]
    executor = SingleTurnAgentExecutor(f"{entry['server'].url}/get_reward?api_key={API_KEY}")

    async def rollout():
        return await asyncio.gather(
            *(executor._fetch_rewards_via_http([q], [p], [None]) for q, p in zip(queries, prompts))
        )

    got = [read_reward(answer)[0]["reward"].item() for answer in asyncio.run(rollout())]
    assert got == pytest.approx(expected, abs=TOL)
    # and several queries in one request (OpenRLHF 0.10's shards)
    [batch] = asyncio.run(executor._fetch_rewards_via_http(queries, prompts, [None] * len(queries)))
    assert batch["rewards"] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vllm_classify_pooling_and_score(servers, family):
    """vLLM's example clients: /classify {"model", "input": [texts]} (probs: sigmoid of the reward;
    raw with `use_activation: false`), /pooling {"model", "input": text} (raw), and /score with
    (text_1, text_2) as a prompt and its response, rendered by the family's template."""
    entry = servers[family]
    convs, texts, expected = texts_and_cards(entry, family)
    base = entry["server"].url
    classify = post_http_request({"model": family, "input": texts}, f"{base}/classify?api_key={API_KEY}").json()
    assert [d["probs"][0] for d in classify["data"]] == pytest.approx([sigmoid(e) for e in expected], abs=TOL)
    raw = post_http_request(
        {"model": family, "input": texts, "use_activation": False}, f"{base}/classify?api_key={API_KEY}"
    ).json()
    assert [d["probs"][0] for d in raw["data"]] == pytest.approx(expected, abs=TOL)
    for text, want in zip(texts, expected):
        pooled = post_http_request({"model": family, "input": text}, f"{base}/pooling?api_key={API_KEY}").json()
        assert pooled["data"][0]["data"] == pytest.approx([want], abs=TOL)
    pairs = [(c[-2]["content"], c[-1]["content"], card_score(entry["path"], c[-2:])) for c in convs]
    for text_1, text_2, want in pairs:
        scored = post_http_request(
            {"model": family, "text_1": text_1, "text_2": text_2}, f"{base}/score?api_key={API_KEY}"
        ).json()
        assert scored["data"][0]["score"] == pytest.approx(sigmoid(want), abs=TOL)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_verl_reward_loop(servers, family, engine):
    """verl's reward loop (`compute_score_disrm`): the template applied by verl, its leading BOS
    cut off, POSTed to /classify (vLLM) or /v1/embeddings (SGLang) with no key."""
    entry = servers[family]
    convs, texts, expected = texts_and_cards(entry, family)
    tok = entry["rm"].encoder.tokenizer
    worker = RewardLoopWorker(entry["server"].url.removeprefix("http://"), engine, family, tok)
    got = [asyncio.run(worker.compute_score_disrm(c))["reward_score"] for c in convs]
    if family == "chatml-smollm":
        # SmolLM2 declares <|im_start|> its BOS and its tokenizer never adds one: verl cuts the first
        # <|im_start|> off its own text, so what it sends is not the card's text. Scored as sent (as
        # vLLM and SGLang would score it): the card's computation on verl's string.
        sent = [worker._preprocess_reward_inputs(c) for c in convs]
        assert all(s == t.removeprefix(tok.bos_token) != t for s, t in zip(sent, texts))
        expected = [card_score(entry["path"], s) for s in sent]
    assert got == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_sglang_native_classify(servers, family):
    """SGLang's docs cell: the client applies the template, POSTs {"model", "text": [prompts]} to
    /classify and reads `response["embedding"][0]` of each."""
    entry = servers[family]
    _, prompts, expected = texts_and_cards(entry, family)
    responses = requests.post(f"{entry['server'].url}/classify", json={"model": family, "text": prompts}).json()
    assert [response["embedding"][0] for response in responses] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tei_predict(servers, family, monkeypatch):
    """TEI /predict: huggingface_hub's InferenceClient.text_classification (sigmoid, TEI's default
    for one label) and TEI's own request with `raw_scores`."""
    hub = pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the tests' offline mode blocks localhost
    entry = servers[family]
    _, texts, expected = texts_and_cards(entry, family)
    url = f"{entry['server'].url}/predict"
    client = hub.InferenceClient(model=url, token=API_KEY)
    for text, want in zip(texts, expected):
        out = client.text_classification(text)
        top = out[0] if isinstance(out, list) else out
        assert top.score == pytest.approx(sigmoid(want), abs=TOL)
    raw = requests.post(
        url, json={"inputs": [[t] for t in texts], "raw_scores": True}, headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()
    assert [r[0]["score"] for r in raw] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_v1_rewards_with_strings(servers, family):
    """Our API: RewardClient.score_texts posts the strings to /v1/rewards."""
    from cluster.client.reward_client import RewardClient

    entry = servers[family]
    _, texts, expected = texts_and_cards(entry, family)
    with RewardClient.http(entry["server"].url, API_KEY, model=family) as client:
        assert client.score_texts(texts) == pytest.approx(expected, abs=TOL)


def test_strip_padding_keeps_what_the_client_wrote(servers):
    """The strip at the text's true ends only: padded texts lose their padding (one EOS kept, as
    OpenRLHF's server appended it), every unpadded text is returned as sent, whatever it ends in."""
    for family, entry in servers.items():
        enc = entry["rm"].encoder
        tok = enc.tokenizer
        pad = tok.pad_token or tok.eos_token
        for conv in conversations(family):
            text = tok.apply_chat_template(conv, tokenize=False)
            assert enc.strip_padding(text) == text, family
            for tail in ("\n", " ", "\n\n", "\t"):
                assert enc.strip_padding(text + tail) == text + tail, (family, tail)
            body = text.removesuffix(tok.eos_token) if text.endswith(tok.eos_token) else text
            padded = pad * 3 + body + tok.eos_token + pad * 4
            assert enc.strip_padding(padded) == body + tok.eos_token, family
