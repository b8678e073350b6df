"""Opt-in experiment tracking. Imports nothing of the project; mlflow only lazily."""

from tracking.mlflow_tracker import MlflowTracker, flatten_params, is_finite

__all__ = ["MlflowTracker", "flatten_params", "is_finite"]
