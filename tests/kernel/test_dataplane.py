"""The data plane against the real kernel, in throwaway network namespaces.

Every operation runs twice and the kernel is read back with iproute2 (not
with the code under test): the second run must leave the kernel exactly as
the first left it, down to the interface indexes.
"""

import json
import os
import uuid

import pytest

from shoutd.dataplane.firewall import LEGACY_MATCH, RULE
from shoutd.state import ClusterState

from ..support import sh as run
from . import netns
from .netns import sh

pytestmark = pytest.mark.kernel
if os.geteuid() != 0:
    pytest.skip("kernel tests need root", allow_module_level=True)

ZERO = "00:00:00:00:00:00"


class Host(netns.Host):
    """A kernel-test host that also reads FDBs and whole-link snapshots."""

    def fdb(self, dev):
        out = json.loads(sh("ip netns exec %s bridge -j fdb show dev %s" % (self.name, dev)) or "[]")
        return {(e["mac"], e["dst"]) for e in out if "dst" in e}

    def snapshot(self):
        links = self.ip_json("link show")
        fdbs = {l["ifname"]: sorted(self.fdb(l["ifname"])) for l in links if l["ifname"].startswith("shx")}
        for l in links:
            # Carrier and timers move by themselves; what we configure must not.
            for key in ("stats", "stats64", "operstate"):
                l.pop(key, None)
            l["flags"] = [f for f in l["flags"] if f not in ("NO-CARRIER", "LOWER_UP", "M-DOWN")]
            for part in ("info_data", "info_slave_data"):
                info = l.get("linkinfo", {}).get(part, {})
                for timer in [k for k in info if k.endswith("_timer")]:
                    info.pop(timer)
        return links, fdbs


@pytest.fixture
def hosts():
    """Two hosts on one underlay: a veth pair between two namespaces."""
    tag = uuid.uuid4().hex[:6]
    names = ["kt%s-a" % tag, "kt%s-b" % tag]
    for n in names:
        sh("ip netns add " + n)
    sh("ip link add ul-%s netns %s type veth peer name ul-%s netns %s" % (tag, names[0], tag, names[1]))
    made = []
    try:
        for n, ip in zip(names, ("198.19.0.1", "198.19.0.2")):
            sh("ip -n %s addr add %s/24 dev ul-%s" % (n, ip, tag))
            sh("ip -n %s link set ul-%s up" % (n, tag))
            sh("ip -n %s link set lo up" % n)
            made.append(Host(n, ip))
        yield made
    finally:
        for h in made:
            h.worker.close()
        for n in names + ["%s-c%d" % (names[0], i) for i in range(2)]:
            sh("ip netns del " + n, check=False)


def cluster_state(endpoints=()):
    cs = ClusterState()
    cs.apply({"op": "member_up", "node": "a", "advertise": "198.19.0.1", "raft": "a"})
    cs.apply({"op": "member_up", "node": "b", "advertise": "198.19.0.2", "raft": "b"})
    cs.apply({"op": "network_reserve", "req": "n1", "node": "a", "subnet": "10.50.0.0/24",
              "pool": "10.213.0.0/16", "pool_prefix": 24})
    cs.apply({"op": "network_name", "network": "n1", "name": "web"})
    for ep_id, node, ip in endpoints:
        cs.apply({"op": "ip_allocate", "req": ep_id, "node": node, "network": "n1", "ip": ip})
        mac = "0a:5d:" + ":".join("%02x" % int(x) for x in ip.split("."))
        r = cs.apply({"op": "endpoint_add", "network": "n1", "node": node, "endpoint": ep_id, "ip": ip, "mac": mac})
        assert "error" not in r, r
    return cs


def test_every_ensure_twice_and_checked_against_the_kernel(hosts):
    a = hosts[0]
    ul = a.underlay()

    def build(nl):
        br = nl.ensure_bridge("shb7", ul.overlay_mtu, "shoutd test")
        nl.ensure_vxlan("shx7", 7, a.ip, 4789, ul.index, ul.overlay_mtu, br, "shoutd test")
        nl.ensure_fdb("shx7", {(ZERO, "198.19.0.2"), (ZERO, "198.19.0.3")})
        nl.ensure_up("shx7")
        nl.ensure_veth("shv" + "a" * 12, "shc" + "a" * 12, "0a:5d:01:02:03:04", ul.overlay_mtu, br, "shoutd ep")
    a.worker.call(build)
    first = a.snapshot()
    a.worker.call(build)
    assert a.snapshot() == first, "a second run must change nothing"

    br, vx = a.link("shb7"), a.link("shx7")
    assert br["linkinfo"]["info_kind"] == "bridge" and br["linkinfo"]["info_data"]["mcast_snooping"] == 0
    assert br["mtu"] == 1450 and "UP" in br["flags"]
    data = vx["linkinfo"]["info_data"]
    assert (data["id"], data["local"], data["port"], data.get("learning")) == (7, a.ip, 4789, False)
    assert vx["master"] == "shb7" and vx["mtu"] == 1450 and "UP" in vx["flags"]
    assert a.fdb("shx7") == {(ZERO, "198.19.0.2"), (ZERO, "198.19.0.3")}
    host, peer = a.link("shv" + "a" * 12), a.link("shc" + "a" * 12)
    assert host["master"] == "shb7" and host["mtu"] == 1450
    assert peer["address"] == "0a:5d:01:02:03:04" and peer["mtu"] == 1450


def test_fdb_follows_membership_and_wrong_devices_are_replaced(hosts):
    a = hosts[0]
    ul = a.underlay()

    def build(vni, peers):
        def go(nl):
            br = nl.ensure_bridge("shb7", ul.overlay_mtu, "t")
            nl.ensure_vxlan("shx7", vni, a.ip, 4789, ul.index, ul.overlay_mtu, br, "t")
            nl.ensure_fdb("shx7", {(ZERO, p) for p in peers})
        a.worker.call(go)
    build(7, ["198.19.0.2", "198.19.0.3"])
    build(7, ["198.19.0.3", "198.19.0.4"])
    assert a.fdb("shx7") == {(ZERO, "198.19.0.3"), (ZERO, "198.19.0.4")}
    build(8, ["198.19.0.3"])
    assert a.link("shx7")["linkinfo"]["info_data"]["id"] == 8
    assert a.link("shx7")["master"] == "shb7"
    assert a.fdb("shx7") == {(ZERO, "198.19.0.3")}


def test_reconcile_is_idempotent_collects_garbage_and_spares_foreign_links(hosts):
    a = hosts[0]
    ep = "f" * 64
    state = cluster_state([(ep, "a", "10.50.0.10"), ("e" * 64, "b", "10.50.0.11")])
    sh("ip -n %s link add shbfoo type bridge" % a.name)          # not a name of ours
    a.reconcile(state, "a")
    first = a.snapshot()
    a.reconcile(state, "a")
    assert a.snapshot() == first
    vni = state.networks["n1"]["vni"]
    assert a.fdb("shx%d" % vni) == {(ZERO, "198.19.0.2"), ("0a:5d:0a:32:00:0b", "198.19.0.2")}
    assert a.link("shv" + ep[:12])["master"] == "shb%d" % vni
    assert a.link("shv" + "e" * 12) is None, "only this host's endpoints get veths"

    sh("ip -n %s link del shx%d" % (a.name, vni))                # someone deletes our device
    a.reconcile(state, "a")
    assert a.link("shx%d" % vni)["master"] == "shb%d" % vni

    state.apply({"op": "endpoint_remove", "endpoint": ep})
    state.apply({"op": "endpoint_remove", "endpoint": "e" * 64})
    state.apply({"op": "network_delete", "network": "n1", "node": "a"})
    a.reconcile(state, "a")
    names = {l["ifname"] for l in a.ip_json("link show")}
    assert not {n for n in names if n.startswith(("shv", "shc", "shx", "shb"))} - {"shbfoo"}
    assert "shbfoo" in names


def test_a_change_only_pass_leaves_what_a_full_check_would(hosts):
    """Kicked passes touch only what changed; the periodic full check must then find nothing to do."""
    a = hosts[0]
    gone, stays, remote = "a1" * 32, "b2" * 32, "c3" * 32
    state = cluster_state([(gone, "a", "10.50.0.10"), (stays, "a", "10.50.0.11")])
    plan = a.reconcile(state, "a")
    # A container stops here, one starts here, one starts on the other host, a new network appears.
    state.apply({"op": "endpoint_remove", "endpoint": gone})
    for ep, node, ip in (("d4" * 32, "a", "10.50.0.12"), (remote, "b", "10.50.0.13")):
        state.apply({"op": "ip_allocate", "req": ep, "node": node, "network": "n1", "ip": ip})
        assert "error" not in state.apply({"op": "endpoint_add", "network": "n1", "node": node, "endpoint": ep,
                                           "ip": ip, "mac": "0a:5d:0a:32:00:%02x" % int(ip.split(".")[-1])})
    state.apply({"op": "network_reserve", "req": "n2", "node": "a", "subnet": "10.51.0.0/24",
                 "pool": "10.213.0.0/16", "pool_prefix": 24})
    a.reconcile(state, "a", previous=plan)
    changed = a.snapshot()
    assert a.link("shv" + gone[:12]) is None and a.link("shc" + gone[:12]) is None
    assert a.link("shv" + "d4" * 6)["master"] == "shb%d" % state.networks["n1"]["vni"]
    assert ("0a:5d:0a:32:00:0d", "198.19.0.2") in a.fdb("shx%d" % state.networks["n1"]["vni"])
    assert a.link("shx%d" % state.networks["n2"]["vni"])["master"] == "shb%d" % state.networks["n2"]["vni"]
    a.reconcile(state, "a")
    assert a.snapshot() == changed, "the full check found something the change-only pass missed"


def test_containers_on_two_hosts_talk_l2_through_the_reconciled_kernel(hosts):
    a, b = hosts
    eps = [("1" * 64, "a", "10.50.0.10"), ("2" * 64, "b", "10.50.0.11")]
    state = cluster_state(eps)
    a.reconcile(state, "a")
    b.reconcile(state, "b")
    containers = []
    for i, ((ep, node, ip), host) in enumerate(zip(eps, hosts)):
        c = "%s-c%d" % (hosts[0].name, i)
        sh("ip netns add " + c)
        sh("ip -n %s link set shc%s netns %s" % (host.name, ep[:12], c))
        sh("ip -n %s link set shc%s name eth0" % (c, ep[:12]))
        sh("ip -n %s addr add %s/24 dev eth0" % (c, ip))
        sh("ip -n %s link set eth0 up" % c)
        containers.append(c)
    # Unicast, then a broadcast ARP answered from the other host.
    sh("ip netns exec %s busybox ping -c 3 -W 2 10.50.0.11" % containers[0])
    out = sh("ip netns exec %s arping -c 2 -w 5 -I eth0 10.50.0.10" % containers[1])
    assert "0a:5d:0a:32:00:0a".upper() in out.upper()
    # A second reconcile with live containers changes nothing and keeps them talking.
    before = a.snapshot()
    a.reconcile(state, "a")
    assert a.snapshot() == before
    sh("ip netns exec %s busybox ping -c 1 -W 2 10.50.0.11" % containers[0])


def forward_rules(host):
    return [r for r in sh("ip netns exec %s iptables -S FORWARD" % host.name).splitlines() if r.startswith("-A ")]


def test_bridged_traffic_is_let_past_iptables_when_br_netfilter_is_on(hosts):
    """Docker's FORWARD policy DROP must not eat frames our bridges forward."""
    a, b = hosts
    if sh("which iptables", check=False).strip() == "" or \
            not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        sh("modprobe br_netfilter", check=False)
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        pytest.skip("br_netfilter is not available")
    eps = [("3" * 64, "a", "10.50.0.20"), ("4" * 64, "b", "10.50.0.21")]
    state = cluster_state(eps)
    for h in hosts:
        sh("ip netns exec %s sysctl -qw net.bridge.bridge-nf-call-iptables=1" % h.name)
        sh("ip netns exec %s iptables -P FORWARD DROP" % h.name)
    # Host b was upgraded from shoutd 0.5, whose rule had a comment (an xtables match on every frame).
    sh("ip netns exec %s iptables -A FORWARD %s" % (b.name, " ".join(
        '"%s"' % w if " " in w else w for w in LEGACY_MATCH)))
    a.reconcile(state, "a")
    b.reconcile(state, "b")
    for h in hosts:
        assert forward_rules(h) == [RULE], "the plain rule, once"
    a.reconcile(state, "a")
    assert forward_rules(a) == [RULE], "added once"
    c = "%s-c0" % a.name
    d = "%s-c1" % a.name
    for ns, (ep, _, ip), host in ((c, eps[0], a), (d, eps[1], b)):
        sh("ip netns add " + ns)
        sh("ip -n %s link set shc%s netns %s name eth0" % (host.name, ep[:12], ns))
        sh("ip -n %s addr add %s/24 dev eth0" % (ns, ip))
        sh("ip -n %s link set eth0 up" % ns)
    sh("ip netns exec %s busybox ping -c 2 -W 2 10.50.0.21" % c)


def test_br_netfilter_turned_on_after_start_is_seen_when_a_container_arrives(hosts):
    """At boot shoutd programs its networks before Docker loads br_netfilter."""
    a = hosts[0]
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        sh("modprobe br_netfilter", check=False)
    if not os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables") or \
            sh("which iptables", check=False).strip() == "":
        pytest.skip("br_netfilter or iptables is not available")
    sh("ip netns exec %s sysctl -qw net.bridge.bridge-nf-call-iptables=0" % a.name)
    state = cluster_state()
    plan = a.reconcile(state, "a")
    assert forward_rules(a) == [], "not needed yet"
    sh("ip netns exec %s sysctl -qw net.bridge.bridge-nf-call-iptables=1" % a.name)   # dockerd starts
    state.apply({"op": "ip_allocate", "req": "r", "node": "a", "network": "n1", "ip": "10.50.0.30"})
    state.apply({"op": "endpoint_add", "network": "n1", "node": "a", "endpoint": "5" * 64, "ip": "10.50.0.30",
                 "mac": "0a:5d:0a:32:00:1e"})
    a.reconcile(state, "a", previous=plan)                                              # a change-only pass
    assert forward_rules(a) == [RULE]


def overlay_device(host, vni, create=True):
    """A VXLAN device as Docker's overlay makes one (swarm, UDP 4789): created in the host's namespace,
    whose socket it keeps even after Docker moves the device into the network's own namespace."""
    if create:
        return run("ip -n %s link add ov%d type vxlan id %d dstport 4789 local %s nolearning" % (host.name, vni, vni,
                                                                                                  host.ip), check=False)
    sh("ip -n %s link del ov%d" % (host.name, vni), check=False)


def connect(hosts, eps):
    """Move each endpoint's container side into a namespace of its own, as Docker does at Join.

    IPv6 is off in it, as Docker leaves it on a network without IPv6: the
    container sends nothing until it is spoken to."""
    made = []
    for ep, node, ip in eps:
        host = hosts[0] if node == "a" else hosts[1]
        ns = "%s-%s" % (host.name, ep[:2])
        sh("ip netns add " + ns)
        sh("ip netns exec %s sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1" % ns)
        sh("ip -n %s link set shc%s netns %s name eth0" % (host.name, ep[:12], ns))
        sh("ip -n %s addr add %s/24 dev eth0" % (ns, ip))
        sh("ip -n %s link set eth0 up" % ns)
        made.append(ns)
    return made


@pytest.mark.parametrize("overlay_first", [True, False])
def test_a_network_on_its_own_port_coexists_with_an_overlay_device_of_the_same_vni(hosts, overlay_first):
    """Docker's overlay may hold any VNI (vxlanid_list, or its 4096-up allocator) on UDP 4789: a shoutd
    network on its own port keeps working beside it, whichever came first."""
    eps = [("6" * 64, "a", "10.50.0.40"), ("7" * 64, "b", "10.50.0.41")]
    state = cluster_state(eps)
    state.apply({"op": "cluster_version", "node": "a", "version": 4})
    vni = state.networks["n1"]["vni"]
    state.networks["n1"]["port"] = 7380          # what network_reserve records from state version 4
    if overlay_first:
        for h in hosts:
            assert overlay_device(h, vni).returncode == 0
    for h, node in zip(hosts, "ab"):
        h.reconcile(state, node)
    if not overlay_first:
        for h in hosts:
            res = overlay_device(h, vni)
            assert res.returncode == 0, "the overlay's device is refused: %s" % res.stderr
    link = hosts[0].link("shx%d" % vni)
    assert link["linkinfo"]["info_data"]["port"] == 7380 and link["operstate"] != "DOWN"
    containers = connect(hosts, eps)
    try:
        sh("ip netns exec %s busybox ping -c 2 -W 2 10.50.0.41" % containers[0])
    finally:
        for ns in containers:
            sh("ip netns del " + ns, check=False)


def test_on_the_legacy_port_the_same_vni_clashes_which_is_why_networks_have_their_own(hosts):
    state = cluster_state()
    a = hosts[0]
    vni = state.networks["n1"]["vni"]
    assert "port" not in state.networks["n1"], "made as shoutd 0.3 made networks: on the legacy port"
    assert overlay_device(a, vni).returncode == 0
    with pytest.raises(Exception) as err:
        a.reconcile(state, "a")
    assert "exists" in str(err.value).lower()
    overlay_device(a, vni, create=False)
    a.reconcile(state, "a")
    assert a.link("shx%d" % vni)["linkinfo"]["info_data"]["port"] == 4789


def test_a_mac_that_moves_to_another_host_is_reached_there_at_once(hosts):
    """Swarm hands a freed address to a task on another node at once, and the MAC follows the address.
    The bridge there may have learned that MAC on its VXLAN port (from the old holder's replies), and
    a sender with the MAC in its ARP cache sends no broadcast that would teach it otherwise: unless
    shoutd pins the MAC to the new veth, the bridge drops the frames until the new container speaks."""
    a, b = hosts
    x, y, z = ("8" * 64, "a", "10.50.0.50"), ("9" * 64, "b", "10.50.0.51"), ("a" * 64, "a", "10.50.0.52")
    state = cluster_state([x, y, z])
    a.reconcile(state, "a")
    b.reconcile(state, "b")
    ns_x, ns_y, ns_z = connect(hosts, [x, y, z])
    # b's bridge learns x's MAC on the VXLAN port; z caches it in its ARP table.
    sh("ip netns exec %s busybox ping -c 1 -W 2 10.50.0.50" % ns_y)
    sh("ip netns exec %s busybox ping -c 1 -W 2 10.50.0.50" % ns_z)
    # x's address and MAC move to a new endpoint on b, whose container never speaks first
    # (IPv6 off, so no DAD or router solicitation either: see connect()).
    sh("ip netns del " + ns_x)
    state.apply({"op": "endpoint_remove", "node": "a", "endpoint": x[0]})
    moved = ("b" * 64, "b", x[2])
    state.apply({"op": "ip_allocate", "req": moved[0], "node": "b", "network": "n1", "ip": moved[2]})
    r = state.apply({"op": "endpoint_add", "network": "n1", "node": "b", "endpoint": moved[0], "ip": moved[2],
                     "mac": "0a:5d:0a:32:00:32"})
    assert "error" not in r, r
    a.reconcile(state, "a")
    b.reconcile(state, "b")
    ns_moved, = connect(hosts, [moved])
    try:
        res = run("ip netns exec %s busybox ping -c 2 -W 2 10.50.0.50" % ns_z, check=False)
        assert res.returncode == 0, "the moved MAC is not reached on its new host:\n%s" % res.stdout
    finally:
        for n in (ns_y, ns_z, ns_moved):
            sh("ip netns del " + n, check=False)
