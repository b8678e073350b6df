"""The README's "From prices to actions" strategy, run as written against a real
Redis and a real worker (only the Redis URL is pointed at the test's server)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import make_settings, wait_for, write_model
from worker.server import serve

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def readme_strategy() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- readme-strategy:")
    block = text[start : text.index("<!-- /readme-strategy -->", start)]
    return block.split("```python\n", 1)[1].split("```", 1)[0]


async def test_the_readme_strategy_runs_as_written(tmp_path: Path, real_redis: Redis, redis_url: str) -> None:
    code = readme_strategy()
    assert code.count("\n") <= 25 and "asyncio.run(main())" in code
    script = tmp_path / "strategy.py"
    script.write_text(code.replace("redis://127.0.0.1:6379/0", redis_url))
    s = make_settings(tmp_path, redis_url=redis_url)
    write_model(s.model_dir / "m.pt")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(s, stop=stop))
    try:
        await wait_for(lambda: real_redis.hexists("statpair:contracts", "*"), what="the worker's contract")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "MODEL_"))}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 502 - 140  # one action per tick after the warm-up
    action, discrete, held = lines[0].split()
    assert -1 <= float(action) <= 1 and discrete in ("-1", "+0", "+1") and float(held) == float(action)
