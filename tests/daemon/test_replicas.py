"""Replicas through real daemons (issue 16): a host beyond three voters joins as a replica and works as a voter does.

Four netns hosts run shoutd without Docker; containers are endpoints made
through the plugin API (hostlab.container), with real veths and VXLAN.
"""

import os
import re
import time

from ..hostlab import container
from ..support import join_groups, sh, wait_for
from .test_dbus import CALL
from .test_multicast import GROUP, listeners


def followed(host):
    """The voter (its underlay address) whose feed the replica `host` follows now, as its log says."""
    found = re.findall(r"replica follows voter (\S+):\d+", host.read_log())
    return found[-1] if found else None


def reaches(ns, ip):
    return sh("ip netns exec %s busybox ping -c 1 -W 1 %s" % (ns, ip), check=False).returncode == 0


def three_voters_and_a_replica(world, extra=()):
    """(secret, voters, replica): three hosts form the cluster, a fourth joins by AddPeer and so as a replica."""
    secret = world.secret()
    hosts = [world.host() for _ in range(4)]
    voters, replica = hosts[:3], hosts[3]
    for h in voters:
        h.start(secret, world.bus(), peers=[o.ip for o in voters if o is not h], wait=False, extra=extra)
    for h in voters:
        h.wait_registered()
    wait_for(lambda: any("voters now 198.20.0.1:7380, 198.20.0.2:7380, 198.20.0.3:7380" in h.read_log()
                         for h in voters), timeout=30, what="the leader's record of the voters")
    replica.start(secret, world.bus(), extra=extra)          # a lone one-node cluster, until asked
    voters[0].bus.busctl(*CALL, "AddPeer", "s", replica.ip)
    replica.wait_log("registered;", times=2)                  # alone, then as a replica through a voter
    return secret, voters, replica


def test_a_host_beyond_three_voters_joins_as_a_replica_follows_writes_and_outlives_its_voter(world):
    secret, voters, replica = three_voters_and_a_replica(world)
    hosts = voters + [replica]
    replica.wait_log("starting again in place")
    everyone = {h.member: "voter" for h in voters}
    everyone[replica.member] = "replica"
    for h in hosts:
        wait_for(lambda h=h: h.bus.status()["Roles"] == everyone, what="the roles as %s shows them" % h.name)
    wait_for(lambda: replica.bus.status()["Ready"], what="the replica ready")
    kept = sorted(os.listdir(os.path.join(replica.dir, "state")))
    assert not [f for f in kept if f.startswith("raft.")], "a replica keeps no Raft journal: %s" % kept

    # A network made on the replica works everywhere.
    pool = replica.plugin("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "10.67.0.0/24",
                                                     "Options": {}, "V6": False})["PoolID"]
    nets = {}
    for h in hosts:
        nets[h.n] = "%064x" % (100 + h.n)
        h.plugin("NetworkDriver.CreateNetwork", {"NetworkID": nets[h.n], "Options": {"com.docker.network.generic": {}},
                                                 "IPv4Data": [{"AddressSpace": "shoutd", "Pool": "10.67.0.0/24"}]})
    r1, r1_ip = container(world, replica, pool, nets[replica.n], "r1")
    v1, v1_ip = container(world, voters[0], pool, nets[voters[0].n], "v1")
    wait_for(lambda: reaches(r1, v1_ip) and reaches(v1, r1_ip), what="the replica's container and a voter's")

    # Its voter dies: it follows another, its container stays connected, and it allocates again.
    gone = wait_for(lambda: followed(replica), what="the voter the replica follows")
    victim = next(h for h in voters if h.ip == gone)
    victim.kill()
    wait_for(lambda: followed(replica) not in (None, gone), timeout=30, what="the replica following another voter")
    survivor = next(h for h in voters if h is not victim)
    s1, s1_ip = container(world, survivor, pool, nets[survivor.n], "s1")
    r2, r2_ip = container(world, replica, pool, nets[replica.n], "r2")
    assert len({r1_ip, v1_ip, s1_ip, r2_ip}) == 4
    wait_for(lambda: reaches(r1, s1_ip) and reaches(r2, s1_ip) and reaches(s1, r2_ip),
             what="the replica's containers, old and new, and a surviving voter's")

    # A restart of the replica: back as a replica, from the state whole, still connected.
    replica.stop()
    replica.start(secret)
    wait_for(lambda: replica.bus.status()["Roles"] == everyone, what="the replica's roles after its restart")
    assert reaches(r1, s1_ip)

    # AddPeer works on a replica too: it runs on its voter, and the new host joins as a replica.
    fifth = world.host().start(secret, world.bus())
    replica.bus.busctl(*CALL, "AddPeer", "s", fifth.ip)
    everyone[fifth.member] = "replica"
    wait_for(lambda: survivor.bus.status()["Roles"] == everyone, what="the fifth host a replica")
    refused = replica.bus.busctl(*CALL, "AddPeer", "s", fifth.ip, check=False)
    assert refused.returncode != 0 and "already a member" in refused.stderr, refused.stderr


def test_a_voter_lost_for_good_is_replaced_by_a_replica_without_anyone_acting(world):
    fast = ["--voter-lost-after", "5"]
    secret, voters, replica = three_voters_and_a_replica(world, extra=fast)
    leader = voters[0].bus.status()["Leader"]
    victim = next(h for h in voters if h.member != leader)
    victim.kill()
    replica.wait_log("promoted to voter", timeout=30)
    replica.wait_log("registered;", times=3, timeout=30)        # again, as a voter with a journal of its own
    survivors = [h for h in voters if h is not victim]
    now = {h.member: "voter" for h in survivors + [replica]}
    now[victim.member] = "replica"                              # a member still, voting no more
    wait_for(lambda: all(h.bus.status()["Roles"] == now for h in survivors + [replica]), timeout=30,
             what="the replica voting in the lost voter's place")
    assert sorted(m[0] for m in replica.bus.status()["Members"]) == sorted(now)
    # The lost voter comes back: it finds it votes no more, and follows as a replica.
    victim.start(secret, wait=False, extra=fast)
    victim.wait_log("taken off the voters while it was away", timeout=45)
    victim.wait_log("replica follows voter", timeout=30)
    wait_for(lambda: victim.bus.status()["Roles"] == now and victim.bus.status()["Ready"], timeout=30,
             what="the lost voter back as a replica")
    # Fault tolerance is back: with a second voter down, the other two and the promoted host still commit.
    other = next(h for h in survivors if h.member != replica.bus.status()["Leader"])
    other.kill()
    pool = replica.plugin("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "10.68.0.0/24",
                                                     "Options": {}, "V6": False}, timeout=30)
    assert pool["Pool"] == "10.68.0.0/24"


def test_a_replica_that_dies_loses_its_multicast_listeners_and_one_that_moves_keeps_them(world):
    secret, voters, replica = three_voters_and_a_replica(world)
    hosts = voters + [replica]
    pool = voters[0].plugin("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "10.69.0.0/24",
                                                       "Options": {}, "V6": False})["PoolID"]
    nets = {}
    for h in hosts:
        nets[h.n] = "%064x" % (200 + h.n)
        h.plugin("NetworkDriver.CreateNetwork", {"NetworkID": nets[h.n], "Options": {"com.docker.network.generic": {}},
                                                 "IPv4Data": [{"AddressSpace": "shoutd", "Pool": "10.69.0.0/24"}]})
    ns, ip = container(world, replica, pool, nets[replica.n], "m4")
    bus = voters[0].bus
    joined = join_groups(ns, ip, GROUP)
    try:
        where = "(%s)" % replica.ip
        wait_for(lambda: any(where in h for h in listeners(bus).get(GROUP, [])), timeout=15,
                 what="the replica listed for " + GROUP)
        # Its voter dies: the replica moves to another, which serves it, so its groups stay.
        gone = wait_for(lambda: followed(replica), what="the voter the replica follows")
        moved = next(h for h in voters if h.ip == gone)
        moved.kill()
        wait_for(lambda: followed(replica) not in (None, gone), timeout=30, what="the replica following another")
        survivor = next(h for h in voters if h is not moved)
        time.sleep(12)                    # longer than multicast.SILENT_AFTER
        assert any(where in h for h in listeners(survivor.bus).get(GROUP, [])), "a replica that moved keeps them"
        # The replica dies: the voter it followed withdraws its groups once no voter serves it.
        replica.kill()
        wait_for(lambda: GROUP not in listeners(survivor.bus), timeout=40, what="the dead replica's groups withdrawn")
        assert "served by no voter" in "".join(h.read_log() for h in voters)
    finally:
        joined.kill()
