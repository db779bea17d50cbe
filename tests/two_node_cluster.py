"""Run by test_serve.py in its own process (one Ray cluster per process): a two-node cluster made
with ray.cluster_utils.Cluster, one fake GPU per node, the reward model at two `num_gpus: 1`
replicas. Prints one JSON line with where the replicas landed and what the requests returned."""

from __future__ import annotations

import json
import os
import socket
import sys

os.environ["RAY_AUTH_MODE"] = "disabled"

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from deployments.app import build_app  # noqa: E402


def main(model_dir: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 4, "num_gpus": 1})
    cluster.add_node(num_cpus=4, num_gpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = {
        "tokenizer": {"min_replicas": 1, "max_replicas": 1, "num_cpus": 0.1},
        "models": [
            {
                "name": "rm",
                "path": model_dir,
                "kind": "reward",
                "replicas": {
                    "min_replicas": 2,
                    "max_replicas": 2,
                    "num_gpus": 1,
                    "num_cpus": 0.1,
                    "batch_wait_timeout_s": 0,
                },
            }
        ],
    }
    serve.run(build_app(args), name="scoring", route_prefix="/")
    conv = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
    ]
    scores = [
        httpx.post(f"http://127.0.0.1:{port}/v1/rewards", json={"conversations": [conv]}, timeout=60).json()["scores"][
            0
        ]
        for _ in range(24)
    ]
    handle = serve.get_deployment_handle("reward-rm", app_name="scoring")
    replicas = {}
    for _ in range(60):
        stats = handle.get_stats.remote().result()
        replicas[stats["replica"]] = {"node_id": stats["node_id"], "gpu_ids": stats["gpu_ids"], "calls": stats["calls"]}
        if len(replicas) == 2:
            break
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print(json.dumps({"nodes": nodes, "replicas": replicas, "scores": scores}))
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
