"""The ingress's settings (validated, autoscaling options) and its gatherer, without a cluster."""

from __future__ import annotations

import asyncio

import pytest

from cluster.bench.serve import client_counts
from cluster.bench.serve_baselines import ingress_options
from cluster.core.config import AppConfig, ConfigError, IngressSettings
from cluster.core.errors import InvalidInput
from deployments.ingress import Gatherer

MODEL = {"name": "rm", "path": "/models/rm", "kind": "reward"}


def test_ingress_settings_are_validated():
    assert AppConfig(models=[MODEL]).ingress == IngressSettings()
    with pytest.raises(ConfigError, match=r"min_replicas \(3\) > max_replicas \(2\)"):
        AppConfig(models=[MODEL], ingress={"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ConfigError, match="unknown field 'replicas'"):
        IngressSettings(replicas=2)
    with pytest.raises(ConfigError, match="gather_max_flows"):
        IngressSettings(gather_max_flows=0)


def test_ingress_autoscales_like_the_other_deployments():
    options = ingress_options(
        IngressSettings(
            min_replicas=1, max_replicas=4, target_ongoing_requests=32, num_cpus=0.5, max_ongoing_requests=300
        )
    )
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32}
    assert options["num_replicas"] is None and options["ray_actor_options"] == {"num_cpus": 0.5}
    assert options["max_ongoing_requests"] == 300
    fixed = ingress_options(IngressSettings(min_replicas=2, max_replicas=2))
    assert fixed["num_replicas"] == 2 and fixed["autoscaling_config"] is None
    # the baseline switch deploys the ingress as before issue 13
    assert ingress_options(IngressSettings(fast_path=False)) == {
        "name": "ingress",
        "max_ongoing_requests": 512,
        "ray_actor_options": {"num_cpus": 0},
    }


def test_gatherer_runs_concurrent_jobs_in_shared_flows():
    flows = []

    async def run(jobs):
        flows.append(list(jobs))
        await asyncio.sleep(0.01)
        return [InvalidInput(f"bad {j}") if j % 5 == 0 else j * 10 for j in jobs]

    async def main():
        gather = Gatherer(run, max_jobs=8, max_flows=2)
        return gather, await asyncio.gather(*(gather(j) for j in range(1, 21)))

    gather, results = asyncio.run(main())
    assert [r if not isinstance(r, BaseException) else str(r) for r in results] == [
        str(InvalidInput(f"bad {j}")) if j % 5 == 0 else j * 10 for j in range(1, 21)
    ]
    assert sorted(j for f in flows for j in f) == list(range(1, 21))  # each job run once
    assert max(len(f) for f in flows) == 8 and len(flows) < 20  # gathered, never more than max_jobs
    assert gather.stats["flows"] == len(flows) and gather.stats["jobs"] == 20
    assert gather.active == 0 and not gather.queue


def test_gatherer_bounds_flows_in_flight_and_fails_a_flow_alone():
    running, peak = 0, 0

    async def run(jobs):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        if 3 in jobs:
            raise RuntimeError("replica lost")
        return list(jobs)

    async def main():
        gather = Gatherer(run, max_jobs=2, max_flows=2)
        return await asyncio.gather(*(gather(j) for j in range(8)))

    results = asyncio.run(main())
    assert peak == 2
    failed = [j for j, r in zip(range(8), results) if isinstance(r, RuntimeError)]
    assert 3 in failed and len(failed) == 2  # the flow that held job 3, and only it
    assert all(r == j for j, r in zip(range(8), results) if j not in failed)


def test_gatherer_waits_for_more_jobs_when_asked():
    flows = []

    async def run(jobs):
        flows.append(list(jobs))
        return list(jobs)

    async def main():
        gather = Gatherer(run, max_jobs=16, max_flows=1, wait_s=0.05)
        first = asyncio.ensure_future(gather(0))
        await asyncio.sleep(0.01)
        rest = await asyncio.gather(*(gather(j) for j in range(1, 4)))
        return [await first, *rest]

    assert asyncio.run(main()) == [0, 1, 2, 3]
    assert flows == [[0, 1, 2, 3]]


def test_bench_serve_client_counts():
    assert client_counts(["64,256", "512"], 16) == [64, 256, 512]
    assert client_counts(None, 64) == [64]
