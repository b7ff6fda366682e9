"""The fault suite's checker (tests/faults/history.py) finds what it is there to find."""

from ..faults.history import Op, check


def op(client, kind, addr, invoke, complete, outcome="ok"):
    return Op(client, kind, addr, invoke, complete, outcome)


def test_a_clean_history_passes():
    history = [op("a", "alloc", "10.0.0.2", 0, 1), op("a", "release", "10.0.0.2", 2, 3),
               op("b", "alloc", "10.0.0.2", 4, 5), op("c", "alloc", "10.0.0.3", 0, 1)]
    assert check(history, {"h1": {"10.0.0.2", "10.0.0.3"}, "h2": {"10.0.0.2", "10.0.0.3"}}) == []


def test_an_address_handed_out_twice_is_found():
    history = [op("a", "alloc", "10.0.0.2", 0, 1), op("b", "alloc", "10.0.0.2", 2, 3)]
    problems = check(history, {"h1": {"10.0.0.2"}})
    assert len(problems) == 1 and "held twice" in problems[0]


def test_a_release_that_may_have_happened_in_between_is_not_a_duplicate():
    history = [op("a", "alloc", "10.0.0.2", 0, 1), op("a", "release", "10.0.0.2", 2, 6, "unknown"),
               op("b", "alloc", "10.0.0.2", 3, 5)]
    assert check(history, {"h1": {"10.0.0.2"}}) == []
    # A refused release leaves the address with its holder.
    history[1].outcome = "fail"
    assert "held twice" in check(history, {"h1": {"10.0.0.2"}})[0]


def test_a_lost_acknowledged_allocation_is_found():
    problems = check([op("a", "alloc", "10.0.0.2", 0, 1)], {"h1": set()})
    assert len(problems) == 1 and "lost" in problems[0]


def test_a_refused_allocation_that_took_effect_is_found():
    history = [op("a", "alloc", None, 0, 1, "fail"), op("a", "alloc", None, 2, 3, "unknown")]
    assert check(history, {"h1": {"10.0.0.9"}}) == [], "one unknown allocation may explain one address"
    problems = check(history, {"h1": {"10.0.0.9", "10.0.0.10"}})
    assert len(problems) == 1 and "refused write took effect" in problems[0]


def test_hosts_that_disagree_are_found():
    problems = check([], {"h1": {"10.0.0.2"}, "h2": set()})
    assert any("disagree" in p for p in problems)
