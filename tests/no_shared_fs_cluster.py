"""Run by tests/ray/test_no_shared_filesystem.py in its own process (one Ray cluster per process): a
cluster of two nodes that share no filesystem, on one machine.

The head node is this driver's (`ray.init`, no CPUs: every task and actor runs on the worker). The
worker node is `ray start` inside its own Linux mount namespace (`unshare -m`), with a private tmpfs
mounted over the test's folder, so it cannot see the driver's files there, as a KubeRay pod or a
cloud VM cannot. Both nodes reach the S3 server through the same AWS environment.

Prints one JSON line: what the worker sees of the driver's folder, the run from s3:// to s3:// (the
model's weights on s3:// too), and the errors of a run from a local input and to a local output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

os.environ["RAY_AUTH_MODE"] = "disabled"

import pyarrow.fs as pafs  # noqa: E402
import ray  # noqa: E402
from helpers import FAST  # noqa: E402  (tests/ is this script's folder, first on sys.path)

from cluster import load_model, read_scores, score_corpus  # noqa: E402
from cluster.core.errors import ScoringError  # noqa: E402

OPTIONS = {**FAST, "rows_per_shard": 4}


def start_worker(address: str, hidden: str) -> subprocess.Popen:
    """`ray start` in a mount namespace of its own, `hidden` covered by an empty tmpfs there."""
    script = f"mount -t tmpfs tmpfs {hidden} && exec ray start --address={address} --num-cpus=2 --num-gpus=0 --block"
    return subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def error_of(run) -> dict:
    started = time.monotonic()
    try:
        run()
    except ScoringError as err:
        return {"type": type(err).__name__, "message": err.message, "seconds": time.monotonic() - started}
    return {"type": None, "message": None, "seconds": time.monotonic() - started}


def main(work: str, hidden: str, model_dir: str, bucket: str) -> None:
    ray.init(address="local", num_cpus=0, num_gpus=0, include_dashboard=False, log_to_driver=False)
    head = ray.get_runtime_context().get_node_id()
    worker = start_worker(ray.get_runtime_context().gcs_address, hidden)
    try:
        deadline = time.monotonic() + 120
        while sum(1 for n in ray.nodes() if n["Alive"]) < 2:
            assert time.monotonic() < deadline, "the worker node did not join"
            assert worker.poll() is None, "the worker node exited"
            time.sleep(0.5)

        corpus = os.path.join(work, "in", "pairs.jsonl")

        @ray.remote(num_cpus=1)
        def sees(path: str) -> bool:
            return os.path.exists(path)

        worker_sees_corpus = ray.get(sees.remote(corpus))

        s3 = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], allow_bucket_creation=True)
        s3.create_dir(bucket)
        pafs.copy_files(os.path.join(work, "in"), f"{bucket}/in", destination_filesystem=s3)
        pafs.copy_files(model_dir, f"{bucket}/rm", destination_filesystem=s3)
        spec = {"name": "rm", "path": f"s3://{bucket}/rm", "kind": "reward", "dtype": "float32"}

        summary = score_corpus(f"s3://{bucket}/in", f"s3://{bucket}/out", spec, **OPTIONS)
        table = read_scores(f"s3://{bucket}/out")
        rows = [json.loads(line) for line in open(corpus)]
        reference = load_model({**spec, "path": model_dir})
        card = {
            "chosen": reference.score(
                [
                    [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]
                    for r in rows
                ]
            )
        }
        local_input = error_of(lambda: score_corpus(corpus, f"s3://{bucket}/out-local-in", spec, **OPTIONS))
        local_output = error_of(
            lambda: score_corpus(f"s3://{bucket}/in", os.path.join(work, "out-local"), spec, **OPTIONS)
        )
        print(
            json.dumps(
                {
                    "nodes": sum(1 for n in ray.nodes() if n["Alive"]),
                    "head_cpus": next(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == head),
                    "worker_sees_corpus": worker_sees_corpus,
                    "driver_sees_corpus": os.path.exists(corpus),
                    "rows_scored": summary["rows_scored_now"],
                    "ids": list(zip(table["source_file"].to_pylist(), table["source_row"].to_pylist())),
                    "chosen_score": table["chosen_score"].to_pylist(),
                    "card_chosen": card["chosen"],
                    "local_input": local_input,
                    "local_output": local_output,
                }
            )
        )
    finally:
        ray.shutdown()
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)


if __name__ == "__main__":
    main(*sys.argv[1:])
