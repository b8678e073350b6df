"""The one verdict (agent.verdict): each rule decides, with its figures in the line."""

from __future__ import annotations

from agent.verdict import Evidence, serves, verdict

VAL = {"policy": 0.80, "flat": 0.0, "rule (fixed)": 0.74, "rule (tuned)": 0.10}
TEST = {"policy": 0.40, "flat": 0.0, "rule (fixed)": 0.35, "rule (tuned)": -0.2}


def test_a_policy_that_beats_every_rule_where_chosen_and_earns_on_test_is_served() -> None:
    line = verdict(Evidence(VAL, TEST, {"rule (fixed)": (-0.3, 0.4)}))
    assert line == "verdict: serve" and serves(line)


def test_validation_must_beat_the_best_rule() -> None:
    """MRK/PFE: the fixed rule beat the policy on validation (0.74 vs 0.05)."""
    line = verdict(Evidence({**VAL, "policy": 0.05}, TEST))
    assert line == (
        "verdict: do not serve — on validation its Sharpe 0.05 does not beat rule (fixed)'s 0.74 "
        "(rule (fixed) 0.74, rule (tuned) 0.10, flat 0.00)"
    )
    assert not serves(line)


def test_worse_on_test_beyond_its_interval_than_the_rule_validation_picked() -> None:
    line = verdict(Evidence(VAL, TEST, {"rule (fixed)": (-0.9, -0.1)}))
    assert line == (
        "verdict: do not serve — on test it is worse than rule (fixed) beyond doubt: Sharpe 0.40 against "
        "0.35, difference 95% interval [-0.90, -0.10]"
    )


def test_without_an_interval_the_points_compare() -> None:
    assert verdict(Evidence(VAL, {**TEST, "policy": 0.30})).startswith(
        "verdict: do not serve — on test its Sharpe 0.30"
    )


def test_a_policy_that_loses_on_test_is_not_served() -> None:
    line = verdict(Evidence(VAL, {**TEST, "policy": -0.01}, {"rule (fixed)": (-0.5, 0.2)}))
    assert line == "verdict: do not serve — on test it loses after costs: Sharpe -0.01"


def test_no_recorded_validation_is_said() -> None:
    assert "no validation figures were recorded" in verdict(Evidence({}, TEST))
