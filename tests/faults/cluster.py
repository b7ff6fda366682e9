"""A three-host shoutd cluster in network namespaces, and the nemeses that hurt it.

Real daemons (tests/hostlab.py), no Docker: the workload drives the plugin
API over each host's socket.  Every nemesis draws its schedule from one
seed, which the test prints, so a failing run can be repeated exactly with
SHOUTD_FAULT_SEED=<seed>.
"""

import os
import random
import signal
import time

from ..hostlab import World
from ..slowdisk import set_delay
from ..support import wait_for

POOL = "10.88.0.0/16"
RAFT_PORT = 7380
FEED_PORT = 7381        # where voters serve replicas (shoutd/raft/feed.py)
BUS_CALL = ["call", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd", "org.darkkitchen.Shoutd"]


def seed():
    value = int(os.environ.get("SHOUTD_FAULT_SEED") or random.SystemRandom().randrange(1, 1 << 30))
    print("nemesis seed: %d (repeat with SHOUTD_FAULT_SEED=%d)" % (value, value))
    return value


class Cluster:
    def __init__(self, tmp, size=3, previous=None, replicas=0):
        """`size` voters, then `replicas` hosts that AddPeer makes replicas (shoutd/roles.py)."""
        self.world = World(tmp, subnet="198.21.0")
        self.secret = self.world.secret()
        self.hosts = [self.world.host() for _ in range(size + replicas)]
        self.voters, self.replicas = self.hosts[:size], self.hosts[size:]
        self.partitioned = set()
        for h in self.hosts:
            h.bus = self.world.bus()
            # The tree of shoutd each host runs: this one, or `previous` (an older release, for upgrades).
            h.tree = previous
        self.start(*self.hosts)
        if self.replicas:
            wait_for(lambda: any("voters now " in h.read_log() for h in self.voters), timeout=30,
                     what="the voters recorded, so that AddPeer makes replicas")
            for h in self.replicas:
                self.voters[0].bus.busctl(*BUS_CALL, "AddPeer", "s", h.ip)
                h.wait_log("registered;", times=2, timeout=60)
        self.pool = self.hosts[0].plugin("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": POOL,
                                                                   "Options": {}, "V6": False})["PoolID"]

    def close(self):
        self.heal()
        self.world.close()

    # -- processes -------------------------------------------------------------

    def start(self, *hosts, wait=True):
        for h in hosts:
            # Voters start with each other as peers; a replica alone, until AddPeer (then from members.json).
            peers = [o.ip for o in self.voters if o is not h] if h in self.voters else []
            if not h.running() and h.tree is not None:
                h.start(self.secret, peers=peers, wait=False, tree=h.tree)
            elif not h.running():
                # This tree runs the test build whose disk a nemesis can slow down (tests/slowdisk.py).
                h.start(self.secret, peers=peers, wait=False,
                        module="tests.slowdisk", env={"SHOUTD_TEST_FSYNC_DELAY": self._delay_file(h)})
        if wait:
            for h in hosts:
                h.wait_registered(timeout=60)

    def kill(self, *hosts):
        for h in hosts:
            h.kill()

    def leader(self, among=None):
        """The host that the others follow, once one is elected and known to all of `among`."""
        among = among or [h for h in self.voters if h.running() and h not in self.partitioned]

        def agreed():
            leaders = set()
            for h in among:
                try:
                    leaders.add(h.bus.status()["Leader"])
                except AssertionError:
                    return None
            return leaders.pop() if len(leaders) == 1 and "" not in leaders else None
        member = wait_for(agreed, timeout=30, what="an agreed leader")
        return next(h for h in self.hosts if h.member == member)

    def slow_disk(self, host, seconds):
        """From now on each fsync of `host`'s shoutd takes `seconds` longer (0: its disk is well again)."""
        set_delay(self._delay_file(host), seconds)

    @staticmethod
    def _delay_file(host):
        return os.path.join(host.dir, "fsync-delay")

    def pause(self, host, seconds):
        host.signal(signal.SIGSTOP)
        time.sleep(seconds)  # the pause is the nemesis
        host.signal(signal.SIGCONT)

    # -- the network -------------------------------------------------------------

    def partition(self, host, raft_only=True):
        """Cut `host` off from the others (its own firewall drops their traffic both ways)."""
        match = tuple("-p tcp --%s %d" % (way, port) for port in (RAFT_PORT, FEED_PORT) for way in ("dport", "sport"))
        for other in self.hosts:
            if other is host:
                continue
            for rule in (match if raft_only else ("",)):
                host.netns("iptables -w -I INPUT -s %s %s -j DROP" % (other.ip, rule))
                host.netns("iptables -w -I OUTPUT -d %s %s -j DROP" % (other.ip, rule))
        self.partitioned.add(host)

    def heal(self):
        for h in self.partitioned:
            h.netns("iptables -w -F INPUT", check=False)
            h.netns("iptables -w -F OUTPUT", check=False)
        self.partitioned = set()

    # -- the outcome ---------------------------------------------------------------

    def converged(self, timeout=60):
        """Wait until every host has applied the same log; return each host's address set."""
        last = {}

        def same():
            try:
                for h in self.hosts:
                    st = h.bus.status()
                    last[h.name] = (st["Applied"], st["StateDigest"], st["Term"], st["Leader"], st["Quorum"],
                                    st["CommitIndex"], st["LastApplied"])
            except AssertionError as e:
                last["error"] = str(e)[-300:]
                return False
            return len({v[:2] for k, v in last.items() if k != "error"}) == 1
        try:
            wait_for(same, timeout=timeout, what="every host to apply the same log")
        except AssertionError as e:
            raise AssertionError("%s; last seen (applied, digest, term, leader, quorum, commit index, last applied):"
                                 " %s" % (e, last)) from None
        return {h.name: {a[0] for a in h.bus.network(self.pool)["Addresses"]} for h in self.hosts}

    def raft_status(self, host):
        """PySyncObj's own view of `host` (log length, indexes per peer), asked with the secret."""
        import subprocess
        import sys
        script = ("import sys, pprint; from pysyncobj.utility import TcpUtility; "
                  "pprint.pprint(TcpUtility(password=open(sys.argv[2]).read().strip(), timeout=5)"
                  ".executeCommand(sys.argv[1], ['status']))")
        res = subprocess.run(["ip", "netns", "exec", host.name, sys.executable, "-c", script, host.member,
                              self.secret], capture_output=True, text=True, timeout=30)
        return res.stdout + res.stderr

    def logs(self):
        return [(h.name, h.read_log()[-8000:]) for h in self.hosts]
