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
