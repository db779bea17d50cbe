"""The layers as the folders draw them (docs/design.md): every import of every module, those inside
functions too, goes down the stack, never up, and no set of modules imports itself in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

ROOT = REPO

# layer -> the layers its modules may import (their own included). The request core and the kinds
# know nothing above them; the engine is torch under the core; the front doors sit on both.
ALLOWED = {
    "kinds": {"kinds", "core"},
    "core": {"core", "kinds"},
    "engine": {"engine", "core", "kinds"},
    "tiny": {"tiny", "core", "kinds"},  # tiny models for tests and the demo
    "http": {"http", "core", "kinds"},
    "client": {"client", "core", "kinds"},
    "deployments": {"deployments", "http", "engine", "core", "kinds", "tiny"},
    "data": {"data", "deployments", "engine", "core", "kinds"},
    "cli": {"cli", "data", "deployments", "http", "engine", "core", "kinds", "tiny"},
    "bench": {"bench", "cli", "client", "data", "deployments", "http", "engine", "core", "kinds", "tiny"},
}
# what the request core never imports, anywhere in its modules
CORE_FORBIDS = ("torch", "transformers", "ray", "fastapi", "starlette", "pyarrow", "httpx", "accelerate")


def modules() -> dict[str, Path]:
    found = {}
    for top in ("cluster", "deployments"):
        for path in (ROOT / top).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path) -> set[str]:
    """Every module an import statement names, at any depth (functions, TYPE_CHECKING blocks)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if parts[0] == "cluster" and len(parts) > 1 else parts[0]


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {i for i in imports(p) if i in mods and i != m} for m, p in mods.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert circles(graph()) == []


def test_every_import_goes_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        if module in ("cluster", "cluster.__main__"):  # the package's lazy exports and `python -m cluster`
            continue
        allowed = ALLOWED[layer(module)]
        wrong += [f"{module} -> {t}" for t in sorted(targets) if t != "cluster" and layer(t) not in allowed]
    assert wrong == []


def test_the_request_core_imports_no_torch_ray_or_web_framework():
    wrong = []
    for module, path in modules().items():
        if layer(module) in ("core", "kinds"):
            wrong += [f"{module} -> {i}" for i in sorted(imports(path)) if i.split(".")[0] in CORE_FORBIDS]
    assert wrong == []


def test_the_checks_see_a_circle_and_an_upward_import():
    """The two checks above can fail: a made-up circle and an engine module importing the HTTP layer."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert layer("cluster.http.app") not in ALLOWED[layer("cluster.engine.runner")]
    assert layer("deployments.ingress") == "deployments" and layer("cluster.kinds.prm") == "kinds"
