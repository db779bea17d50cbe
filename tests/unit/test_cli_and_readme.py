"""The command line, the README's code and the README's commands."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from helpers import REPO

from cluster import ModelSpec, load_model
from cluster.kinds import NAMES

ROOT = REPO
README = (ROOT / "README.md").read_text()
MODELS_DOC = (ROOT / "docs" / "models.md").read_text()  # the manual's page on the kinds (moved from the README)


def python_block(text: str, heading: str | None = None) -> str:
    """The first Python block of `text`, or of its section `heading`."""
    section = text[text.index(heading) :] if heading else text
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def test_tiny_model_command_writes_a_loadable_model(tmp_path):
    out = tmp_path / "gemma-rm"
    proc = run_cli("tiny-model", "--kind", "reward", "--arch", "gemma2", "--pad", "eos", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rm = load_model(ModelSpec(name="rm", path=str(out), kind="reward"))
    assert rm.runner.model.config.model_type == "gemma2"
    assert rm.runner.model.config.pad_token_id == rm.encoder.tokenizer.eos_token_id
    [score] = rm.score([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]])
    assert isinstance(score, float)


def test_in_process_demo_scores_and_judges(tmp_path):
    proc = run_cli("demo", "--in-process", "--models-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    scores = re.findall(r"^\s+([+-]\d+\.\d{4})\s+tokens=", proc.stdout, flags=re.M)
    assert len(scores) == 4
    assert re.search(r"critic logits: P\(A better\)=0\.\d{4} -> [AB]", proc.stdout)
    assert re.search(r"critic generate: '.*' -> (A|B|None)", proc.stdout)
    assert "Traceback" not in proc.stderr


@pytest.mark.slow  # for time (CI runs `pytest -m slow`)
def test_serve_demo_answers_every_route_over_http(tmp_path):
    """The README's main command, with --once: a local Ray cluster, the Serve app, real HTTP."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_cli("demo", "--once", "--models-dir", str(tmp_path), "--port", str(port), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    routes = re.findall(r"^(GET|POST) (\S+)", proc.stdout, flags=re.M)
    statuses = re.findall(r"^  -> (\d{3}) ", proc.stdout, flags=re.M)
    assert {p for _, p in routes} >= {
        "/healthz",
        "/v1/models",
        "/v1/rewards",
        "/v1/compare",
        "/v1/judge",
        "/get_reward",
        "/classify",
        "/pooling",
        "/score",
        "/rerank",
        "/tokenize",
        "/health",
        "/version",
        "/v1/embeddings",
        "/predict",
        "/v1/chat/completions",
        "/generative_scoring",
        "/slime/reward",
    }
    assert statuses == ["200"] * (len(statuses) - 1) + ["422"]  # the last request is the bad one
    assert '"text": "[[A]]"' in proc.stdout or '"text": "[[B]]"' in proc.stdout
    assert "conversations[0][0].role: unknown role 'bot'" in proc.stdout  # the 422 in the in-process words
    # quiet: nothing on stderr, and none of Ray's and Serve's own lines anywhere (--verbose shows them)
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [], proc.stderr[-3000:]
    assert [s for s in SERVE_NOISE if s in proc.stdout] == [], proc.stdout[-3000:]


# what Ray and Serve print on their own during the demo, which its quiet default keeps out of the terminal
SERVE_NOISE = (
    "graceful_shutdown",
    "infinite retries",
    "LongPollClient",
    "Connecting to existing Serve app",
    "Started Serve",
    "is ready at",
    "(raylet)",
    "(ServeController",
    "(ProxyActor",
    "(ServeReplica",
)


def test_demo_takes_verbose_and_nothing_by_prefix():
    from cluster.cli.main import build_parser

    parser = build_parser("demo")
    args = parser.parse_args(["demo", "--once", "--verbose"])
    assert args.once and args.verbose and args.func.__name__ == "run_demo"
    assert parser.parse_args(["demo"]).verbose is False
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--verb"])


@pytest.mark.reliability  # a whole demo run with a broken model (its replica fails three times): ~1 minute
def test_quiet_demo_still_says_why_the_app_did_not_start(tmp_path):
    """Quiet hides Ray's progress, not our errors: a model that cannot load is named, with its
    ModelLoadError, in one line (exit 2), no traceback."""
    import socket

    from cluster.tiny import build_demo_models

    rm_dir, _ = build_demo_models(tmp_path)
    (rm_dir / "model.safetensors").unlink()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run_cli("demo", "--once", "--models-dir", str(tmp_path), "--port", str(port), timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    [line] = [line for line in proc.stderr.splitlines() if line.strip()]
    assert line.startswith("error: Deploying application scoring failed") and "reward-tiny-rm" in line
    assert "ModelLoadError: model 'tiny-rm': cannot load" in line
    assert [s for s in SERVE_NOISE if s in proc.stdout + proc.stderr] == []


def test_cli_errors_are_one_line_not_a_traceback(tmp_path):
    proc = run_cli("tiny-model", "--kind", "nonsense", "--out", str(tmp_path))
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


@pytest.mark.parametrize("wrong", ["--no-prog", "--bogus", "--over"])  # a prefix of --no-progress, none, --overwrite
def test_a_wrong_option_is_refused_in_the_commands_own_usage(wrong, capsys):
    """Options are matched whole (`--no-prog` must not run as `--no-progress`), and a wrong one is
    reported with the subcommand's usage, not the top-level one."""
    from cluster.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["score", "in.jsonl", "out", "--model", "m", wrong])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m cluster score ") and "--no-progress" in err  # score's own options
    assert err.rstrip().endswith(f"python -m cluster score: error: unrecognized arguments: {wrong}")


def test_no_parser_matches_options_by_prefix():
    from cluster.cli.main import COMMANDS, build_parser

    parser = build_parser("tiny-model")
    assert not parser.allow_abbrev and all(not p.allow_abbrev for p in parser.commands.values())
    assert set(parser.commands) == set(COMMANDS)
    assert parser.parse_args(["tiny-model", "--out", "x", "--kind", "critic"]).kind == "critic"
    with pytest.raises(SystemExit):
        parser.parse_args(["tiny-model", "--out", "x", "--ki", "critic"])


@pytest.mark.parametrize("where", ["README.md", "docs/models.md (Python API)"])
def test_readme_python_example_runs(where, tmp_path, capsys):
    """The README's one Python example (the four kinds), and the manual's Python API example."""
    code = python_block(README) if where == "README.md" else python_block(MODELS_DOC, "## Python API")
    code = code.replace("/tmp/readme-", str(tmp_path / "readme-"))
    exec(compile(code, where, "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"^\[-?\d", printed, flags=re.M)  # the scores line


def test_every_readme_code_block_is_one_a_test_runs():
    """The README holds four code blocks, each run by a test: the two commands (the test command is
    .ci/run's, below; the demo command is what test_serve_demo_answers_every_route_over_http runs,
    with --once), the Python example (above), the curl (tests/ray/test_readme_examples.py) and the
    object-storage example (tests/ray/test_object_storage.py, on the test's S3 server)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)
    assert [lang for lang, _ in blocks] == ["bash", "python", "bash", "python"], (
        "a new README block needs a test that runs it"
    )
    commands = blocks[0][1]
    assert re.search(r"^# 1\. install and run the demo.*\n(#.*\n)*.*&& python -m cluster demo$", commands, flags=re.M)
    assert "# 2. install and run the tests" in commands
    assert blocks[1][1] == python_block(README)
    assert blocks[2][1].startswith("curl ")
    assert "s3://my-bucket/" in blocks[3][1]


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    readme_cmd = re.search(r"# 2\. install and run the tests.*\n(.*)\n", README).group(1)
    lines = ci.strip().splitlines()
    ci_cmd = lines[lines.index("# --- the README's test command (keep the two in step) ---") + 1]
    assert readme_cmd.endswith(ci_cmd), (readme_cmd, ci_cmd)
    assert "pytest -m reliability" in lines  # then the marked reliability suite (docs/reliability.md)


@pytest.mark.parametrize("field", ["max_length", "max_batch_tokens", "truncation", "judge_template"])
def test_readme_documents_model_spec_fields(field):
    """A spec field (shared, or a kind's own) is explained in docs/models.md's ModelSpec table (every
    field is also in the generated docs/configuration.md: tests/unit/test_config_reference.py)."""
    assert any(field in ModelSpec.of_kind(k).model_fields for k in NAMES)
    table = MODELS_DOC[MODELS_DOC.index("### ModelSpec") : MODELS_DOC.index("## Process reward models")]
    assert f"`{field}`" in table


def test_light_entry_points_import_neither_torch_nor_pyarrow():
    """The client, the RL reward-function files, the HTTP layer and the CLI's parser load without
    torch, pyarrow or the Serve layer (package exports are lazy; each CLI command is imported only
    when it runs)."""
    code = (
        "import sys; from cluster import RewardClient, ScoringError, InvalidInput; "
        "import cluster.client.verl_reward, cluster.client.openrlhf_reward_func, cluster.http.app; "
        "from cluster.cli.main import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'pyarrow', 'transformers', 'deployments', 'ray.serve') "
        "if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    help_text = run_cli("--help")
    assert help_text.returncode == 0 and "bench-pipeline" in help_text.stdout and "tiny-model" in help_text.stdout
