"""Who may write the serving checkpoint: ``Gate`` keeps the score of the model found there
when a run starts, and admits only a model that validates at least as well (or ``--force``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.checkpoint import CheckpointError, load_checkpoint
from agent.contract import PairContract
from agent.train_config import ConfigError, TrainConfig
from agent.train_data import Validator

logger = logging.getLogger(__name__)


@dataclass
class Gate:
    """Who may write the serving file: the score of the model found there at the start
    (None: there was none, or it could not be loaded) and whether this run wrote it."""

    out: Path
    incumbent: float | None
    force: bool = False
    published: bool = False

    @classmethod
    def at_start(cls, cfg: TrainConfig, state_dim: int, validate: Validator, contract: PairContract) -> Gate:
        """Raises ConfigError (before any training) when the model there serves another
        real pair: replacing it would end that pair's serving, so only ``--force`` does. A
        synthetic model there (the demo's, the quickstart's) is replaced by a real pair's
        without being scored: its score on this pair's validation window means nothing."""
        if not cfg.out.exists():
            logger.info("no model at %s yet: this run publishes its best validated model there", cfg.out)
            return cls(cfg.out, None, cfg.force)
        try:
            incumbent = load_checkpoint(cfg.out, state_dim=state_dim)
        except CheckpointError as exc:
            logger.warning(
                "the model at %s cannot be loaded (%s): treating it as absent", cfg.out, exc.reason
            )
            return cls(cfg.out, None, cfg.force)
        if incumbent.contract.pair != contract.pair:
            theirs, ours = (c.pair or "a synthetic spread" for c in (incumbent.contract, contract))
            if incumbent.contract.pair is not None and not cfg.force:
                raise ConfigError(
                    f"--out {cfg.out} holds the model of {theirs} (contract {incumbent.contract.id}), "
                    f"and this run trains {ours}: give another --out, or --force to replace it"
                )
            forced = " (--force)" if incumbent.contract.pair is not None else ""
            logger.warning(
                "the model at %s was trained on %s: replaced by this run's for %s%s",
                cfg.out,
                theirs,
                ours,
                forced,
            )
            return cls(cfg.out, None, cfg.force)
        sharpe = validate(incumbent.actor).sharpe
        then = "--force replaces it anyway" if cfg.force else "only a model scoring at least that replaces it"
        logger.info("the model at %s scores validation Sharpe %.2f: %s", cfg.out, sharpe, then)
        return cls(cfg.out, sharpe, cfg.force)

    def admits(self, sharpe: float) -> bool:
        return self.force or self.incumbent is None or sharpe >= self.incumbent

    def note(self, best: float) -> str:
        """What happened to the serving file, and why."""
        if not self.published:
            if self.incumbent is None:
                return f"not published to {self.out}: the run validated no model"
            return (
                f"not published to {self.out}: this run's best validation Sharpe {best:.2f} is below "
                f"{self.incumbent:.2f}, the score of the model already there on the same paths; "
                "its checkpoints stay in its run folder (--force publishes anyway)"
            )
        if self.incumbent is None:
            return f"published to {self.out}"
        how, than = ("", "at least") if best >= self.incumbent else (" with --force", "below")
        return (
            f"published to {self.out}{how}: validation Sharpe {best:.2f}, "
            f"{than} the {self.incumbent:.2f} of the model it replaced"
        )
