"""`python -m cluster gpu-check --smoke`, run the way the GPU machine runs it: through
cluster/bench/device_check.sh, with pydantic and its dependencies installed from wheels into a fresh
folder, and Ray, FastAPI, Starlette, httpx, pyarrow, uvicorn and flash-attn impossible to import
(the GPU machine has none of them). The smoke builds the seeds' architectures shrunk, with random
weights, and compares ours with the card's loop, so it is a parity test; the table's every field is
checked for every model, so the prepared command cannot rot between GPU loans.

The wheels here are this environment's installed packages zipped as wheels (the GPU machine's are
for its Python 3.12 and cannot install here); the slow test fetches the real ones.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO

from cluster.bench.gpu_measure import ATTENTION
from cluster.core.results import SCORE_TOLERANCE

SCRIPT = REPO / "cluster" / "bench" / "device_check.sh"
CARRIED = ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")
ABSENT = ("ray", "fastapi", "starlette", "httpx", "pyarrow", "uvicorn", "flash_attn")
SEEDS = (
    "skywork-reward-llama-3.1-8b",
    "skywork-reward-v2-qwen3-8b",
    "skywork-critic-llama-3.1-8b",
    "skywork-reward-gemma-2-27b",
)
# Started before anything else in the check's interpreter (a sitecustomize on PYTHONPATH): the GPU
# machine's packages are absent (importing one fails, and transformers' availability probes see no
# package), and the carried ones are found only in the folder the script installed them into.
SITECUSTOMIZE = f"""
import importlib.abc, importlib.machinery, os, sys

for name in {ABSENT!r}:
    sys.modules[name] = None

class CarriedOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in {CARRIED[:-1]!r}:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [os.environ["GPU_CHECK_SITE"]])
        if spec is None:
            raise ModuleNotFoundError(f"{{name}} is not in the carried folder", name=name)
        return spec

sys.meta_path.insert(0, CarriedOnly())
"""


def zip_installed(dist_name: str, folder: Path) -> Path:
    """An installed distribution zipped as a wheel of its own files (installable here only)."""
    dist = importlib.metadata.distribution(dist_name)
    name = dist.metadata["Name"].replace("-", "_")
    wheel = folder / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as out:
        for file in dist.files or []:
            path = Path(file.locate())
            if path.is_file() and "__pycache__" not in file.parts and ".." not in file.parts:
                out.write(path, str(file))
    return wheel


def test_device_script_runs_the_smoke_with_carried_wheels_only(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for dist in ("pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions"):
        zip_installed(dist, wheels)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out, site = tmp_path / "out", tmp_path / "site"
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "WHEELS": str(wheels),
        "SITE": str(site),
        "GPU_CHECK_SITE": str(site),
        "PYTHONPATH": str(hooks),
    }
    # --budget: the fields are the subject here, not the time (speed is never asserted in a test)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "out", "--smoke", "--budget", "120"],  # OUT_DIR as the caller's cwd has it
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert {p.name for p in site.iterdir()} >= {"pydantic", "pydantic_core", "annotated_types"}
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["ok"] and report["mode"] == "smoke" and not report["errors"] and not report["skipped"]
    assert (out / "gpu-check.md").read_text().startswith("# GPU check (smoke)")
    assert "gpu-check: ok" in (out / "gpu-check.log").read_text()
    for title in ("tokens/s", "x card", "MFU", "max |diff|", "attention", "peak GB"):
        assert title in proc.stdout

    assert report["device"]["matmul"]["flops_per_s"] > 0 and report["device"]["matmul"]["dtype"] == "float32"
    rows = {(r["model"], r["shape"], r["method"]): r for r in report["rows"]}
    assert set(rows) == {
        (m, s, method)
        for m in SEEDS
        for s in ("rm-bench", "grpo")
        for method in ("card loop", "fixed batch 16", "ours")
    }
    for key, r in rows.items():
        assert r["tokens_per_s"] > 0 and r["ratio_to_card"] > 0 and r["mfu"] > 0, key
        assert r["max_abs_diff"] <= r["tolerance"] == SCORE_TOLERANCE, key  # fp32 on a CPU
        assert r["attention"] in ATTENTION and r["peak_memory_gb"] > 0, key
        assert r["computed_tokens"] > 0 and r["useful_tokens"] > 0, key
    for m in SEEDS:  # the shared prefix computed once: ours computes fewer tokens than the card's loop
        assert rows[(m, "grpo", "ours")]["computed_tokens"] < rows[(m, "grpo", "card loop")]["computed_tokens"]

    assert set(report["attention"]) == set(SEEDS)
    for m, trial in report["attention"].items():
        assert trial["chosen"] in ATTENTION and set(trial["trials"]) == set(ATTENTION), m
    gemma = report["attention"]["skywork-reward-gemma-2-27b"]
    assert gemma["trials"]["sdpa"].startswith("not allowed") and gemma["default"] == "eager"
    assert [f["model"] for f in report["fp32"]] == list(SEEDS)
    assert all(f["max_abs_diff"] <= f["tolerance"] == SCORE_TOLERANCE for f in report["fp32"])
    assert [g["method"] for g in report["generation"]] == [
        "card (model.generate, one at a time)",
        "ours (continuous batching)",
    ]
    assert all(g["tokens_per_s"] > 0 and g["tokens"] > 0 for g in report["generation"])
    assert [p["devices"] for p in report["placement"]] == [2, 4]
    for plan in report["placement"]:
        layers = [int(name.rsplit(".", 1)[1]) for name in plan["device_map"] if name.rsplit(".", 1)[-1].isdigit()]
        assert sorted(layers) == list(range(80)) and len(plan["per_device"]) == plan["devices"]


@pytest.mark.slow
def test_fetched_wheels_are_the_gpu_machines(tmp_path):
    """`device_check.sh --fetch-wheels` (needs the network): pydantic and its dependencies for
    CPython 3.12 on x86-64 Linux, the GPU machine's."""
    wheels = tmp_path / "wheels"
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--fetch-wheels"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WHEELS": str(wheels)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in wheels.glob("*.whl"))
    assert {n.split("-")[0] for n in names} == set(CARRIED)
    [core] = [n for n in names if n.startswith("pydantic_core-")]
    assert "-cp312-cp312-" in core and "manylinux" in core and core.endswith("x86_64.whl")
