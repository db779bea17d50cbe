"""Run a scoring pass as a Ray Job, from a notebook or a laptop: the job runs
`python -m cluster score ...` on the cluster (so it survives the notebook's kernel), and
`wait_for_job` brings back its summary or a clear error with the end of its logs."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from cluster.cli.score import entrypoint, score_command
from cluster.core.config import ModelSpec

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def submit_scoring_job(
    address: str,
    input_path: str,
    output_path: str,
    model: ModelSpec | Mapping[str, Any] | str,
    *,
    runtime_env: dict[str, Any] | None = None,
    submission_id: str | None = None,
    wait: bool = False,
    timeout_s: float = 3600,
    **options: Any,
) -> str | dict[str, Any]:
    """Submit `score_corpus(input_path, output_path, model, **options)` to the Ray cluster whose job
    server (the dashboard, e.g. http://head:8265) is at `address`. Paths are as the cluster sees
    them (a URI, s3://..., is the same everywhere). Returns the job id, or with wait=True the run's
    summary once it succeeds."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=entrypoint(score_command(input_path, output_path, model, **options)),
        runtime_env=runtime_env,
        submission_id=submission_id,
    )
    if not wait:
        return job_id
    wait_for_job(address, job_id, timeout_s)
    from cluster.data.storage import locate

    return json.loads(locate(output_path).child("summary.json").read_text())


def wait_for_job(address: str, job_id: str, timeout_s: float = 3600, poll_s: float = 1.0) -> str:
    """Block until the job ends; raise (with the end of its logs) unless it succeeded."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    status = str(client.get_job_status(job_id))
    while not any(status.endswith(s) for s in TERMINAL):
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id} still {status} after {timeout_s:.0f}s (it keeps running; "
                f"`ray job stop {job_id}` to stop it)"
            )
        time.sleep(poll_s)
        status = str(client.get_job_status(job_id))
    if not status.endswith("SUCCEEDED"):
        logs = client.get_job_logs(job_id)
        raise RuntimeError(
            f"scoring job {job_id} ended {status.rsplit('.', 1)[-1]}; last log lines:\n"
            + "\n".join(logs.strip().splitlines()[-15:])
        )
    return status
