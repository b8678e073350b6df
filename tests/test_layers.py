"""The dependency rules of docs: serving never imports training or mlflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_worker_imports_only_the_policy_core() -> None:
    code = (
        "import sys\n"
        "import worker.cli, worker.client, worker.metrics\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tracking', 'bench')\n"
        "             or m in ('agent.env', 'agent.sac', 'agent.replay', 'agent.train', 'agent.evaluate',\n"
        "                      'agent.baselines', 'agent.features'))\n"
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
    for path in ROOT.glob("*/**/*.py"):
        if path.parts[len(ROOT.parts)] in ("tracking", "tests", ".venv") or ".venv" in path.parts:
            continue
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
