"""A Ray cluster whose two nodes share no filesystem (tests/no_shared_fs_cluster.py, in its own
process): the worker node runs in its own mount namespace with a private tmpfs over the test's
folder, and holds every CPU, so every read task, tokenizer and model actor runs where the driver's
files cannot be seen. From s3:// to s3://, the model's weights on s3:// too, every row is scored
once, equal to the model card's scores; a local input, or a local output, fails in seconds with
one error saying it must be reachable from every node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, TOL, pair_rows, write_corpus

pytestmark = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare")


@pytest.mark.slow  # for time (CI runs `pytest -m slow`)
def test_nodes_that_share_no_filesystem_score_from_and_to_s3(s3, tmp_path_factory, rm_path):
    work = tmp_path_factory.mktemp("driver-only")
    rows = pair_rows(10)
    write_corpus(work / "in" / "pairs.jsonl", rows)
    bucket = s3.bucket("two-nodes").removeprefix("s3://")
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "no_shared_fs_cluster.py"), str(work), str(work), rm_path, bucket],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    [line] = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"nodes"')]
    result = json.loads(line)
    assert result["nodes"] == 2 and result["head_cpus"] == 0  # all the work on the worker node
    assert result["driver_sees_corpus"] and not result["worker_sees_corpus"]  # no shared filesystem
    assert result["rows_scored"] == len(rows)
    assert [tuple(i) for i in result["ids"]] == [("pairs.jsonl", i) for i in range(len(rows))]  # every row once
    assert all(abs(a - b) <= TOL for a, b in zip(result["chosen_score"], result["card_chosen"], strict=True))
    for case in ("local_input", "local_output"):
        error = result[case]
        assert error["type"] == "InvalidInput", (case, error)
        assert "reachable from every node" in error["message"], (case, error)
        assert error["seconds"] < 120, (case, error)  # said, not a hang
