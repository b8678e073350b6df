"""The one verdict: whether a policy is worth serving, decided here and nowhere else, and
said in one line that every tool prints the same way (``agent.train``'s summary,
``agent.evaluate``, ``agent.wftable``, the universe backtest, and the registry's promotion,
which reads the line recorded at registration).

The rule, on figures after costs:

1. **Validation** (the window that chose the checkpoint, never the test window): the
   policy's Sharpe beats the best of flat (0), the z-score rule at fixed thresholds and the
   rule tuned on the training rows. A policy that cannot beat a rule where it was chosen
   has not learned what the rule knows.
2. **Test**, against the rule validation would have picked instead (the best of those on
   validation): the policy is not significantly worse, i.e. the upper end of the 95 %
   paired-bootstrap interval of Sharpe(policy) − Sharpe(that rule) is at least 0 (where no
   interval exists, synthetic paths: its Sharpe is at least the rule's).
3. **Test**: the policy's own Sharpe is above 0. A policy that loses money after costs is
   not served, however it compares.

Imports nothing but the standard library: the figures come from the tools."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

POLICY = "policy"
SERVE = "verdict: serve"
REFUSE = "verdict: do not serve — "


@dataclass(frozen=True)
class Evidence:
    """What the verdict reads: Sharpe ratios by name (``policy`` and the baselines: flat,
    rule (fixed), rule (tuned)) on validation and on test, and, per baseline, the 95 %
    interval (low, high) of Sharpe(policy) − Sharpe(baseline) on test when one was drawn."""

    validation: Mapping[str, float]
    test: Mapping[str, float]
    intervals: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def verdict(e: Evidence) -> str:
    """``verdict: serve``, or ``verdict: do not serve — <the first rule it fails, with the
    figures>`` (see the module docstring for the rules)."""
    if POLICY not in e.validation:
        return REFUSE + "no validation figures were recorded with this model (retrain it to judge it)"
    if POLICY not in e.test:
        return REFUSE + "no test figures"
    mine = e.validation[POLICY]
    rules = {name: sharpe for name, sharpe in e.validation.items() if name != POLICY}
    if rules:
        best = max(rules, key=lambda name: (rules[name], name))
        if not mine > rules[best]:
            return REFUSE + (
                f"on validation its Sharpe {mine:.2f} does not beat {best}'s {rules[best]:.2f} "
                f"({_listed(rules)})"
            )
        if best in e.test:
            interval = e.intervals.get(best)
            ours, theirs = e.test[POLICY], e.test[best]
            if interval is not None and interval[1] < 0:
                return REFUSE + (
                    f"on test it is worse than {best} beyond doubt: Sharpe {ours:.2f} against "
                    f"{theirs:.2f}, difference 95% interval [{interval[0]:+.2f}, {interval[1]:+.2f}]"
                )
            if interval is None and ours < theirs:
                return REFUSE + f"on test its Sharpe {ours:.2f} is below {best}'s {theirs:.2f}"
    if not e.test[POLICY] > 0:
        return REFUSE + f"on test it loses after costs: Sharpe {e.test[POLICY]:.2f}"
    return SERVE


def serves(line: str) -> bool:
    """Whether a verdict line (as printed, or as recorded in the registry) says serve."""
    return line.strip() == SERVE


def _listed(rules: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(rules.items(), key=lambda kv: -kv[1]))
