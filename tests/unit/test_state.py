"""The replicated state machine: deterministic, never raising, leaving no trace when it refuses."""

import copy
import ipaddress
import pickle
import random

import pytest

from shoutd.state import VNI_MIN, ClusterState

from ..support import docker_id

E1, E2, EE = docker_id("e1"), docker_id("e2"), "e" * 64
MAC = "0a:5d:00:00:00:01"


def content(cs):
    """The state without the digest of applied ops (which every op, refused or not, moves)."""
    return {k: v for k, v in cs.data.items() if k != "log"}

POOL = {"pool": "10.213.0.0/16", "pool_prefix": 24}


def ok(cs, **op):
    result = cs.apply(op)
    assert "error" not in result, result
    return result["value"]


def refused(cs, kind, **op):
    before = copy.deepcopy(content(cs))
    result = cs.apply(op)
    assert result.get("kind") == kind, result
    assert content(cs) == before, "a refused op must change nothing"
    return result["error"]


def cluster(*nodes):
    cs = ClusterState()
    for i, node in enumerate(nodes, 1):
        ok(cs, op="member_up", node=node, advertise="198.18.0.%d" % i, raft=node, hostname="h%d" % i)
    return cs


def network(cs, req="n1", node="a", subnet=None, name=None):
    net = ok(cs, op="network_reserve", req=req, node=node, subnet=subnet, **POOL)
    ok(cs, op="network_bind", network=net["id"], node=node, docker_id=docker_id(req + "-" + node))
    if name:
        ok(cs, op="network_name", network=net["id"], name=name)
    return net


def test_default_pool_gives_distinct_subnets_and_vnis():
    cs = cluster("a")
    nets = [network(cs, req="n%d" % i) for i in range(3)]
    assert [n["subnet"] for n in nets] == ["10.213.0.0/24", "10.213.1.0/24", "10.213.2.0/24"]
    assert [n["vni"] for n in nets] == [VNI_MIN, VNI_MIN + 1, VNI_MIN + 2]
    assert nets[0]["gateway"] == "10.213.0.1"


def test_default_pool_skips_user_subnets_inside_it():
    cs = cluster("a")
    network(cs, req="user", subnet="10.213.0.0/23")
    assert network(cs, req="auto")["subnet"] == "10.213.2.0/24"


def test_overlapping_subnet_is_refused_with_the_other_network_named():
    cs = cluster("a")
    network(cs, req="n1", subnet="10.1.0.0/16", name="web")
    msg = refused(cs, "conflict", op="network_reserve", req="n2", node="a", subnet="10.1.2.0/24", **POOL)
    assert "10.1.0.0/16" in msg and "web" in msg and "--subnet" in msg


def test_replica_on_another_host_gets_the_same_network():
    cs = cluster("a", "b")
    net = network(cs, subnet="10.1.0.0/24", name="web")
    again = ok(cs, op="network_reserve", req="other", node="b", subnet="10.1.0.0/24", network=net["id"], **POOL)
    assert again["id"] == net["id"] and again["vni"] == net["vni"]
    assert len(cs.networks) == 1


@pytest.mark.parametrize("subnet", ["banana", "fd00::/64", "10.0.0.0/31"])
def test_bad_subnets_are_refused_clearly(subnet):
    cs = cluster("a")
    msg = refused(cs, "invalid", op="network_reserve", req="n", node="a", subnet=subnet, **POOL)
    assert subnet.split("/")[0] in msg


def test_exhausted_default_pool_says_what_to_do():
    cs = cluster("a")
    small = {"pool": "10.9.0.0/23", "pool_prefix": 24}
    for i in range(2):
        ok(cs, op="network_reserve", req="n%d" % i, node="a", **small)
    msg = refused(cs, "conflict", op="network_reserve", req="n9", node="a", **small)
    assert "default_pool" in msg


def test_names_are_unique_cluster_wide():
    cs = cluster("a", "b")
    network(cs, req="n1", name="web")
    other = network(cs, req="n2", node="b")
    assert "already exists" in refused(cs, "conflict", op="network_name", network=other["id"], name="web")


def test_addresses_are_unique_sequential_and_skip_the_gateway():
    cs = cluster("a", "b")
    net = network(cs, subnet="10.1.0.0/29", name="small")
    ips = [ok(cs, op="ip_allocate", req="r%d" % i, node="ab"[i % 2], network=net["id"]) for i in range(5)]
    assert ips == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    assert "no free address" in refused(cs, "conflict", op="ip_allocate", req="x", node="a", network=net["id"])


def test_released_addresses_return_to_the_pool_after_the_others():
    cs = cluster("a")
    net = network(cs, subnet="10.1.0.0/29")
    first = ok(cs, op="ip_allocate", req="r1", node="a", network=net["id"])
    ok(cs, op="ip_release", network=net["id"], ip=first)
    nxt = ok(cs, op="ip_allocate", req="r2", node="a", network=net["id"])
    assert nxt != first, "a just-released address is not handed out again at once"
    got = {ok(cs, op="ip_allocate", req="r%d" % i, node="a", network=net["id"]) for i in range(3, 7)}
    assert first in got, "released addresses come back once the rest are used"


def test_a_retried_allocation_returns_the_same_address():
    cs = cluster("a")
    net = network(cs)
    one = ok(cs, op="ip_allocate", req="same", node="a", network=net["id"])
    assert ok(cs, op="ip_allocate", req="same", node="a", network=net["id"]) == one
    assert len(cs.networks[net["id"]]["addresses"]) == 1


def test_static_address_is_honoured_or_refused_naming_the_holder():
    cs = cluster("a", "b")
    net = network(cs, subnet="10.1.0.0/24", name="web")
    assert ok(cs, op="ip_allocate", req="r1", node="b", network=net["id"], ip="10.1.0.50") == "10.1.0.50"
    msg = refused(cs, "conflict", op="ip_allocate", req="r2", node="a", network=net["id"], ip="10.1.0.50")
    assert "10.1.0.50" in msg and "h2" in msg
    refused(cs, "conflict", op="ip_allocate", req="r3", node="a", network=net["id"], ip="10.1.0.1")
    refused(cs, "invalid", op="ip_allocate", req="r4", node="a", network=net["id"], ip="10.2.0.5")
    refused(cs, "invalid", op="ip_allocate", req="r5", node="a", network=net["id"], ip="10.1.0.255")


def test_gateway_can_be_chosen_at_create_only():
    cs = cluster("a")
    net = ok(cs, op="network_reserve", req="n", node="a", subnet="10.1.0.0/24", **POOL)
    assert ok(cs, op="network_gateway", network=net["id"], node="a", gateway="10.1.0.254")["gateway"] == "10.1.0.254"
    ok(cs, op="network_bind", network=net["id"], node="a", docker_id=docker_id("d"))
    refused(cs, "conflict", op="network_gateway", network=net["id"], node="a", gateway="10.1.0.9")


def test_delete_with_containers_elsewhere_keeps_the_network_and_says_where():
    cs = cluster("a", "b")
    net = network(cs, name="web")
    ok(cs, op="network_bind", network=net["id"], node="b", docker_id=docker_id("db"))
    ip = ok(cs, op="ip_allocate", req="r", node="b", network=net["id"])
    ok(cs, op="endpoint_add", network=net["id"], node="b", endpoint=EE, ip=ip, mac=MAC)
    result = ok(cs, op="network_delete", network=net["id"], node="a")
    assert result["deleted"] is False
    assert "h2 (198.18.0.2)" in result["reason"] and ip in result["reason"]
    assert net["id"] in cs.networks and "a" not in cs.networks[net["id"]]["bindings"]
    ok(cs, op="endpoint_remove", endpoint=EE)
    assert ok(cs, op="network_delete", network=net["id"], node="b")["deleted"] is True
    assert not cs.networks


def test_release_pool_drops_only_abandoned_creates():
    cs = cluster("a")
    pending = ok(cs, op="network_reserve", req="p", node="a", **POOL)
    named = network(cs, req="n", name="web")
    ok(cs, op="network_release", network=pending["id"], node="a")
    ok(cs, op="network_release", network=named["id"], node="a")
    assert list(cs.networks) == [named["id"]]


def test_endpoint_needs_an_address_from_our_ipam():
    cs = cluster("a")
    net = network(cs, name="web")
    msg = refused(cs, "invalid", op="endpoint_add", network=net["id"], node="a", endpoint=E1, ip="10.213.0.9",
                  mac=MAC)
    assert "--ipam-driver shoutd" in msg
    ip = ok(cs, op="ip_allocate", req="r", node="a", network=net["id"])
    ok(cs, op="endpoint_add", network=net["id"], node="a", endpoint=E1, ip=ip, mac=MAC)
    assert ok(cs, op="endpoint_add", network=net["id"], node="a", endpoint=E1, ip=ip, mac=MAC)["id"] == E1
    refused(cs, "conflict", op="endpoint_add", network=net["id"], node="a", endpoint=E2, ip=ip, mac=MAC)
    refused(cs, "conflict", op="ip_release", network=net["id"], ip=ip)


def test_removing_a_member_frees_what_it_held():
    cs = cluster("a", "b")
    net = network(cs, name="web")
    ip = ok(cs, op="ip_allocate", req="r", node="b", network=net["id"])
    ok(cs, op="endpoint_add", network=net["id"], node="b", endpoint=E1, ip=ip, mac=MAC)
    ok(cs, op="member_remove", node="b")
    assert "b" not in cs.members and not cs.endpoints and not cs.networks[net["id"]]["addresses"]


def test_advertise_addresses_are_unique():
    cs = cluster("a")
    refused(cs, "conflict", op="member_up", node="b", advertise="198.18.0.1", raft="b", hostname="x")


@pytest.mark.parametrize("op", [None, 42, "x", {}, {"op": 7}, {"op": "ip_allocate"},
                                {"op": "member_up", "node": "a", "advertise": "not-an-ip", "raft": "a"},
                                {"op": "network_reserve", "req": "x", "node": "a", "subnet": None,
                                 "pool": "junk", "pool_prefix": 24}])
def test_garbage_never_raises(op):
    cs = cluster("a")
    before = copy.deepcopy(content(cs))
    result = cs.apply(op)
    assert result["kind"] == "invalid" and result["error"]
    assert content(cs) == before


def test_same_ops_same_state_and_snapshots_round_trip():
    rng = random.Random(7)
    ops = [{"op": "member_up", "node": "a", "advertise": "198.18.0.1", "raft": "a"},
           {"op": "member_up", "node": "b", "advertise": "198.18.0.2", "raft": "b"}]
    for i in range(4):
        ops.append({"op": "network_reserve", "req": "n%d" % i, "node": "a", **POOL})
    for i in range(200):
        net = "n%d" % rng.randrange(4)
        if rng.random() < 0.7:
            ops.append({"op": "ip_allocate", "req": "r%d" % i, "node": rng.choice("ab"), "network": net})
        else:
            ops.append({"op": "ip_release", "network": net, "ip": "10.213.%d.%d" % (int(net[1]), rng.randrange(2, 30))})
    one, two = ClusterState(), ClusterState()
    for op in ops:
        assert one.apply(copy.deepcopy(op)) == two.apply(copy.deepcopy(op))
    assert one.data == two.data
    assert pickle.loads(pickle.dumps(one.data)) == one.data
    for net in one.networks.values():
        for ip in net["addresses"]:
            assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(net["subnet"])


def test_a_withdrawn_request_never_takes_effect_later():
    cs = cluster("a")
    net = network(cs)
    assert ok(cs, op="withdraw", target="late", node="a") == {"withdrawn": True}
    msg = refused(cs, "unavailable", op="ip_allocate", req="late", node="a", network=net["id"])
    assert "withdrawn" in msg and "nothing was changed" in msg
    assert ok(cs, op="withdraw", target="late", node="a") == {"withdrawn": True}, "withdrawing again is harmless"


def test_withdrawing_an_applied_request_undoes_it_where_that_is_safe():
    cs = cluster("a", "b")
    net = network(cs, subnet="10.1.0.0/24", name="web")
    ip = ok(cs, op="ip_allocate", req="alloc", node="a", network=net["id"])
    assert ok(cs, op="withdraw", target="alloc", node="a") == {"withdrawn": True}
    assert ip not in cs.networks[net["id"]]["addresses"], "the address went back to the pool"
    refused(cs, "unavailable", op="ip_allocate", req="alloc", node="a", network=net["id"])

    used = ok(cs, op="ip_allocate", req="used", node="b", network=net["id"])
    ok(cs, op="endpoint_add", req="ep", network=net["id"], node="b", endpoint=E1, ip=used, mac=MAC)
    # Docker went on with the address after all: it is not taken away from a container.
    assert ok(cs, op="withdraw", target="used", node="b") == {"applied": used}
    assert ok(cs, op="withdraw", target="ep", node="b") == {"withdrawn": True}
    assert E1 not in cs.endpoints and not cs.networks[net["id"]]["endpoints"]

    pool = ok(cs, op="network_reserve", req="pool", node="a", **POOL)
    assert ok(cs, op="withdraw", target="pool", node="a") == {"withdrawn": True}
    assert pool["id"] not in cs.networks
    ok(cs, op="ip_release", req="rel", network=net["id"], ip=used)
    assert ok(cs, op="withdraw", target="rel", node="b") == {"applied": None}, "a release is not undone"


def test_a_retried_request_returns_its_first_answer():
    cs = cluster("a")
    net = network(cs)
    first = ok(cs, op="ip_allocate", req="same", node="a", network=net["id"])
    ok(cs, op="ip_release", network=net["id"], ip=first)
    assert ok(cs, op="ip_allocate", req="same", node="a", network=net["id"]) == first
    assert cs.networks[net["id"]]["addresses"] == {}, "the retry did not allocate again"


def test_the_request_memory_is_bounded(monkeypatch):
    import shoutd.state.requests as state_module
    monkeypatch.setattr(state_module, "REQUEST_MEMORY", 50)
    cs = cluster("a")
    net = network(cs, subnet="10.1.0.0/24")
    for i in range(120):
        ok(cs, op="ip_allocate", req="r%d" % i, node="a", network=net["id"])
    assert len(cs.data["requests"]) == 50 and "r119" in cs.data["requests"] and "r0" not in cs.data["requests"]


def test_a_snapshot_from_an_older_shoutd_is_brought_up_to_date():
    cs = cluster("a")
    net = network(cs, name="web")
    ip = ok(cs, op="ip_allocate", req="r", node="a", network=net["id"])
    ok(cs, op="endpoint_add", network=net["id"], node="a", endpoint=E1, ip=ip, mac=MAC)
    old = copy.deepcopy(cs.data)
    del old["requests"], old["log"]
    for n in old["networks"].values():
        del n["endpoints"], n["multicast"], n["listeners"]
    for e in old["endpoints"].values():
        del e["req"]
    again = ClusterState(pickle.loads(pickle.dumps(old)))
    assert again.endpoints_of(net["id"])[0]["id"] == E1
    assert again.networks[net["id"]]["multicast"] == "flood", "made before pruning: it keeps flooding"
    assert "already used by endpoint" in refused(again, "conflict", op="endpoint_add", network=net["id"], node="a",
                                                 endpoint=E2, ip=ip, mac=MAC)


def test_an_allocation_costs_the_same_in_a_big_state():
    """No op scans the addresses: the last thousand allocations in a /16 cost what the first did."""
    import time
    cs = cluster("a")
    net = network(cs, subnet="10.64.0.0/16")

    def batch(start):
        began = time.process_time()
        for i in range(start, start + 500):
            ok(cs, op="ip_allocate", req="r%d" % i, node="a", network=net["id"])
        return time.process_time() - began
    early = min(batch(0), batch(500), batch(1000))
    for start in range(1500, 9000, 500):
        batch(start)
    late = min(batch(9000), batch(9500), batch(10000))
    assert len(cs.networks[net["id"]]["addresses"]) == 10500
    assert late < early * 2, "allocation got slower as the state grew: %.4fs -> %.4fs per 500" % (early, late)


def test_a_network_s_identity_is_recorded_with_its_name_and_checked():
    cs = cluster("a")
    net = network(cs)
    identity = {"labels": {"com.docker.compose.project": "web"}, "internal": True, "attachable": False,
                "options": {"mtu": "1400"}, "ipam_options": {}}
    msg = refused(cs, "invalid", op="network_name", network=net["id"], name="web_lan",
                  identity=dict(identity, internal="yes"))
    assert "internal" in msg
    refused(cs, "invalid", op="network_name", network=net["id"], name="web_lan", identity={"labels": ["x"]})
    ok(cs, op="network_name", network=net["id"], name="web_lan", identity=identity)
    assert cs.networks[net["id"]]["identity"] == identity


def test_one_host_binds_a_subnet_once_unless_the_mirror_replaces_its_copy():
    cs = cluster("a")
    net = network(cs, req="n1", subnet="10.1.0.0/24", name="web")
    msg = refused(cs, "conflict", op="network_bind", network=net["id"], node="a", docker_id=docker_id("second"))
    assert "already shoutd network web" in msg and "another --subnet" in msg
    ok(cs, op="network_bind", network=net["id"], node="a", docker_id=docker_id("second"), replace=True)
    assert cs.networks[net["id"]]["bindings"]["a"] == docker_id("second")


def test_a_network_prunes_by_default_and_its_creator_s_option_decides():
    cs = cluster("a", "b")
    assert cs.networks[network(cs, req="p1")["id"]]["multicast"] == "pruned"
    net = ok(cs, op="network_reserve", req="f1", node="a", **POOL)
    bound = ok(cs, op="network_bind", network=net["id"], node="a", docker_id=docker_id("f1-a"),
               options={"multicast": "flood"})
    assert bound["multicast"] == "flood"
    # A copy on another host does not change it.
    ok(cs, op="network_bind", network=net["id"], node="b", docker_id=docker_id("f1-b"))
    assert cs.networks[net["id"]]["multicast"] == "flood"
    net = ok(cs, op="network_reserve", req="x1", node="a", **POOL)
    err = refused(cs, "invalid", op="network_bind", network=net["id"], node="a", docker_id=docker_id("x1-a"),
                  options={"multicast": "sometimes"})
    assert "multicast=pruned" in err and "multicast=flood" in err


def test_groups_replace_per_host_and_network_and_go_with_the_host():
    cs = cluster("a", "b")
    net, flood = network(cs, req="p1"), ok(cs, op="network_reserve", req="f1", node="a", **POOL)
    ok(cs, op="network_bind", network=flood["id"], node="a", docker_id=docker_id("f1-a"),
       options={"multicast": "flood"})
    assert ok(cs, op="groups_set", node="a", groups={net["id"]: ["239.1.1.2", "239.1.1.1", "239.1.1.1"],
                                                     flood["id"]: ["239.9.9.9"], "gone": ["239.1.1.1"]}) == 1
    assert cs.networks[net["id"]]["listeners"] == {"a": ["239.1.1.1", "239.1.1.2"]}
    assert cs.networks[flood["id"]]["listeners"] == {}, "a flooding network keeps no listeners"
    ok(cs, op="groups_set", node="b", groups={net["id"]: ["239.1.1.1", "ff05::1:3"]})
    assert ok(cs, op="groups_set", node="b", groups={net["id"]: ["239.1.1.1", "ff05::1:3"]}) == 0, "a repeat"
    ok(cs, op="groups_set", node="a", groups={net["id"]: ["239.1.1.2"]})
    assert cs.networks[net["id"]]["listeners"] == {"a": ["239.1.1.2"], "b": ["239.1.1.1", "ff05::1:3"]}
    ok(cs, op="groups_set", node="a", groups={net["id"]: []})
    assert cs.networks[net["id"]]["listeners"] == {"b": ["239.1.1.1", "ff05::1:3"]}
    assert ok(cs, op="groups_withdraw", node="a", member="b") == 1
    assert cs.networks[net["id"]]["listeners"] == {}
    ok(cs, op="groups_set", node="b", groups={net["id"]: ["239.1.1.1"]})
    ok(cs, op="member_remove", node="b")
    assert cs.networks[net["id"]]["listeners"] == {}, "a removed host's groups go with it"


@pytest.mark.parametrize("groups,words", [
    (["10.0.0.1"], "not a multicast group"), (["224.0.0.251"], "link-local"), (["banana"], "not a multicast"),
    ("239.1.1.1", "must be a list"), (["239.0.%d.%d" % (i // 250, i % 250) for i in range(1100)], "at most 1024")])
def test_bad_groups_are_refused_and_change_nothing(groups, words):
    cs = cluster("a")
    net = network(cs)
    err = refused(cs, "invalid", op="groups_set", node="a", groups={net["id"]: groups})
    assert words in err, err


def test_groups_of_a_stranger_are_refused():
    cs = cluster("a")
    net = network(cs)
    refused(cs, "not_found", op="groups_set", node="z", groups={net["id"]: ["239.1.1.1"]})
