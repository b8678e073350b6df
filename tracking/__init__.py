"""Everything that talks to MLflow: the opt-in experiment tracker
(``tracking.MlflowTracker``) and the model registry (``tracking.registry``).
Imports nothing of the project; mlflow only lazily. The tracker is loaded on
first use, so a worker importing ``tracking.registry`` does not import it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tracking.mlflow_tracker import MlflowTracker, flatten_params, is_finite

__all__ = ["MlflowTracker", "flatten_params", "is_finite"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tracking import mlflow_tracker

        return getattr(mlflow_tracker, name)
    raise AttributeError(f"module 'tracking' has no attribute {name!r}")
