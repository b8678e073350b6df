"""Benchmarks: ``python -m bench`` (the actor, eager vs TorchScript) and
``python -m bench e2e`` (the whole path through Redis). Nothing imports this."""
