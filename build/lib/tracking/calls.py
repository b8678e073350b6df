"""The calls ``MlflowTracker`` queues for its background thread: one small
immutable type per MLflow call, each of which knows how to send itself (mlflow
is imported only there, when a call is actually sent)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Start:
    """Create the experiment if needed and start the run."""

    what: ClassVar[str] = "start"


@dataclass(frozen=True)
class Params:
    pairs: tuple[tuple[str, str], ...]
    what: ClassVar[str] = "params"

    def send(self, client: Any, run_id: str) -> None:
        from mlflow.entities import Param

        client.log_batch(run_id, params=[Param(k, v) for k, v in self.pairs], synchronous=True)


@dataclass(frozen=True)
class Metrics:
    pairs: tuple[tuple[str, float], ...]
    stamp_ms: int
    step: int
    what: ClassVar[str] = "metrics"

    def send(self, client: Any, run_id: str) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(k, v, self.stamp_ms, self.step) for k, v in self.pairs]
        client.log_batch(run_id, metrics=metrics, synchronous=True)


@dataclass(frozen=True)
class Tags:
    pairs: tuple[tuple[str, str], ...]
    what: ClassVar[str] = "tags"

    def send(self, client: Any, run_id: str) -> None:
        from mlflow.entities import RunTag

        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self.pairs], synchronous=True)


@dataclass(frozen=True)
class Artifact:
    path: str
    artifact_path: str | None
    what: ClassVar[str] = "artifact"

    def send(self, client: Any, run_id: str) -> None:
        if not Path(self.path).is_file():
            raise FileNotFoundError(f"artifact {self.path} does not exist")
        client.log_artifact(run_id, self.path, self.artifact_path)


@dataclass(frozen=True)
class End:
    """Mark the run FINISHED or FAILED; sent even after the tracker disabled itself."""

    status: str
    what: ClassVar[str] = "end"

    def send(self, client: Any, run_id: str) -> None:
        client.set_terminated(run_id, status=self.status)
        logger.info("MLflow run %s ended %s", run_id, self.status)


@dataclass(frozen=True)
class Stop:
    """Ends the background thread."""


Call = Params | Metrics | Tags | Artifact | End
Op = Start | Call
