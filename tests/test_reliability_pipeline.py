"""The scoring CLI killed mid-run and resumed: `python -m cluster score ...` as a subprocess with its
own local Ray cluster (no --address), SIGKILLed at three points (after its first shard, past 40%
and past 75% of the rows), then run again with the same command until it completes.

Every row must be in the output exactly once (0 lost, 0 duplicated), with the scores of an
uninterrupted run of the same command, and nothing of a killed run may outlive it: every process
that descended from the killed CLI (or carries its environment) must be gone within 10 s (Ray's
fate sharing plus the CLI's watchdog, cluster/cli/reaper.py).

The runs use a RAY_TMPDIR whose ray_current_cluster names an address where nothing listens: a CLI
that joined "the cluster a previous `ray start` recorded" instead of starting its own would fail.

Run with `pytest -m reliability tests/test_reliability_pipeline.py`; the figures are printed at the
end of the run (tests/conftest.py `figures`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TOL, free_port
from test_pipeline import BAD, GOOD, PROMPTS  # the pipeline tests' corpus words

from cluster.data.pipeline import read_scores

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[1]
ROWS = 300
OPTIONS = ["--no-progress", "--rows-per-shard", "20", "--batch-rows", "10"]  # 15 read chunks, 30 shards
KILL_AT = (0, 0.4, 0.75)  # fraction of the rows committed (0: the first shard) when the run is killed
ORPHAN_WAIT_S = 10


# ----------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) from /proc, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2:].split()
        return int(fields[1]), fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def run_processes(root: int, mark: str) -> dict[int, int]:
    """pid -> start time of the CLI's descendants and of every process carrying the run's mark."""
    table = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    needle = f"RELIABILITY_RUN={mark}".encode()
    found, todo = {}, [root]
    for pid in table:
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                todo.append(pid)
        except OSError:
            pass
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid][2]
            todo += children.get(pid, [])
    found.pop(root, None)
    return found


def still_alive(tracked: dict[int, int]) -> list[int]:
    return [p for p, start in tracked.items() if (s := _stat(p)) is not None and s[2] == start and s[1] != "Z"]


def rows_committed(out: Path) -> int:
    parts = list((out / "parts").glob("part-*.parquet")) if (out / "parts").is_dir() else []
    total = 0
    for part in parts:
        try:
            total += pq.read_metadata(part).num_rows
        except OSError:  # renamed away meanwhile: never happens to a committed shard, but be safe
            pass
    return total


# ----------------------------------------------------------------------------- the runs


@pytest.fixture
def ray_tmpdir():
    """A short RAY_TMPDIR (Ray's socket paths must stay short) whose ray_current_cluster points at
    a port where nothing listens."""
    path = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    (path / "ray").mkdir()
    (path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_killed_cli_runs_resume_exactly_once_and_leave_nothing(tmp_path, reward_dir, ray_tmpdir, figures):
    assert sys.platform.startswith("linux"), "counts processes through /proc"
    started = time.monotonic()
    rm = str(reward_dir("llama"))
    rows = [{"id": i, "subset": "chat", "prompt": PROMPTS[i % 8] * (1 + i % 3), "chosen": GOOD[(i * 5) % 8],
             "rejected": BAD[(i * 3) % 8]} for i in range(ROWS)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env |= {"PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmpdir)}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "cluster", "score", str(corpus), str(out), "--model", rm, *OPTIONS]

    def start(out: Path, mark: str) -> subprocess.Popen:
        log = open(tmp_path / f"{mark}.log", "w")  # the process writes it; closed when the test ends
        return subprocess.Popen(command(out), env={**env, "RELIABILITY_RUN": mark}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(mark: str) -> str:
        return (tmp_path / f"{mark}.log").read_text()[-3000:]

    # the uninterrupted run: the reference scores, and a clean exit leaves nothing either
    mark = uuid.uuid4().hex
    proc = start(tmp_path / "whole", mark)
    tracked: dict[int, int] = {}
    while proc.poll() is None:
        tracked |= run_processes(proc.pid, mark)
        time.sleep(0.5)
    assert proc.returncode == 0, log_tail(mark)
    clean_left = _wait_gone(tracked, ORPHAN_WAIT_S)
    whole = read_scores(tmp_path / "whole").to_pylist()
    assert [r["source_row"] for r in whole] == list(range(ROWS))

    # killed three times, then resumed to the end with the same command
    out, kills, orphans, seen, committed_at_kill, gone_s = tmp_path / "killed", 0, 0, 0, [], []
    for fraction in KILL_AT:
        mark = uuid.uuid4().hex
        proc = start(out, mark)
        before = rows_committed(out)
        target = max(before + 1, int(fraction * ROWS))
        deadline = time.monotonic() + 240
        while rows_committed(out) < target:
            assert proc.poll() is None, f"the run ended before the kill point:\n{log_tail(mark)}"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        tracked = run_processes(proc.pid, mark)
        os.kill(proc.pid, signal.SIGKILL)  # the CLI alone, as `kill -9 PID` (not its process group)
        proc.wait()
        kills += 1
        committed_at_kill.append(rows_committed(out))
        seen += len(tracked)
        t0 = time.monotonic()
        left = _wait_gone(tracked, ORPHAN_WAIT_S)
        gone_s.append(round(time.monotonic() - t0, 1))
        orphans += len(left)
        for pid in left:  # do not let a failure here leak into the next run
            _kill(pid)
    assert committed_at_kill[-1] < ROWS, "the last kill was meant to land mid-run"
    mark = uuid.uuid4().hex
    proc = start(out, mark)
    assert proc.wait(timeout=300) == 0, log_tail(mark)
    summary = json.loads((out / "summary.json").read_text())

    table = read_scores(out)
    ids = table["source_row"].to_pylist()
    got = table.to_pylist()
    lost, duplicated = len(set(range(ROWS)) - set(ids)), len(ids) - len(set(ids))
    diffs = [max(abs(g["chosen_score"] - w["chosen_score"]), abs(g["rejected_score"] - w["rejected_score"]))
             for g, w in zip(got, whole)]
    identical = sum(d == 0 for d in diffs)
    figures(rows=ROWS, kills=kills, committed_at_kills=committed_at_kill, lost=lost, duplicated=duplicated,
            rows_done_before_final=summary["rows_done_before"], max_score_diff=f"{max(diffs):.2g}",
            bit_identical_rows=identical, ray_processes_at_kills=seen, orphans=orphans,
            orphans_after_clean_exit=len(clean_left), all_gone_after_s=gone_s,
            seconds=round(time.monotonic() - started))
    assert lost == 0 and duplicated == 0 and ids == list(range(ROWS))
    assert [g["id"] for g in got] == [r["id"] for r in rows]
    assert max(diffs) <= TOL
    assert summary["rows_done_before"] + summary["rows_scored_now"] == ROWS
    assert orphans == 0, "processes of a killed run outlived it"
    assert not clean_left


def _wait_gone(tracked: dict[int, int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := still_alive(tracked)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
