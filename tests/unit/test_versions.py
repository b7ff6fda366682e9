"""Rolling upgrades without divergence: the cluster's state version, and hosts that stop rather than diverge (issue 13)."""

import asyncio
import copy
import os
import pickle

import pytest

import shoutd
from shoutd import daemon, versions
from shoutd.errors import ShoutdError
from shoutd.raft import RaftNode
from shoutd.raft.node import RaftStatus
from shoutd.state import ClusterState, ops
from shoutd.state.ops import OPS, Op

from ..support import free_ports, until
from .test_raft import POOL, SECRET, leader_of, settled


NOW = ops.STATE_VERSION           # what this release runs
BEYOND = ops.STATE_VERSION + 1    # what only a later release would run


def registered(*versions_):
    """A state with one member per version, hosts a, b, c..."""
    cs = ClusterState()
    for i, v in enumerate(versions_):
        node = "abcdef"[i]
        op = dict(ops.member_up(node, "198.18.0.%d" % (i + 1), "h%d" % i), version=v)
        assert "error" not in cs.apply(op)
    return cs


def newer_op(monkeypatch, version=BEYOND):
    """Pretend to be a later release that adds an op `future` in state `version`."""
    monkeypatch.setattr(ops, "STATE_VERSION", version)
    monkeypatch.setitem(OPS, "future", Op("future", version, frozenset({ops.MEMBERS}),
                                          lambda state, op: state.members.setdefault("future", op["node"])))


# -- applying: every host the same way, or not at all ---------------------------------------------------


def test_an_unknown_op_stops_applying_and_nothing_after_it_is_applied():
    cs = registered(3)
    before = copy.deepcopy(cs.data)
    result = cs.apply({"op": "future", "node": "a"})
    assert result["kind"] == "unavailable" and "upgrade this host" in result["error"]
    assert "'future'" in cs.halted
    after = cs.apply(ops.member_remove("a"))
    assert "upgrade this host" in after["error"], "nothing is applied once stopped"
    assert cs.data == before, "the state (digest included) stays where it stopped"


def test_a_host_that_stopped_never_differs_from_one_that_applied():
    """Two releases apply one log: the older stops at the newer op, the newer goes on; the older never
    holds a state the newer never held."""
    log = [ops.member_up("a", "198.18.0.1", "h1"), ops.cluster_version("a", 3),
           {"op": "future", "node": "a"}, ops.member_remove("a")]
    older = ClusterState()
    seen_by_older = []
    for op in log:
        older.apply(op)
        seen_by_older.append(copy.deepcopy(older.data))
    newer_states = []
    mp = pytest.MonkeyPatch()
    try:
        newer_op(mp)
        newer = ClusterState()
        for op in log[:2] + [ops.cluster_version("a", 4)] + log[2:]:
            newer.apply(op)
            newer_states.append(copy.deepcopy(newer.data))
    finally:
        mp.undo()
    assert older.halted and older.data == seen_by_older[1], "stopped right before the op it does not know"
    assert seen_by_older[1]["members"] == newer_states[1]["members"]


def test_a_cluster_version_this_release_cannot_run_stops_it():
    cs = registered(3)
    assert cs.apply(ops.cluster_version("a", 3))["value"] == 3
    assert cs.apply(ops.cluster_version("a", 2))["value"] == 3, "never lowered"
    beyond = ops.STATE_VERSION + 1
    result = cs.apply(ops.cluster_version("a", beyond))
    assert "state version %d" % beyond in result["error"] and cs.halted and cs.version == 3


def test_an_op_form_newer_than_the_cluster_is_rejected_by_every_host_alike():
    cs = registered(3, 3)
    with_release = ops.member_up("b", "198.18.0.2", "h1", release="0.3.0")
    result = cs.apply(with_release)
    assert result["kind"] == "unavailable" and "needs state version 3" in result["error"]
    assert "release" not in cs.members["b"] and not cs.halted
    cs.apply(ops.cluster_version("a", 3))
    assert "error" not in cs.apply(with_release) and cs.members["b"]["release"] == "0.3.0"


# -- proposing ---------------------------------------------------------------------------------------------


def test_an_op_newer_than_the_cluster_version_is_refused_at_the_proposer_naming_the_old_hosts():
    cs = registered(3, 2, 3)
    with pytest.raises(ShoutdError) as err:
        ops.check_proposable(ops.member_up("a", "198.18.0.1", "h0", release="0.3.0"), cs)
    assert err.value.name == "UpgradeNeeded" and "host h1 (198.18.0.2)" in str(err.value)
    assert "h0" not in str(err.value) and "h2" not in str(err.value)
    ops.check_proposable(ops.within(ops.member_up("a", "198.18.0.1", "h0", release="0.3.0"), cs.version), cs)


class View:
    def __init__(self, state, role="leader", voters=("a", "b")):
        self.state = state
        self.status = RaftStatus(self="a", leader="a", role=role, nodes={v: "connected" for v in voters})
        self.caught_up = asyncio.Event()
        self.proposed = []

    async def submit(self, op, **kw):
        self.proposed.append(op)
        result = self.state.apply(op)
        if "error" in result:
            raise ShoutdError(result["error"], result["kind"])
        return result["value"]


def keeper(view):
    return versions.Versions("a", view, view.submit, "198.18.0.1", "h0")


def test_the_leader_raises_the_version_only_when_every_member_runs_it():
    async def main():
        view = View(registered(3, 2))
        await keeper(view).raise_version()
        assert view.proposed == [] and view.state.version == 2, "b still runs state version 2"
        view.state.apply(dict(ops.member_up("b", "198.18.0.2", "h1"), version=3))          # b upgraded
        view.status = RaftStatus(self="a", leader="a", role="leader", nodes={"a": "self", "b": "c", "c": "c"})
        await keeper(view).raise_version()
        assert view.proposed == [], "c is a Raft member that has not registered: its release is unknown"
        view.status = RaftStatus(self="a", leader="a", role="leader", nodes={"a": "self", "b": "c"})
        follower = View(view.state, role="follower")
        await keeper(follower).raise_version()
        assert follower.proposed == [], "only the leader raises it"
        await keeper(view).raise_version()
        assert [op["op"] for op in view.proposed] == ["cluster_version"] and view.state.version == 3
    asyncio.run(main())


def test_after_the_raise_each_host_reports_its_release():
    async def main():
        view = View(registered(NOW, NOW))
        k = keeper(view)
        await k.report()
        assert view.proposed == [], "the cluster runs 2: the release field is not allowed yet"
        view.state.apply(ops.cluster_version("a", 3))
        await k.report()
        assert view.proposed[-1]["release"] == view.state.members["a"]["release"] == shoutd.__version__
        count = len(view.proposed)
        await k.report()
        assert len(view.proposed) == count, "reported once"
    asyncio.run(main())


# -- snapshots and downgrades ------------------------------------------------------------------------------


def test_snapshots_carry_their_version_and_a_newer_one_is_refused_whole():
    cs = registered(3, 3)
    cs.apply(ops.cluster_version("a", 3))
    snapshot = pickle.loads(pickle.dumps(cs.data))
    assert snapshot["version"] == 3 and ClusterState(snapshot).version == 3
    newer = dict(snapshot, version=BEYOND)
    refused = ClusterState(newer)
    assert refused.halted and "state version %d" % BEYOND in refused.halted and not refused.members
    assert ClusterState({"members": {}}).version == 2, "a snapshot of shoutd 0.2 runs state version 2"


def test_a_downgrade_is_refused_before_anything_is_changed(tmp_path, capsys):
    state = tmp_path / "state"
    state.mkdir()
    (state / "raft.log").write_bytes(b"the newer release's log")
    (state / "state-version").write_text("%d\n" % BEYOND)
    before = {p.name: p.read_bytes() for p in state.iterdir()}
    conf = tmp_path / "shoutd.conf"
    conf.write_text("[shoutd]\nstate_dir = %s\n" % state)
    assert daemon.main(["--config", str(conf)]) == daemon.EXIT_NEWER_STATE
    assert {p.name: p.read_bytes() for p in state.iterdir()} == before
    versions.remember_state_version(str(state), 3)
    assert (state / "state-version").read_text() == "%d\n" % BEYOND, "the version on disk only ever rises"


def test_the_unit_file_does_not_restart_a_refused_downgrade():
    unit = open(os.path.join(os.path.dirname(__file__), "../../systemd/shoutd.service")).read()
    assert "RestartPreventExitStatus=%d" % daemon.EXIT_NEWER_STATE in unit


# -- three real members: stop on what they cannot apply, resume after the upgrade ------------------------------


def test_members_stop_on_a_version_they_cannot_run_and_resume_after_the_upgrade(tmp_path, monkeypatch):
    """A newer leader raised the version to BEYOND (as if every member ran it): these members of this release stop
    there.
    Once upgraded, on the same journals, they apply it and everything after it, and lose nothing."""
    addrs = ["127.0.0.1:%d" % p for p in free_ports(3)]
    files = [dict(journal_file=str(tmp_path / ("j%d" % i)), dump_file=str(tmp_path / ("d%d" % i))) for i in range(3)]

    def build():
        return [RaftNode(a, addrs, SECRET, **f) for a, f in zip(addrs, files)]

    async def before_upgrade(nodes):
        await settled(nodes)
        leader = leader_of(nodes)
        net = await leader.submit(ops.network_reserve("a", None, None, **{"pool": POOL["pool"],
                                                                         "pool_prefix": POOL["pool_prefix"]}))
        with pytest.raises(ShoutdError) as err:
            await leader.submit(ops.member_up("a", "198.18.0.1", "h0", release="0.3.0"))
        assert err.value.name == "UpgradeNeeded", "the cluster runs 2: refused before it is proposed"
        with pytest.raises(ShoutdError):
            await leader.submit(ops.cluster_version("a", BEYOND), timeout=3.0)
        # A member that has not learnt the op committed before the others stopped stays without a quorum.
        await until(lambda: sum(bool(n.halted) for n in nodes) >= 2, what="the members to stop applying")
        stopped = [n for n in nodes if n.halted]
        for n in stopped:
            assert n.health() is None and n.status.role == "halted"
            assert "upgrade this host: the cluster runs state version %d" % BEYOND in n.halted
        with pytest.raises(ShoutdError) as err:
            await stopped[0].submit(ops.ip_allocate("a", net["id"]))
        assert err.value.name == "UpgradeNeeded"
        return net

    async def after_upgrade(nodes, net):
        await settled(nodes)
        await until(lambda: all(n.state.version == BEYOND for n in nodes), what="the new version applied after the upgrade")
        await leader_of(nodes).submit({"op": "future", "node": "a"})        # the new release's op works
        ip = await leader_of(nodes).submit(ops.ip_allocate("a", net["id"]))
        await until(lambda: len({n.state.applied for n in nodes}) == 1)
        return ip

    nodes = build()
    try:
        net = asyncio.run(before_upgrade(nodes))
    finally:
        for n in nodes:
            n.destroy()
    newer_op(monkeypatch)               # the same hosts, one release later, on the same journals
    nodes = build()
    try:
        assert asyncio.run(after_upgrade(nodes, net))
        assert net["id"] in nodes[0].state.networks, "nothing committed before the stop was lost"
        assert all("future" in n.state.members for n in nodes)
    finally:
        for n in nodes:
            n.destroy()


def test_a_host_that_stopped_applying_is_ready_for_systemd_and_says_why():
    from shoutd.notify import Notifier
    sent = []
    notifier = Notifier()
    notifier._send = sent.append
    notifier.serving = True
    notifier.status(RaftStatus(self="a", role="halted"), caught_up=False)
    assert "READY=1" in sent, "systemctl start returns: restarting would not help"
    assert any(s.startswith("STATUS=stopped applying") and "upgrade this host" in s for s in sent), sent


def test_an_op_no_release_knows_is_refused_at_the_proposer():
    with pytest.raises(ShoutdError) as err:
        ops.check_proposable({"op": "nope"}, ClusterState())
    assert "unknown operation 'nope'" in str(err.value)


def test_a_network_s_port_is_recorded_only_once_every_host_knows_the_field():
    cs = registered(3, 3)
    cs.apply(ops.cluster_version("a", 3))
    op = ops.network_reserve("a", None, None, POOL["pool"], POOL["pool_prefix"], port=7380)
    with pytest.raises(ShoutdError) as err:
        ops.check_proposable(op, cs)
    assert err.value.name == "UpgradeNeeded" and "needs state version 4" in str(err.value)
    result = cs.apply(op)
    assert "needs state version 4" in result["error"] and cs.networks == {}, "a 0.3 host rejects it the same way"
    old = cs.apply(ops.within(op, cs.version))["value"]
    assert "port" not in cs.networks[old["id"]], "made as 0.3 makes it: on each host's legacy port"
    cs.apply(ops.cluster_version("a", 4))
    new = cs.apply(ops.network_reserve("a", None, None, POOL["pool"], POOL["pool_prefix"], port=7380))["value"]
    assert cs.networks[new["id"]]["port"] == new["port"] == 7380
    for bad in (0, 70000, "7380", True):
        result = cs.apply(ops.network_reserve("a", None, None, POOL["pool"], POOL["pool_prefix"], port=bad))
        assert "not a UDP port" in result["error"] and len(cs.networks) == 2


def test_the_voters_are_recorded_only_once_every_host_knows_the_op_and_give_each_member_its_role():
    cs = registered(5, 5, 5)
    cs.apply(ops.cluster_version("a", 5))
    op = ops.voters_set("a", ["b", "a"], [])
    with pytest.raises(ShoutdError) as err:
        ops.check_proposable(op, cs)
    assert err.value.name == "UpgradeNeeded" and "needs state version 6" in str(err.value)
    assert "needs state version 6" in cs.apply(op)["error"] and cs.data["voters"] == [], "a 0.5 host alike"
    assert [cs.role(m) for m in "abc"] == ["voter"] * 3, "before state version 6, every member votes"
    cs.apply(ops.cluster_version("a", 6))
    assert cs.apply(op)["value"] == ["a", "b"]
    assert [cs.role(m) for m in "abc"] == ["voter", "voter", "replica"]
    before = copy.deepcopy(cs.data)
    for bad in ([], ["a", "a"], "a", [1], ["x"] * 10):
        assert "voter" in cs.apply(ops.voters_set("a", bad, ["a", "b"]) if isinstance(bad, list)
                                   else {"op": "voters_set", "node": "a", "voters": bad})["error"]
    assert cs.data["voters"] == before["voters"]
    # Two changes decided from the same record (AddPeer on two hosts): the second is refused, not applied.
    assert cs.apply(ops.voters_set("a", ["a", "b", "c"], ["a", "b"]))["value"] == ["a", "b", "c"]
    late = cs.apply(ops.voters_set("a", ["a", "b", "d"], ["a", "b"]))
    assert late["kind"] == "conflict" and "voters changed meanwhile (now a, b, c)" in late["error"]
    assert "was must be" in cs.apply({"op": "voters_set", "node": "a", "voters": ["a"], "was": "a"})["error"]
    assert cs.data["voters"] == ["a", "b", "c"]
    cs.apply(ops.voters_set("a", ["a", "b"], ["a", "b", "c"]))
    cs.apply(ops.member_remove("b"))
    assert cs.data["voters"] == ["a"], "a removed member votes no more"
