"""The lifecycle rules, with no database."""

import pytest

from incident_app.errors import InvalidTransition
from incident_app.lifecycle import Transition, allowed_next, plan_transition


@pytest.mark.parametrize(
    ("current", "requested"),
    [("open", "acknowledged"), ("open", "resolved"), ("acknowledged", "resolved")],
)
def test_forward_transitions_are_allowed(current, requested):
    assert plan_transition(current, requested) == Transition(current, requested)


@pytest.mark.parametrize("status", ["open", "acknowledged", "resolved"])
def test_same_status_is_no_transition(status):
    assert plan_transition(status, status) is None


@pytest.mark.parametrize(
    ("current", "requested"),
    [("acknowledged", "open"), ("resolved", "open"), ("resolved", "acknowledged")],
)
def test_backward_transitions_are_refused_naming_both_statuses(current, requested):
    with pytest.raises(InvalidTransition) as refused:
        plan_transition(current, requested)
    assert current in str(refused.value) and requested in str(refused.value)


def test_refusal_says_what_is_allowed_instead():
    with pytest.raises(InvalidTransition, match="allowed from acknowledged: resolved"):
        plan_transition("acknowledged", "open")
    assert allowed_next("resolved") == ()
    with pytest.raises(InvalidTransition, match="resolved is final"):
        plan_transition("resolved", "open")
