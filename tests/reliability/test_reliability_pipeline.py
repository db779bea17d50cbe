"""The scoring CLI killed mid-run and resumed: `python -m cluster score ...` as a subprocess with its
own local Ray cluster (no --address), SIGKILLed at three points (after its first shard, past 40%
and past 75% of the rows), then run again with the same command until it completes.

Every row must be in the output exactly once (0 lost, 0 duplicated), with the scores of an
uninterrupted run of the same command, and nothing of a killed run may outlive it: every process
that descended from the killed CLI (or carries its environment) must be gone within 10 s (Ray's
fate sharing plus the CLI's watchdog, cluster/cli/reaper.py).

The runs use a RAY_TMPDIR whose ray_current_cluster names an address where nothing listens: a CLI
that joined "the cluster a previous `ray start` recorded" instead of starting its own would fail.

Run with `pytest -m reliability tests/reliability/test_reliability_pipeline.py`; the figures are printed at the
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
from helpers import REPO, TOL, free_port
from test_pipeline import BAD, GOOD, PROMPTS  # the pipeline tests' corpus words

from cluster.data.pipeline import read_scores

pytestmark = pytest.mark.reliability

ROOT = REPO
ROWS = 300
OPTIONS = ["--no-progress", "--rows-per-shard", "20", "--batch-rows", "10"]  # 15 read chunks, 30 shards
KILL_AT = (0, 0.4, 0.75)  # fraction of the rows committed (0: the first shard) when the run is killed
ORPHAN_WAIT_S = 10


# ----------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) from /proc, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
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
    rows = [
        {
            "id": i,
            "subset": "chat",
            "prompt": PROMPTS[i % 8] * (1 + i % 3),
            "chosen": GOOD[(i * 5) % 8],
            "rejected": BAD[(i * 3) % 8],
        }
        for i in range(ROWS)
    ]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env |= {"PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmpdir)}

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "cluster", "score", str(corpus), str(out), "--model", rm, *OPTIONS]

    def start(out: Path, mark: str) -> subprocess.Popen:
        log = open(tmp_path / f"{mark}.log", "w")  # the process writes it; closed when the test ends
        return subprocess.Popen(
            command(out),
            env={**env, "RELIABILITY_RUN": mark},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

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
    diffs = [
        max(abs(g["chosen_score"] - w["chosen_score"]), abs(g["rejected_score"] - w["rejected_score"]))
        for g, w in zip(got, whole)
    ]
    identical = sum(d == 0 for d in diffs)
    figures(
        rows=ROWS,
        kills=kills,
        committed_at_kills=committed_at_kill,
        lost=lost,
        duplicated=duplicated,
        rows_done_before_final=summary["rows_done_before"],
        max_score_diff=f"{max(diffs):.2g}",
        bit_identical_rows=identical,
        ray_processes_at_kills=seen,
        orphans=orphans,
        orphans_after_clean_exit=len(clean_left),
        all_gone_after_s=gone_s,
        seconds=round(time.monotonic() - started),
    )
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


# ----------------------------------------------------------------------------- a curator's default run


RM_BENCH = ROOT.parent / "shared" / "data" / "rm-bench"
STDERR_LIMIT = 30  # "a few dozen lines" for a whole RM-Bench run, not on a terminal


def rm_bench_corpus(folder: Path) -> Path:
    """RM-Bench as it is published (../shared/data/rm-bench when present), else a stand-in of the
    same shape and size: 798 records of a prompt, 3 chosen and 3 rejected responses, and columns
    named like the pipeline's own (RM-Bench's chat file has `error`)."""
    if RM_BENCH.is_dir():
        return RM_BENCH
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("chat", 129), ("code", 228), ("safety-refuse", 284), ("safety-response", 157)):
        rows = [
            {
                "id": i,
                "subset": name,
                "prompt": PROMPTS[i % 8] * (1 + i % 5),
                "chosen": [GOOD[(i + k) % 8] * (1 + k * 4) for k in range(3)],
                "rejected": [BAD[(i + k) % 8] * (1 + k * 4) for k in range(3)],
                "error_key": "k",
                "error": "why the rejected answers are wrong",
            }
            for i in range(n)
        ]
        (folder / f"{name}.json").write_text(json.dumps(rows))
    return folder


def cli_run(args: list[str], ray_tmpdir: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env |= {"PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmpdir)}
    return subprocess.Popen(
        [sys.executable, "-m", "cluster", "score", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_a_default_run_on_rm_bench_is_quiet(tmp_path, reward_dir, ray_tmpdir, figures):
    """`python -m cluster score RM-BENCH OUT --model M`, nothing else, stderr not a terminal: the
    whole run prints a few progress lines and nothing of Ray's (no INFO/WARNING/ERROR log lines,
    no C++ core-worker line, no traceback); every file scores as it is, RM-Bench's own `error`
    column kept as `input_error`."""
    corpus = rm_bench_corpus(tmp_path / "rm-bench")
    started = time.monotonic()
    proc = cli_run([str(corpus), str(tmp_path / "out"), "--model", str(reward_dir("llama"))], ray_tmpdir)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    lines = err.splitlines()
    figures(
        corpus="../shared RM-Bench" if corpus == RM_BENCH else "generated RM-Bench-shaped",
        stderr_lines=len(lines),
        stdout_lines=len(out.splitlines()),
        seconds=round(time.monotonic() - started),
        last_stderr_line=lines[-1] if lines else None,
    )
    assert 1 <= len(lines) <= STDERR_LIMIT, err
    assert all(line.startswith("rows written: ") for line in lines), err
    for noise in ("INFO", "WARNING", "ERROR", "core_worker", "Traceback", "logging_progress", "(raylet)"):
        assert noise not in err, noise
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["rows"] == 798 and summary["moved_columns"] == {"error": "input_error"}
    assert "input column 'error' is kept as 'input_error'" in out


def test_a_killed_run_loses_at_most_flush_s_of_work(tmp_path, reward_dir, ray_tmpdir, figures):
    """SIGKILL mid-run with --flush-s 4: what was scored but not yet written at the kill is at most
    one piece, about 4 s of the model's work (measured: the time from the last commit to the kill),
    where the whole first read chunk (up to 1,024 rows, minutes) was at risk before. The same
    command then finishes the rest, each row once."""
    flush_s = 4.0
    corpus = rm_bench_corpus(tmp_path / "rm-bench")
    out = tmp_path / "out"
    args = [str(corpus), str(out), "--model", str(reward_dir("llama")), "--flush-s", str(flush_s)]
    proc = cli_run(args, ray_tmpdir)
    deadline = time.monotonic() + 600
    while rows_committed(out) < 300:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    time.sleep(flush_s * 0.75)  # land somewhere inside a piece
    parts = list((out / "parts").glob("part-*.parquet"))
    last_commit = max(p.stat().st_mtime for p in parts)
    os.killpg(proc.pid, signal.SIGKILL)
    killed_at = time.time()
    proc.communicate()
    at_risk_s = killed_at - last_commit
    commits = sorted(p.stat().st_mtime for p in parts)
    gaps = [b - a for a, b in zip(commits, commits[1:])]
    gaps.sort()
    written = rows_committed(out)
    rerun = cli_run(args, ray_tmpdir)
    _, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err[-3000:]
    table = read_scores(out)
    ids = list(zip(table["source_file"].to_pylist(), table["source_row"].to_pylist()))
    figures(
        flush_s=flush_s,
        rows_written_at_kill=written,
        seconds_since_last_commit_at_kill=round(at_risk_s, 1),
        median_seconds_between_commits=round(gaps[len(gaps) // 2], 1),
        shards_at_kill=len(parts),
        rows_after_resume=len(ids),
        duplicated=len(ids) - len(set(ids)),
    )
    assert at_risk_s <= 2 * flush_s + 2, at_risk_s
    assert gaps[len(gaps) // 2] <= 2 * flush_s + 2  # one actor: a commit about every flush_s seconds
    assert len(ids) == len(set(ids)) == 798
