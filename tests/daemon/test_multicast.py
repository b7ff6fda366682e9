"""Multicast listeners through real daemons: reported from the kernel, shown on D-Bus, batched, withdrawn.

Three netns hosts run shoutd without Docker; a 'container' is an endpoint
made through the plugin API whose veth sits in a namespace of its own, and
joins groups with a real socket, so its bridge snoops real IGMP.
"""

import socket

from ..hostlab import container
from ..support import join_groups, wait_for

GROUP = "239.5.5.5"


def cluster_with_a_network(world):
    secret = world.secret()
    bus = world.bus()
    hosts = [world.host() for _ in range(3)]
    for h in hosts:
        h.start(secret, bus if h is hosts[0] else None, peers=[o.ip for o in hosts if o is not h], wait=False)
    for h in hosts:
        h.wait_registered()
    hosts[0].wait_log("D-Bus: ")
    pool = hosts[0].plugin("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "10.66.0.0/24",
                                                      "Options": {}, "V6": False})
    nets = {}
    for h in hosts:
        nets[h] = "%064x" % h.n
        h.plugin("NetworkDriver.CreateNetwork", {"NetworkID": nets[h], "Options": {"com.docker.network.generic": {}},
                                                 "IPv4Data": [{"AddressSpace": "shoutd", "Pool": "10.66.0.0/24"}]})
    return secret, bus, hosts, pool["PoolID"], nets


def listeners(bus):
    """{group: [hosts]} of the one network, as D-Bus Status shows them."""
    (net,) = bus.status()["Multicast"]
    assert net[1] == "pruned", net
    return {g: hosts for g, hosts in net[2]}


def vxlan_mdb(host):
    (vxlan,) = [name for name in host.links() if name.startswith("shx")]
    return host.netns("bridge mdb show dev " + vxlan).stdout


def test_listeners_are_reported_shown_batched_and_withdrawn_from_a_silent_host(world):
    secret, bus, (h1, h2, h3), pool, nets = cluster_with_a_network(world)
    host2 = "%s (198.20.0.2)" % socket.gethostname()      # netns hosts share the machine's hostname
    ns2, ip2 = container(world, h2, pool, nets[h2], "c2")
    ns3, ip3 = container(world, h3, pool, nets[h3], "c3")
    applied = bus.status()["Applied"]
    joined = join_groups(ns2, ip2, GROUP)
    try:
        wait_for(lambda: listeners(bus).get(GROUP) == [host2], timeout=10, what="host 2 listed for " + GROUP)
        assert GROUP in vxlan_mdb(h1) and GROUP in vxlan_mdb(h3) and GROUP not in vxlan_mdb(h2)
        out = bus.ctl("networks").stdout
        assert GROUP in out and "198.20.0.2" in out and "pruned" in out, out

        # A hundred joins in one container at once: a few commits, not a hundred.
        before = bus.status()["Applied"]
        burst = ["239.6.0.%d" % i for i in range(1, 101)]
        many = join_groups(ns3, ip3, *burst)
        try:
            wait_for(lambda: all(g in listeners(bus) for g in burst), timeout=15, what="all 100 groups listed")
            commits = bus.status()["Applied"] - before
            print("a burst of 100 joins cost %d commits" % commits)
            assert commits <= 5, commits
        finally:
            many.kill()
        wait_for(lambda: not any(g in listeners(bus) for g in burst), timeout=15, what="the 100 groups left")
        assert bus.status()["Applied"] > applied

        # shoutd on host 2 dies: the leader withdraws its groups, and host 1 stops sending there.
        h2.kill()
        wait_for(lambda: GROUP not in listeners(bus), timeout=30, what="host 2's listener withdrawn")
        # The status shows the state; host 1's kernel follows in its reconciler's next pass.
        wait_for(lambda: GROUP not in vxlan_mdb(h1), timeout=5, what="host 1 no longer sending to host 2")
        assert "silent" in h1.read_log() + h3.read_log()
        h2.start(secret, peers=[h1.ip, h3.ip])
        wait_for(lambda: GROUP in listeners(bus), timeout=15, what="host 2's listener reported again")
    finally:
        joined.kill()
