"""The dependency rules of docs: serving never imports training or mlflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_worker_imports_only_the_policy_core() -> None:
    code = (
        "import sys\n"
        "import worker.server, worker.cli, worker.client, worker.metrics\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tracking', 'bench')\n"
        "             or m in ('agent.env', 'agent.sac', 'agent.replay', 'agent.train', 'agent.evaluate',\n"
        "                      'agent.baselines', 'agent.data', 'agent.scoring', 'agent.heldout',\n"
        "                      'agent.train_config', 'agent.train_data'))\n"
        "print(bad)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_only_tracking_imports_mlflow() -> None:
    offenders = []
    # the project's packages but tracking/ (not the venvs make test-latest/-lowest keep here)
    for path in (p for package in ("agent", "worker", "bench") for p in (ROOT / package).rglob("*.py")):
        text = path.read_text()
        if "import mlflow" in text or "from mlflow" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


PACKAGES = ("agent", "worker", "tracking", "bench")


def _imports() -> dict[str, set[str]]:
    """Module → the project modules it imports (any import statement, typing-only included)."""
    import ast

    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_module_imports_in_a_circle() -> None:
    graph = _imports()
    assert len(graph) > 30  # the walk found the project
    cycles = []
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def test_the_floors_hold() -> None:
    """tracking/ imports nothing of the project; nothing imports bench/; agent/ does not import worker/."""
    graph = _imports()
    bad = [
        (a, b)
        for a, targets in graph.items()
        for b in targets
        if (a.startswith("tracking") and not b.startswith("tracking"))
        or (b.startswith("bench") and not a.startswith("bench"))
        or (a.startswith("agent") and b.startswith(("worker", "bench")))
    ]
    assert bad == []


# What a strategy process has after `pip install statpair` (no extras): a finder
# that refuses every module of the extras, as if they were not installed.
_WITHOUT_EXTRAS = """
import sys
BLOCKED = {"torch", "pydantic_settings", "prometheus_client", "tqdm", "matplotlib", "mlflow", "uvloop"}
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
"""


def _run_without_extras(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS + code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_strategy_side_imports_without_torch() -> None:
    out = _run_without_extras(
        "import worker.client, worker.prices, worker.protocol, worker.shards\n"
        "import agent.contract, agent.streaming, agent.features, agent.data\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pydantic_settings')))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_worker_without_its_extra_says_which() -> None:
    out = _run_without_extras("import runpy; runpy.run_module('worker', run_name='__main__')")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "python -m worker needs the worker extra: pip install torch==2.13.0 (the CPU build) first, "
        "then pip install 'statpair[worker]' (missing: torch, pydantic_settings, prometheus_client)"
    )


@pytest.mark.parametrize(
    ("command", "missing"),
    [("agent.train", "torch, tqdm"), ("agent.evaluate", "torch"), ("agent.ensemble", "torch")],
)
def test_the_trainer_without_its_extra_says_which(command: str, missing: str) -> None:
    out = _run_without_extras(f"import runpy; runpy.run_module({command!r}, run_name='__main__')")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"python -m {command} needs the train extra: pip install torch==2.13.0 (the CPU build) first, "
        f"then pip install 'statpair[train]' (missing: {missing})"
    )


def test_the_base_install_needs_no_extra() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {d.split("[")[0].split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert base == {"numpy", "redis", "pydantic"}
    assert "torch==2.13.0" in project["optional-dependencies"]["worker"]
