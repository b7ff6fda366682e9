"""Who votes (shoutd/roles.py): how many, which change comes next, and the leader's record of it."""

import asyncio

from shoutd import roles
from shoutd.raft.node import RaftStatus
from shoutd.roles import next_change, voter_target
from shoutd.state import ops

from .test_versions import View, registered


def test_every_member_votes_below_three_then_three_then_five_from_the_configured_size():
    assert [voter_target(n) for n in (1, 2, 3, 4, 6, 7, 100)] == [1, 2, 3, 3, 3, 5, 5]
    assert voter_target(5, five_from=5) == 5 and voter_target(4, five_from=5) == 3


def test_a_short_voter_set_is_filled_from_the_replicas_that_are_up_in_a_stable_order():
    members = ["a", "b", "c", "d", "e"]
    assert next_change(["a"], members, lost=[], up=["e", "c", "d"], target=3) == ("add", "c")
    assert next_change(["a", "c"], members, lost=[], up=["e", "d"], target=3) == ("add", "d")
    assert next_change(["a", "c", "d"], members, lost=[], up=["e", "b"], target=3) is None
    assert next_change(["a"], members, lost=[], up=[], target=3) is None, "no replica up: nothing to add"
    assert next_change(["a"], members, lost=[], up=["z"], target=3) is None, "only registered members"


def test_a_voter_lost_for_good_is_removed_first_then_replaced():
    members = ["a", "b", "c", "d"]
    assert next_change(["a", "b", "c"], members, lost=["b"], up=["d"], target=3) == ("remove", "b")
    assert next_change(["a", "c"], members, lost=[], up=["d"], target=3) == ("add", "d")
    # Five voters, two lost: one at a time, while three healthy still make a majority.
    five = ["a", "b", "c", "d", "e"]
    assert next_change(five, five + ["f"], lost=["d", "b"], up=["f"], target=5) == ("remove", "b")


def test_healthy_voters_beyond_the_target_are_never_demoted():
    assert next_change(["a", "b", "c", "d", "e"], list("abcde"), lost=[], up=[], target=3) is None


class Leader(View):
    """The leader's view for roles.Voters: Raft's members, who is silent, and its membership changes."""

    def __init__(self, state, raft, silent=()):
        super().__init__(state)
        self.status = RaftStatus(self="a", leader="a", role="leader", nodes={v: "c" for v in raft},
                                 silent=tuple(silent))
        self.changes = []

    async def change_membership(self, kind, addr, timeout=30.0):
        self.changes.append((kind, addr))
        nodes = dict(self.status.nodes)
        if kind == "add":
            nodes[addr] = "c"
        else:
            nodes.pop(addr)
        self.status = RaftStatus(self="a", leader="a", role="leader", nodes=nodes, silent=self.status.silent)


def test_the_leader_records_raft_s_voters_once_the_cluster_runs_state_version_6():
    async def main():
        view = Leader(registered(6, 6, 6), raft="ab")
        view.state.apply(ops.cluster_version("a", 5))
        loop = roles.Voters("a", view, view.submit, set)
        await loop.step(False)
        assert view.proposed == [], "state version 5: the op would be refused"
        view.state.apply(ops.cluster_version("a", 6))
        await loop.step(False)
        assert [op["op"] for op in view.proposed] == ["voters_set"] and view.state.data["voters"] == ["a", "b"]
        assert view.state.role("c") == "replica"
        follower = View(view.state, role="follower", voters=("a", "b", "c"))
        await roles.Voters("b", follower, follower.submit, set).step(False)
        assert follower.proposed == [], "only the leader acts"
    asyncio.run(main())


def test_raft_follows_the_recorded_voters_and_a_lost_voter_is_replaced_by_a_replica_that_is_up():
    async def main():
        view = Leader(registered(6, 6, 6, 6, 6), raft="abc")          # a b c vote; d and e are replicas
        view.state.apply(ops.cluster_version("a", 6))
        view.state.apply(ops.voters_set("a", ["a", "b", "c"], []))
        loop = roles.Voters("a", view, view.submit, lambda: {"e"}, lost_after=5.0)
        await loop.step(False)
        assert view.proposed == [] and view.changes == [], "three healthy voters: nothing to do"
        view.status = RaftStatus(self="a", leader="a", role="leader", nodes=view.status.nodes, silent=("c",))
        await loop.step(False)
        assert view.proposed == [], "silent, not yet lost"
        loop._silent_since["c"] -= 5.0                                  # five seconds later
        await loop.step(False)
        assert view.state.data["voters"] == ["a", "b"], "the lost voter leaves the record first"
        await loop.step(False)
        assert view.changes == [("rem", "c")], "then Raft"
        view.status = RaftStatus(self="a", leader="a", role="leader", nodes=view.status.nodes)
        await loop.step(False)
        assert view.state.data["voters"] == ["a", "b", "e"], "e follows this leader: surely up, promoted"
        await loop.step(False)
        assert view.changes[-1] == ("add", "e")
        await loop.step(False)
        assert len(view.changes) == 2 and view.state.data["voters"] == ["a", "b", "e"], "settled"
    asyncio.run(main())


def test_a_promotion_decided_from_a_record_that_changed_meanwhile_is_refused_and_decided_again():
    """AddPeer on another host added a voter while the leader promoted a replica from the same record: had both
    landed, the cluster would have four voters where three is the target, and a healthy one is never demoted."""
    async def main():
        view = Leader(registered(6, 6, 6, 6, 6), raft="ab")
        view.state.apply(ops.cluster_version("a", 6))
        view.state.apply(ops.voters_set("a", ["a", "b"], []))
        submit = view.submit

        async def racing(op, **kw):
            if op["op"] == "voters_set" and not racing.done:
                racing.done = True            # AddPeer of e, decided from the same record, commits first
                await submit(ops.voters_set("x", ["a", "b", "e"], ["a", "b"]))
            return await submit(op, **kw)
        racing.done = False
        loop = roles.Voters("a", view, racing, lambda: {"c", "d"})
        await loop.step(False)
        assert view.state.data["voters"] == ["a", "b", "e"], "the promotion of c was refused"
        await loop.step(False)
        await loop.step(False)
        assert view.state.data["voters"] == ["a", "b", "e"] and view.changes == [("add", "e")], "three: enough"
    asyncio.run(main())
