"""Multicast pruning without a kernel: what each host must program, and how listeners are reported.

The kernel side (snooping, the MDBs, the IGMP/MLD fence) is tested against
the real kernel in tests/kernel, and with real containers in tests/e2e.
"""

import asyncio
import types

from shoutd.dataplane.desired import desired, routed
from shoutd.multicast import SILENT_AFTER, Listeners
from shoutd.state import ClusterState

from ..support import docker_id, until

A, B, C = "198.18.0.1:7380", "198.18.0.2:7380", "198.18.0.3:7380"


def apply(state, **op):
    result = state.apply(op)
    assert "error" not in result, result
    return result["value"]


def cluster(mode="pruned"):
    state = ClusterState()
    for i, node in enumerate((A, B, C), 1):
        apply(state, op="member_up", node=node, advertise="198.18.0.%d" % i, raft=node, hostname="h%d" % i)
    net = apply(state, op="network_reserve", req="n1", node=A, pool="10.213.0.0/16", pool_prefix=24)
    apply(state, op="network_bind", network=net["id"], node=A, docker_id=docker_id("n1"),
          options={"multicast": mode})
    return state, net["id"]


def spec(state, node):
    (net,), _ = desired(state, node)
    return net


def test_a_group_goes_out_only_towards_the_hosts_that_listen():
    state, net = cluster()
    apply(state, op="groups_set", node=B, groups={net: ["239.1.1.1", "ff05::1:3", "ff02::fb"]})
    apply(state, op="groups_set", node=C, groups={net: ["239.1.1.1"]})
    a = spec(state, A)
    assert a.snooping
    assert a.bridge_mdb == {"239.1.1.1", "ff05::1:3", "ff02::fb"}
    # Link-local groups leave through the bridge entry but are flooded by the VXLAN device.
    assert a.vxlan_mdb == {("239.1.1.1", "198.18.0.2"), ("239.1.1.1", "198.18.0.3"), ("ff05::1:3", "198.18.0.2")}
    b = spec(state, B)
    assert b.bridge_mdb == {"239.1.1.1"} and b.vxlan_mdb == {("239.1.1.1", "198.18.0.3")}, \
        "a host never sends to itself; its own listeners are its bridge's business"
    apply(state, op="groups_set", node=C, groups={net: []})
    assert spec(state, B).bridge_mdb == frozenset(), "a group only this host listens to stays on this host"


def test_a_flooding_network_keeps_no_snooping_and_no_mdb():
    state, net = cluster("flood")
    apply(state, op="groups_set", node=B, groups={net: ["239.1.1.1"]})
    a = spec(state, A)
    assert not a.snooping and not a.bridge_mdb and not a.vxlan_mdb


def test_a_removed_member_is_no_destination():
    state, net = cluster()
    apply(state, op="groups_set", node=B, groups={net: ["239.1.1.1"]})
    apply(state, op="member_remove", node=B)
    assert spec(state, A).vxlan_mdb == frozenset()


def test_routed_means_what_the_vxlan_mdb_serves():
    assert routed("239.1.1.1") and routed("224.0.1.129") and routed("ff05::1:3") and routed("ff0e::1")
    assert not routed("224.0.0.251") and not routed("ff02::fb") and not routed("ff01::1")


class FakeWorker:
    """Local groups as the bridges' snooping would report them; counts the reads."""

    def __init__(self):
        self.groups = {}
        self.reads = 0

    async def run(self, fn):
        self.reads += 1
        nl = types.SimpleNamespace(local_groups=lambda bridges: {b: set(self.groups.get(b, ())) for b in bridges})
        return fn(nl)


class View:
    def __init__(self, state):
        self.state = state
        self.status = types.SimpleNamespace(role="follower", silent=())
        self.caught_up = asyncio.Event()
        self.caught_up.set()


def reporter(state, node=A, clock=None):
    worker, view, submitted = FakeWorker(), View(state), []

    async def submit(op):
        submitted.append(op)
        return state.apply(dict(op, req="r%d" % len(submitted)))["value"]
    return Listeners(worker, node, view, submit, clock=clock), worker, view, submitted


def test_a_burst_of_joins_costs_one_commit_and_a_repeat_none():
    state, net = cluster()
    listeners, worker, _, submitted = reporter(state)
    bridge = "shb%d" % state.networks[net]["vni"]

    started, finished = [], []
    step = listeners.step

    async def counted(periodic):
        started.append(periodic)
        await step(periodic)
        finished.append(periodic)
    listeners.step = counted

    def idle():
        return not listeners._kick.is_set() and len(started) == len(finished)

    async def main():
        listeners._sock = None
        task = asyncio.create_task(listeners._loop())
        for i in range(100):                          # a hundred joins, each waking the reporter
            worker.groups.setdefault(bridge, set()).add("239.2.0.%d" % i)
            listeners.kick()
            await asyncio.sleep(0.001)                # the joins of a burst arrive over 0.1 s or so
        await until(idle, what="the reporter done with the burst")
        first = len(submitted)
        listeners.kick()                              # nothing changed since
        await until(idle, what="the reporter done with the repeat")
        task.cancel()
        return first
    first = asyncio.run(main())
    assert 1 <= first <= 2, "%d commits for a burst of 100 joins" % first
    assert len(submitted) == first, "a pass that finds nothing new proposes nothing"
    assert len(state.networks[net]["listeners"][A]) == 100


def test_what_the_state_lost_is_reported_again():
    """After a withdrawal (or a restart, or a lost commit) the next pass puts it right."""
    state, net = cluster()
    listeners, worker, _, submitted = reporter(state)
    worker.groups["shb%d" % state.networks[net]["vni"]] = {"239.1.1.1"}
    asyncio.run(listeners.report())
    apply(state, op="groups_withdraw", node=B, member=A)
    asyncio.run(listeners.report())
    assert state.networks[net]["listeners"] == {A: ["239.1.1.1"]} and len(submitted) == 2


def test_the_leader_withdraws_a_silent_member_s_groups_only_after_a_while():
    state, net = cluster()
    now = [100.0]
    listeners, _, view, submitted = reporter(state, node=A, clock=lambda: now[0])
    apply(state, op="groups_set", node=C, groups={net: ["239.1.1.1"]})

    async def passes():
        await listeners.withdraw_silent()
    view.status = types.SimpleNamespace(role="leader", silent=(C,))
    asyncio.run(passes())
    now[0] += SILENT_AFTER - 1
    asyncio.run(passes())
    assert not submitted, "not yet"
    view.status = types.SimpleNamespace(role="leader", silent=())      # heard again: the clock starts over
    asyncio.run(passes())
    view.status = types.SimpleNamespace(role="leader", silent=(C,))
    now[0] += 5
    asyncio.run(passes())
    assert not submitted
    now[0] += SILENT_AFTER
    asyncio.run(passes())
    assert [op["op"] for op in submitted] == ["groups_withdraw"] and submitted[0]["member"] == C
    assert state.networks[net]["listeners"] == {}
    view.status = types.SimpleNamespace(role="follower", silent=(C,))
    apply(state, op="groups_set", node=C, groups={net: ["239.1.1.1"]})
    now[0] += 100
    asyncio.run(passes())
    assert len(submitted) == 1, "only the leader withdraws"


def test_the_vxlan_mdb_is_there_from_linux_6_4():
    from shoutd.dataplane.netlink import vxlan_mdb_supported
    assert not vxlan_mdb_supported("6.1.0-41-amd64")       # Debian 12
    assert not vxlan_mdb_supported("5.15.0-1-cloud")
    assert not vxlan_mdb_supported("2.6.78-fc-v769")
    assert not vxlan_mdb_supported("garbage")
    assert vxlan_mdb_supported("6.4.0")
    assert vxlan_mdb_supported("6.12.48+deb13-amd64")      # Debian 13
    assert vxlan_mdb_supported("7.0.1")
