"""The tests' fixtures: tiny models built once per run, the Ray cluster and Serve app, the in-process
app, and the reliability suite's figures. Plain helpers are in helpers.py; each test folder's scope is
its marker (unit, parity, http, ray, reliability)."""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

import pytest
from helpers import (
    API_KEY,
    REWARD_VARIANTS,
    InProcessClient,
    LiveServer,
    S3Server,
    app_args,
    deploy,
    free_port,
    reference_models,
)

from cluster.tiny import build_tiny_model  # noqa: E402 - after helpers set the environment

SCOPES = ("unit", "parity", "http", "ray", "reliability")


def pytest_collection_modifyitems(items):
    """A test's folder is its scope and its marker: `pytest -m unit`, `pytest tests/http`."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in SCOPES:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")

    @cache
    def build(name: str, kind: str = "reward", **kw) -> Path:
        return build_tiny_model(root / f"{kind}-{name}", kind=kind, seed=len(name), **kw)

    return build


@pytest.fixture(scope="session")
def reward_dir(model_dirs):
    return lambda variant: model_dirs(variant, **REWARD_VARIANTS[variant])


@pytest.fixture(scope="module")
def rm_path(reward_dir):
    """The llama tiny reward model's directory (the pipeline tests' model)."""
    return str(reward_dir("llama"))


@pytest.fixture(scope="module")
def rm(rm_path):
    from cluster import ModelSpec, load_model

    return load_model(ModelSpec(name="rm", path=rm_path, kind="reward"))


@pytest.fixture(scope="session")
def critic_dir(model_dirs):
    """A tiny Llama critic taught to answer in the judge format."""
    return model_dirs("taught-critic", kind="critic", arch="llama")


@pytest.fixture(scope="session")
def untaught_critic_dir(model_dirs):
    return model_dirs("untaught-critic", kind="critic", arch="llama", teach_steps=0)


# ----------------------------------------------------------------------------- references


@pytest.fixture(scope="session")
def prm_spec(tmp_path_factory) -> dict:
    """A tiny Qwen2.5-Math-PRM-style process reward model (remote code, its real config's shape)."""
    from cluster.tiny import build_tiny_prm

    path = build_tiny_prm(tmp_path_factory.mktemp("qwen-prm"), style="qwen")
    return {
        "name": "prm",
        "path": str(path),
        "kind": "prm",
        "step_tag": "<extra_0>",
        "dtype": "float32",
        "trust_remote_code": True,
    }


@pytest.fixture(scope="session")
def prm(prm_spec):
    from cluster import load_model

    return load_model(prm_spec)


@pytest.fixture(scope="session")
def judge_spec(model_dirs) -> dict:
    """A tiny pointwise judge (rates on 1..10)."""
    path = model_dirs("pointwise-judge", kind="pointwise", arch="llama")
    return {"name": "pw", "path": str(path), "kind": "pointwise", "dtype": "float32"}


@pytest.fixture(scope="session")
def s3():
    """A real S3 API server on loopback (helpers.S3Server), for the whole run."""
    server = S3Server()
    yield server
    server.close()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole run: 8 CPUs and 2 fake GPUs (so num_gpus=1 replicas and
    actors schedule on a CPU box, one per "GPU")."""
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    metrics_port, dashboard_port = free_port(), free_port()
    # Ray Jobs run `python -m cluster ...`: make `python` this interpreter even in an unactivated venv
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    # the dashboard is the job server: the notebook test submits a Ray Job to this cluster
    ray.init(
        address="local",
        num_cpus=8,
        num_gpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    yield {
        "metrics_port": metrics_port,
        "address": ray.get_runtime_context().gcs_address,
        "dashboard": f"http://127.0.0.1:{dashboard_port}",
    }
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster):
    """Serve started once per run, its HTTP proxy on 127.0.0.1: the port. Apps are deployed on it
    by the fixtures that need them (`served` at /, the reliability suite's at /attack)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


@pytest.fixture(scope="session")
def served(ray_cluster, serve_port, model_dirs, reward_dir, critic_dir):
    """The Serve app ("scoring") with two RMs and a critic, deployed as `serve deploy` does."""
    import httpx

    from cluster.tiny import HELPSTEER2_LABELS

    rm, rm2 = reward_dir("llama"), reward_dir("gemma2")
    attrs = model_dirs("multi-helpsteer2", arch="llama", labels=HELPSTEER2_LABELS)
    bert = model_dirs("family-bert", arch="bert")
    metrics_port = ray_cluster["metrics_port"]
    port = serve_port
    deploy(
        {
            "name": "scoring",
            "route_prefix": "/",
            "import_path": "deployments.app:build_app",
            "args": app_args(rm, rm2, critic_dir, attrs, bert),
        }
    )
    models = reference_models(rm, rm2, critic_dir, attrs, bert)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", timeout=120, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    yield {
        "client": client,
        "models": models,
        "port": port,
        "paths": (rm, rm2, critic_dir, attrs, bert),
        "metrics_port": metrics_port,
    }
    client.close()


@pytest.fixture(scope="session")
def inproc(model_dirs, reward_dir, critic_dir):
    """The Serve app's HTTP layer and request core over the same models and config as `served`,
    loaded in this process (`local_service`): routes tested in-process, no Ray."""
    from cluster.core.config import AppConfig
    from cluster.engine.loading import local_service
    from cluster.http.app import create_app
    from cluster.tiny import HELPSTEER2_LABELS

    rm, rm2 = reward_dir("llama"), reward_dir("gemma2")
    attrs = model_dirs("multi-helpsteer2", arch="llama", labels=HELPSTEER2_LABELS)
    bert = model_dirs("family-bert", arch="bert")
    config = AppConfig.parse(app_args(rm, rm2, critic_dir, attrs, bert))
    service = local_service(config)
    app = create_app(
        service,
        api_keys=config.api_keys,
        max_request_bytes=config.max_request_bytes,
        trusted_networks=config.trusted_networks,
    )
    models = reference_models(rm, rm2, critic_dir, attrs, bert)
    return {
        "client": InProcessClient(app, {"Authorization": f"Bearer {API_KEY}"}),
        "app": app,
        "service": service,
        "models": models,
        "paths": (rm, rm2, critic_dir, attrs, bert),
    }


# ----------------------------------------------------------------------------- the app on a real socket


@pytest.fixture(scope="session")
def live(inproc):
    """The in-process app's service served twice on real sockets: `keyed` with the API key on (as
    the README configures it), `trusted` with the key on and 127.0.0.0/8 trusted (for clients that
    can send no key at all)."""
    from cluster.http.app import create_app

    service = inproc["service"]
    keyed = LiveServer(create_app(service, api_keys=[API_KEY], max_request_bytes=200_000))
    trusted = LiveServer(
        create_app(service, api_keys=[API_KEY], max_request_bytes=200_000, trusted_networks=["127.0.0.0/8"])
    )
    yield {"keyed": keyed.url, "trusted": trusted.url, "models": inproc["models"], "service": service}
    keyed.stop()
    trusted.stop()


# ----------------------------------------------------------------------------- reliability figures

FIGURES: list[tuple[str, dict]] = []  # (test, {figure: value}) recorded by the reliability suite


@pytest.fixture
def figures(request):
    """`figures(tried=..., statuses=..., lost=..., duplicated=...)` records a reliability test's
    figures; they are printed at the end of the run (and docs/reliability.md quotes them)."""

    def record(**values) -> None:
        FIGURES.append((request.node.name, values))

    return record


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for test, values in FIGURES:
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
