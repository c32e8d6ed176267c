"""`InstabilityMonitor`: one warning per event, none from zero gradient norms."""

from __future__ import annotations

import warnings

from agent_grpo.train.metrics import InstabilityMonitor


def run(monitor, rows):
    """The warnings returned at each step."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the monitor reports by returning, never through `warnings` as well
        return [monitor.check(row) for row in rows]


def test_an_event_is_reported_once_while_it_lasts_and_again_when_it_recurs():
    kls = [0.1, 1.5, 2.0, 3.0, 0.2, 1.8]
    out = run(InstabilityMonitor(kl_limit=1.0), [{"kl": k} for k in kls])
    assert [len(w) for w in out] == [0, 1, 0, 0, 0, 1]
    assert "1.5" in out[1][0] and "1.8" in out[5][0]


def test_zero_grad_norms_set_no_baseline():
    """Steps without learning signal have grad norm 0; the median of the others is the baseline."""
    norms = [0.0, 0.0, 0.0, 0.0, 0.5, 0.3, 0.0, 0.4, 0.45, 0.0, 0.35]
    assert run(InstabilityMonitor(), [{"grad_norm": g} for g in norms]) == [[]] * len(norms)


def test_a_grad_norm_spike_is_one_event_and_a_later_spike_another():
    norms = [1.0, 1.2, 0.9, 20.0, 25.0, 1.0, 30.0, float("nan")]
    out = run(InstabilityMonitor(grad_factor=10.0), [{"grad_norm": g} for g in norms])
    assert [len(w) for w in out] == [0, 0, 0, 1, 0, 0, 1, 0]  # nan continues the spike event
    assert "20" in out[3][0] and "30" in out[6][0]
    out = run(InstabilityMonitor(), [{"grad_norm": g} for g in (1.0, float("inf"))])
    assert "inf" in out[1][0]


def test_no_learning_signal_and_tool_collapse_warn_once_each():
    flat = [{"zero_variance_groups": 1.0, "tool_calls_per_traj": c} for c in [2.0] * 3 + [0.0] * 12]
    out = run(InstabilityMonitor(patience=5), flat)
    messages = [w for step in out for w in step]
    assert len(messages) == 2
    assert any("identical rewards" in m for m in messages) and any("tool use collapsed" in m for m in messages)
