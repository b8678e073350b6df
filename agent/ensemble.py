"""``python -m agent.ensemble OUT MODEL MODEL …``: several actors trained on the same pair
(other seeds) merged into one ``SACActor`` that serves the average of their pre-tanh means,
exactly: the hidden layers side by side, block-diagonal weights, the heads averaged. The
worker serves it like any other checkpoint (a wider actor, the same contract)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.extras import require

require(__name__, "python -m agent.ensemble", "train", ("torch",))
# Only once the extra is known to be there: the imports below need it.
import torch

from agent.actor import SACActor
from agent.checkpoint import Checkpoint, CheckpointError, Metadata, load_checkpoint, save_checkpoint


class EnsembleError(ValueError):
    """Models that cannot be merged: one sentence naming the model and why."""


def merge(actors: list[SACActor]) -> SACActor:
    """One actor whose mean (and log-std before its clamp) is the average of ``actors``'."""
    if not actors:
        raise EnsembleError("no actor to merge")
    first = actors[0]
    for a in actors[1:]:
        if a.config() != first.config():
            raise EnsembleError(f"actors differ in shape: {a.config()} vs {first.config()}")
    k = len(actors)
    merged = SACActor(
        state_dim=first.state_dim,
        hidden=tuple(h * k for h in first.hidden),
        action_dim=first.action_dim,
        log_std_min=first.log_std_min,
        log_std_max=first.log_std_max,
    )
    layers = [m for m in merged.shared if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for i, layer in enumerate(layers):
            layer.weight.zero_()
            for j, actor in enumerate(actors):
                src = [m for m in actor.shared if isinstance(m, torch.nn.Linear)][i]
                rows = slice(j * src.out_features, (j + 1) * src.out_features)
                cols = slice(None) if i == 0 else slice(j * src.in_features, (j + 1) * src.in_features)
                layer.weight[rows, cols] = src.weight
                layer.bias[rows] = src.bias
        for head in ("mean_head", "log_std_head"):
            out: torch.nn.Linear = getattr(merged, head)
            parts = [getattr(a, head) for a in actors]
            out.weight.copy_(torch.cat([p.weight for p in parts], dim=1) / k)
            out.bias.copy_(torch.stack([p.bias for p in parts]).mean(dim=0))
    merged.eval()
    return merged


def merge_checkpoints(models: list[Path], out: Path) -> Checkpoint:
    """Merge the actors of ``models`` (the same pair contract) into ``out``."""
    if len(models) < 2:
        raise EnsembleError("name at least two models to merge")
    if out.exists() and any(out.resolve() == m.resolve() for m in models if m.exists()):
        raise EnsembleError(f"{out} is one of the models to merge: write the ensemble to another file")
    loaded = [load_checkpoint(m) for m in models]
    seen: dict[str, str] = {}
    for ck in loaded:  # the same file twice, or a copy: one seed would count double
        if ck.sha256 in seen:
            raise EnsembleError(f"{ck.path} is the same model as {seen[ck.sha256]}: name each seed once")
        seen[ck.sha256] = ck.path
    contract = loaded[0].contract
    for ck in loaded[1:]:
        if ck.contract.id != contract.id:
            raise EnsembleError(
                f"{ck.path}: contract {ck.contract.id} is not {contract.id} of {loaded[0].path}: "
                "only models of the same pair, spread and data merge"
            )
    actor = merge([ck.actor for ck in loaded])
    meta = Metadata(
        extra={
            "ensemble_of": [str(m) for m in models],
            "members": [ck.metadata for ck in loaded],
            # The split every member recorded (the same data: the same split).
            **({"split": loaded[0].metadata["split"]} if "split" in loaded[0].metadata else {}),
        }
    )
    save_checkpoint(actor, out, meta, contract=contract)
    return load_checkpoint(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m agent.ensemble",
        description="Merge actors trained on the same pair into one that serves the average of their means.",
    )
    p.add_argument("out", type=Path, help="the merged checkpoint to write")
    p.add_argument("models", type=Path, nargs="+", help="checkpoints written by python -m agent.train")
    args = p.parse_args(argv)
    try:
        ck = merge_checkpoints(args.models, args.out)
    except (CheckpointError, EnsembleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {len(args.models)} actors merged, hidden {ck.actor.hidden}, contract {ck.contract.id}"
    )
    return 0


if __name__ == "__main__":
    from agent.command import run as run_command

    raise SystemExit(run_command(main))
