"""Corpora, outputs and model weights in object storage: a real S3 API server on loopback (moto's
server from PyPI, in its own process: the `s3` fixture), reached only through the standard AWS
environment (helpers.S3_ENV), as a user's cluster reaches its bucket. Storage itself
(cluster/data/storage.py, cluster/engine/weights.py) first, then the pipeline from s3:// to s3://
with the model's weights on s3:// too, score_dataset over Ray Data's own S3 reader, and a run killed
with SIGKILL and resumed on S3. The cluster whose nodes share no filesystem:
test_no_shared_filesystem.py."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FAST, REPO, S3_ENV, close, pair_rows, turn, write_corpus
from ray.data.expressions import col

from cluster import InvalidInput
from cluster.data.pipeline import expand_inputs, filter_pairs, read_scores, score_corpus, score_dataset
from cluster.data.storage import locate
from cluster.engine.weights import local_copy

ray = pytest.importorskip("ray")


def rm_spec(path: str) -> dict:
    return {"name": "rm", "path": path, "kind": "reward", "dtype": "float32"}


@pytest.fixture(scope="module")
def rm_on_s3(s3, rm_path):
    """The tiny reward model's folder, uploaded as save_pretrained wrote it."""
    return s3.put_folder(rm_path, s3.bucket("models") + "/rm")


# ---------------------------------------------------------------- storage


def test_a_location_reads_writes_and_lists_alike_on_s3_and_on_disk(s3, tmp_path):
    """The same calls on both filesystems; what travels to a Ray worker holds no credential."""
    for root in (locate(tmp_path / "store"), locate(s3.bucket() + "/store")):
        table = pa.table({"x": [1, 2, 3]})
        root.child("parts", "part-1.parquet").write(table)
        root.child("parts", "errors-1.jsonl").write('{"a": 1}\n')
        root.child("run.json").write("{}")
        assert root.child("parts", "part-1.parquet").read_parquet().equals(table)
        assert [p.name for p in root.child("parts").glob("part-*.parquet")] == ["part-1.parquet"]
        assert [f.name for f in root.files()] == ["errors-1.jsonl", "part-1.parquet", "run.json"]
        assert root.is_dir() and root.child("run.json").is_file() and not root.child("nothing").exists()
        assert not [f for f in root.files() if f.name.endswith(".tmp")]  # written whole, nothing aside left
        travelled = pickle.loads(pickle.dumps(root))
        assert travelled.child("run.json").read_text() == "{}"
        assert S3_ENV["AWS_SECRET_ACCESS_KEY"].encode() not in pickle.dumps(root)
        root.delete()
        assert not root.child("run.json").exists()


def test_inputs_expand_alike_on_s3_and_on_disk(s3, tmp_path):
    """A folder (recursively), one file and a glob: the same files, named the same relative to it."""
    for name in ("a.jsonl", "b.parquet", "sub/c.json"):
        write_corpus(tmp_path / "in" / name, pair_rows(2))
    (tmp_path / "in" / "notes.txt").write_text("not an input")
    bucket = s3.put_folder(tmp_path / "in", s3.bucket() + "/in")
    for root in (str(tmp_path / "in"), bucket):
        for given, expected in (
            (root, ["a.jsonl", "b.parquet", "sub/c.json"]),
            (root + "/b.parquet", ["b.parquet"]),
            (root + "/*.jsonl", ["a.jsonl"]),
            (root + "/**/*.json", ["sub/c.json"]),
        ):
            files, _ = expand_inputs(given)
            assert [os.path.relpath(f.path, locate(root).path) for f in files] == expected, given
    with pytest.raises(InvalidInput, match="no input files"):
        expand_inputs(bucket + "/nothing-here/")


def test_a_model_on_s3_is_copied_once_per_node_and_again_when_it_changes(s3, rm_path, tmp_path, monkeypatch):
    """Config reads copy the small files only; a load copies the weights once, whoever asks at the
    same time; the same URI rewritten is copied again (a copy is never changed in place)."""
    monkeypatch.setenv("SCORING_CLUSTER_CACHE", str(tmp_path / "cache"))
    uri = s3.put_folder(rm_path, s3.bucket("models") + "/rm")
    small = local_copy(uri, weights=False)
    assert os.path.isfile(os.path.join(small, "config.json"))
    assert not [f for f in os.listdir(small) if f.endswith(".safetensors")]
    copies: list[str] = []
    threads = [threading.Thread(target=lambda: copies.append(local_copy(uri))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(copies)) == 1 and copies[0] != small
    assert sorted(os.listdir(copies[0])) == sorted(os.listdir(rm_path))
    assert not [d for d in os.listdir(tmp_path / "cache" / "models") if d.endswith(".partial")]
    made = os.stat(copies[0]).st_mtime_ns
    assert local_copy(uri) == copies[0] and os.stat(copies[0]).st_mtime_ns == made  # found, not copied again
    assert local_copy(uri, weights=False) == copies[0]  # the whole copy serves a config read too
    s3.fs.open_output_stream(uri.removeprefix("s3://") + "/extra.txt").close()
    assert local_copy(uri) != copies[0]


# ---------------------------------------------------------------- the pipeline on s3://


def test_pairs_from_s3_to_s3_with_the_model_on_s3(ray_cluster, s3, tmp_path, rm, rm_on_s3):
    """filter_pairs (score_corpus underneath) from a bucket to a bucket, the weights copied from
    one: every row once in input order, scores equal the card's; kept/dropped on S3; a rerun finds
    every row done; read_scores, the report and the CLI take the URI; no key in any file written."""
    rows = pair_rows(10)
    write_corpus(tmp_path / "in" / "a.jsonl", rows[:6])
    write_corpus(tmp_path / "in" / "b.parquet", rows[6:])
    source = s3.put_folder(tmp_path / "in", s3.bucket("corpus") + "/in")
    out = s3.bucket("scores") + "/run"
    summary = filter_pairs(source, out, rm_spec(rm_on_s3), **FAST)
    assert summary["output"] == out and summary["rows_scored_now"] == 10 and summary["errors"] == 0

    table = read_scores(out)
    assert list(zip(table["source_file"].to_pylist(), table["source_row"].to_pylist())) == [
        ("a.jsonl", i) for i in range(6)
    ] + [("b.parquet", i) for i in range(4)]
    assert close(table["chosen_score"].to_pylist(), rm.score([turn(r["prompt"], r["chosen"]) for r in rows]))
    assert close(table["rejected_score"].to_pylist(), rm.score([turn(r["prompt"], r["rejected"]) for r in rows]))
    kept = pq.read_table(out.removeprefix("s3://") + "/kept.parquet", filesystem=s3.fs)
    assert kept.num_rows == summary["kept"] == sum(m > 0 for m in table["margin"].to_pylist())

    again = score_corpus(source, out, rm_spec(rm_on_s3), **FAST)
    assert again["rows_done_before"] == 10 and again["rows_scored_now"] == 0

    secret = S3_ENV["AWS_SECRET_ACCESS_KEY"]
    for name in ("run.json", "summary.json"):
        assert secret not in locate(out).child(name).read_text()
    report = subprocess.run(
        [sys.executable, "-m", "cluster", "report", out, "--out", str(tmp_path / "report.html")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert report.returncode == 0, report.stderr[-2000:]
    assert secret not in report.stdout + report.stderr
    assert "10" in (tmp_path / "report.html").read_text()


def test_score_dataset_over_ray_datas_own_s3_reader_and_writer(ray_cluster, s3, tmp_path, rm, rm_on_s3):
    """ray.data.read_parquet("s3://...") in, a lazy Dataset out (the input's columns plus the
    scores), composed before (filter) and after (write_parquet to s3://)."""
    rows = pair_rows(8)
    write_corpus(tmp_path / "in" / "pairs.parquet", rows)
    source = s3.put_folder(tmp_path / "in", s3.bucket("corpus") + "/in") + "/pairs.parquet"
    ds = ray.data.read_parquet(source).filter(expr=col("id") != "r3")
    scored = score_dataset(ds, rm_spec(rm_on_s3), **FAST)
    assert isinstance(scored, ray.data.Dataset)
    target = s3.bucket("scores") + "/dataset"
    scored.write_parquet(target)
    table = pq.read_table(target.removeprefix("s3://"), filesystem=s3.fs)
    by_id = {r["id"]: r for r in table.to_pylist()}
    kept = [r for r in rows if r["id"] != "r3"]
    assert sorted(by_id) == sorted(r["id"] for r in kept)
    assert set(rows[0]) <= set(table.column_names) and "chosen_score" in table.column_names
    assert close(
        [by_id[r["id"]]["chosen_score"] for r in kept], rm.score([turn(r["prompt"], r["chosen"]) for r in kept])
    )


@pytest.mark.slow  # for time (CI runs `pytest -m slow`)
def test_a_run_killed_with_sigkill_resumes_on_s3_exactly_once(ray_cluster, s3, tmp_path, rm, rm_on_s3):
    """The CLI scoring s3:// to s3:// SIGKILLed (with its process group) once shards are committed,
    then the same command again: every row once, equal to the model's scores. Object storage has no
    rename: a shard is one object, whole or absent."""
    n = 240
    rows = [{"id": i, "prompt": f"Question {i}: " + "why? " * (i % 5), "response": f"Answer {i}."} for i in range(n)]
    write_corpus(tmp_path / "in" / "big.jsonl", rows)
    source = s3.put_folder(tmp_path / "in", s3.bucket("corpus") + "/in")
    out = s3.bucket("scores") + "/killed"
    parts = locate(out).child("parts")
    command = [
        sys.executable,
        "-m",
        "cluster",
        "score",
        source,
        out,
        "--model",
        json.dumps(rm_spec(rm_on_s3)),
        "--address",
        ray_cluster["address"],
        *("--rows-per-shard", "8", "--batch-rows", "4", "--no-progress", "--num-cpus", "0.5"),
        *("--num-gpus", "0", "--tokenizer-num-cpus", "0.25"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and len(parts.glob("part-*.parquet")) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_scores(out).num_rows
    assert 0 < partial < n, "the kill was meant to land mid-run"

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in resumed.stdout + resumed.stderr
    summary = json.loads(locate(out).child("summary.json").read_text())
    assert summary["rows_done_before"] == partial and summary["rows_scored_now"] == n - partial
    table = read_scores(out)
    assert table["source_row"].to_pylist() == list(range(n))  # none lost, none twice, in input order
    assert close(table["score"].to_pylist(), rm.score([turn(r["prompt"], r["response"]) for r in rows]))


def test_the_readmes_object_storage_example_runs(ray_cluster, s3, tmp_path, rm_path):
    """The README's object-storage block, its bucket the test's (a tiny model under the real
    model's name, an RM-Bench-shaped corpus), with the options a shared test cluster needs."""
    import re

    readme = (REPO / "README.md").read_text()
    code = [b for b in re.findall(r"^```python\n(.*?)^```", readme, flags=re.S | re.M) if "s3://my-bucket" in b][0]
    bucket = s3.bucket("readme")
    s3.put_folder(rm_path, bucket + "/models/Skywork-Reward-Llama-3.1-8B-v0.2")
    rows = pair_rows(6, subset=lambda i: ["chat", "code"][i % 2])
    write_corpus(tmp_path / "rm-bench" / "pairs.parquet", rows)
    s3.put_folder(tmp_path / "rm-bench", bucket + "/rm-bench")
    code = code.replace("s3://my-bucket", bucket)
    assert code.count(", rm)") == 2
    code = code.replace(", rm)", ", rm, **OPTIONS)")  # no fake GPU of the test cluster's Serve replicas
    exec(compile(code, "README.md (object storage)", "exec"), {"OPTIONS": FAST})
    assert read_scores(bucket + "/scores/rm-bench/").num_rows == 6
    chat = pq.read_table(bucket.removeprefix("s3://") + "/scores/rm-bench-chat", filesystem=s3.fs)
    assert sorted(chat["id"].to_pylist()) == [r["id"] for r in rows if r["subset"] == "chat"]
