"""The README's curl answers from the app, the RewardClient example (docs/rl.md) runs against a Serve
app, and every model an example of the README or docs/ names is one that the demo or a shipped Serve
config serves (and under the same path)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from helpers import API_KEY, REPO, TOL

ROOT = REPO
README = (ROOT / "README.md").read_text()
RL_DOC = (ROOT / "docs" / "rl.md").read_text()  # the RewardClient example moved here from the README
# the README and the manual: every page with examples
DOCS = README + "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))

# the example's two settings lines: the demo's values as written (a comment gives a cluster's)
SETTINGS = re.compile(
    r'^URL, API_KEY = "(?P<url>[^"]+)", (?P<key>\S+)\n'
    r'^RM, CRITIC = "(?P<rm>[^"]+)", "(?P<critic>[^"]+)"\n',
    flags=re.M,
)


def rl_example() -> str:
    """The first Python block of docs/rl.md's section "Rewards for RL training"."""
    section = RL_DOC[RL_DOC.index("## Rewards for RL training") :]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def readme_curl() -> list[str]:
    """The README's curl command, as the shell splits it."""
    block = re.search(r"^```bash\n(curl .*?)^```", README, flags=re.S | re.M).group(1)
    return shlex.split(block.replace("\\\n", " "))


def test_the_readme_curl_is_written_for_the_demo():
    """As written, it talks to `python -m cluster demo`: its default port, no key, its reward model."""
    from cluster.cli.main import build_parser

    args = readme_curl()
    url = next(a for a in args if a.startswith("http"))
    port = build_parser("demo").parse_args(["demo"]).port
    assert urlsplit(url).netloc == f"127.0.0.1:{port}" and urlsplit(url).path == "/v1/rewards"
    assert json.loads(args[args.index("-d") + 1])["model"] == demo_models()["reward"]
    # nothing but what the test below sends: -s, headers, the body, the URL
    flags = [a for i, a in enumerate(args[1:], 1) if a.startswith("-") and args[i - 1] not in ("-H", "-d")]
    assert set(flags) <= {"-s", "-H", "-d"}, flags


def test_the_readme_curl_answers_from_the_app(live):
    """Its request, sent as curl sends it (its URL's path, headers and body; the test app's address,
    key and reward model `rm` for the demo's), is answered with the card's rewards."""
    import httpx

    args = readme_curl()
    url = next(a for a in args if a.startswith("http"))
    headers = dict(h.split(": ", 1) for h in (args[i + 1] for i, a in enumerate(args) if a == "-H"))
    body = json.loads(args[args.index("-d") + 1]) | {"model": "rm"}
    reply = httpx.post(
        live["keyed"] + urlsplit(url).path,
        content=json.dumps(body),
        timeout=60,
        headers=headers | {"Authorization": f"Bearer {API_KEY}"},
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["scores"] == pytest.approx(live["models"]["rm"].score(body["conversations"]), abs=TOL)
    assert answer["truncated"] == [False] * len(body["conversations"])


def demo_models() -> dict[str, str]:
    from deployments.demo import demo_args

    return {m["kind"]: m["name"] for m in demo_args(Path("rm"), Path("critic"))["models"]}


def test_the_rl_example_is_written_for_the_demo():
    """As written, the block talks to `python -m cluster demo`: its default port, no key, its models."""
    from cluster.cli.main import build_parser

    settings = SETTINGS.search(rl_example())
    assert settings, "the RewardClient example lost its settings lines (URL, API_KEY / RM, CRITIC)"
    port = build_parser("demo").parse_args(["demo"]).port
    assert settings["url"] == f"http://127.0.0.1:{port}" and settings["key"] == "None"
    assert (settings["rm"], settings["critic"]) == (demo_models()["reward"], demo_models()["critic"])


def test_the_rl_example_runs_against_a_serve_app(served, capsys):
    """The block itself, run against the test suite's Serve app: only its two settings lines are
    replaced (that app's port and key, and its models `rm` and `judge` for the demo's)."""
    code = rl_example()
    settings = SETTINGS.search(code)
    code = code.replace(
        settings.group(0),
        f'URL, API_KEY = "http://127.0.0.1:{served["port"]}", "{API_KEY}"\nRM, CRITIC = "rm", "judge"\n',
    )
    names: dict = {"__name__": "readme_example"}
    exec(compile(code, "docs/rl.md (Rewards for RL training)", "exec"), names)

    rm, judge = served["models"]["rm"], served["models"]["judge"]
    assert names["rewards"] == pytest.approx(rm.score(names["conversations"]), abs=TOL)
    assert names["text_rewards"] == pytest.approx(rm.score(names["texts"]), abs=TOL)
    assert names["async_rewards"] == pytest.approx(names["rewards"], abs=TOL)
    want = rm.compare(names["items"])
    assert [p["winner"] for p in names["pairs"]] == [w.winner for w in want]
    assert [p["prob_a"] for p in names["pairs"]] == pytest.approx([w.prob_a for w in want], abs=TOL)
    assert names["async_pairs"][0].keys() == names["pairs"][0].keys()
    verdicts = judge.judge(names["items"], debias=True)
    assert [v["prob_a"] for v in names["verdicts"]] == pytest.approx([v.prob_a for v in verdicts], abs=TOL)
    assert names["generated"][0]["text"] == judge.judge(names["items"], mode="generate")[0].text
    assert capsys.readouterr().out.strip()  # its closing print


def served_names() -> dict[str, dict[str, str]]:
    """Where each name is served: the demo, ray_config.yaml, ray_config.all-seed-models.yaml,
    ray_config.prm-and-judges.yaml ->
    {model name: its path}."""
    from deployments.demo import demo_args

    configs = {"demo": {m["name"]: m["path"] for m in demo_args(Path("rm"), Path("critic"))["models"]}}
    for file in ("ray_config.yaml", "ray_config.all-seed-models.yaml", "ray_config.prm-and-judges.yaml"):
        [app] = yaml.safe_load((ROOT / file).read_text())["applications"]
        configs[file] = {m["name"]: m["path"] for m in app["args"]["models"]}
    return configs


def readme_model_names() -> tuple[set[str], list[dict]]:
    """Every model name the examples of the README and docs/ use: `model="..."`, `"model": "..."`,
    model ids quoted or in backticks (the RL example's settings and the comment giving a cluster's),
    and the YAML examples' models and ensemble members; plus the YAML examples' model entries (name
    and path)."""
    names = set(re.findall(r'\bmodel\s*=\s*"([^"]+)"', DOCS)) | set(re.findall(r'"model"\s*:\s*"([^"]+)"', DOCS))
    names = {n for n in names if "://" not in n}  # huggingface_hub's InferenceClient(model=URL) is a URL
    names |= set(re.findall(r"[`\"]((?:skywork|tiny)-[a-z0-9.-]+)[`\"]", DOCS))
    entries = []
    for block in re.findall(r"```yaml\n(.*?)```", DOCS, flags=re.S):
        doc = yaml.safe_load(block) or {}
        entries += doc.get("models", [])
        names |= {m["name"] for m in doc.get("models", [])}
        names |= {member["model"] for e in doc.get("ensembles", []) for member in e["members"]}
    return names, entries


def test_every_model_the_readme_names_is_served_by_the_demo_or_a_config():
    configs = served_names()
    names, entries = readme_model_names()
    assert {"tiny-rm", "tiny-critic", "skywork-reward-llama-3.1-8b", "skywork-critic-llama-3.1-8b"} <= names
    unserved = sorted(n for n in names if not any(n in served for served in configs.values()))
    assert unserved == [], f"README names models no config serves: {unserved} (served: {configs})"
    for entry in entries:  # a YAML example's model is the one a config serves under that name
        assert any(served.get(entry["name"]) == entry["path"] for served in configs.values()), entry
    # the README says which config serves which
    for name in configs["demo"]:
        assert f"`{name}`" in README
    for name in configs["ray_config.yaml"]:
        assert f"`{name}`" in README
