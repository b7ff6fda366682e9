"""Strangers on the Raft port: garbage, oversized frames and idle connections knock no host over.

The strangers run in a namespace of their own on the underlay, without the
cluster secret, as anyone who can reach TCP 7380 could.
"""

import subprocess
import sys
import threading
import time

import pytest

from ..support import sh, wait_for
from .history import call

pytestmark = pytest.mark.faults

GARBAGE = r"""
import os, socket, struct, sys, threading, time
target, seconds, budget = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
sent = [0] * 8
began = time.monotonic()
stop = began + seconds

def attack(i):
    kinds = [lambda: struct.pack("i", 0x7FFFFFFF) + os.urandom(65536),          # a 2 GiB frame announced
             lambda: struct.pack("i", 60000) + os.urandom(60000),               # plausible size, not Fernet
             lambda: os.urandom(65536)]                                         # no framing at all
    n = 0
    while time.monotonic() < stop:
        try:
            with socket.create_connection((target, 7380), timeout=2) as s:
                s.settimeout(2)
                while time.monotonic() < stop:
                    # Spread the budget over the whole time, as a steady stream.
                    ahead = sum(sent) - budget * (time.monotonic() - began) / seconds
                    if ahead > 0:
                        time.sleep(min(0.05, ahead * seconds / budget))   # pacing
                        continue
                    sent[i] += s.send(kinds[n % 3]())
        except OSError:
            n += 1
threads = [threading.Thread(target=attack, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(sent))
"""

IDLE = r"""
import resource, socket, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
target, count, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held = []
for _ in range(count):
    try:
        held.append(socket.create_connection((target, 7380), timeout=2))
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(hold)   # the connections stay open this long
"""


def stranger(cluster):
    """A namespace on the underlay with no secret: 198.21.0.99."""
    ns = cluster.world.underlay + "-x"
    cluster.world.extra_netns.append(ns)
    sh("ip netns add " + ns)
    sh("ip link add %s type veth peer name eth0 netns %s" % (ns, ns))
    sh("ip link set %s master %s up" % (ns, cluster.world.underlay))
    sh("ip -n %s addr add 198.21.0.99/24 dev eth0" % ns)
    sh("ip -n %s link set eth0 up" % ns)
    return ns


class Committer:
    """Allocates through `hosts` in turn, all along, and records how each call went."""

    def __init__(self, cluster, hosts, interval=0.2):
        self.cluster, self.hosts, self.interval = cluster, hosts, interval
        self.results = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)

    def _run(self):
        n = 0
        while not self._stop.is_set():
            host = self.hosts[n % len(self.hosts)]
            n += 1
            began = time.monotonic()
            outcome, _ = call(host.socket, "IpamDriver.RequestAddress", {"PoolID": self.cluster.pool, "Address": "",
                                                                         "Options": {}})
            self.results.append((began, outcome, time.monotonic() - began))
            time.sleep(self.interval)  # the pace of allocations

    def summary(self, seconds):
        """(allocations committed, slowest call in seconds), checking that calls went on all along."""
        oks = [r for r in self.results if r[1] == "ok"]
        slowest = max((r[2] for r in self.results), default=float("inf"))
        assert len(self.results) >= seconds / (self.interval + 1.0), "only %d calls in %ds" % (len(self.results),
                                                                                            seconds)
        return len(oks), slowest


def test_garbage_and_oversized_frames_leave_memory_flat_and_the_cluster_committing(cluster):
    target = cluster.leader()
    ns = stranger(cluster)
    for _ in range(200):                              # warm up: the state and the buffers settle
        target.plugin("IpamDriver.RequestAddress", {"PoolID": cluster.pool, "Address": "", "Options": {}})
    time.sleep(1.0)  # the warm-up settles before memory is measured
    rss_before = target.rss_kib()
    began = time.monotonic()
    with Committer(cluster, cluster.hosts) as committer:
        out = sh(["ip", "netns", "exec", ns, sys.executable, "-c", GARBAGE, target.ip, "60", str(200 << 20)],
                 timeout=120).stdout
    sent = int(out.split()[-1])
    rss_after = target.rss_kib()
    oks, slowest = committer.summary(time.monotonic() - began)
    print("strangers sent %.0f MB in %.0fs; the leader's RSS went %d -> %d KiB; %d of %d allocations committed "
          "meanwhile, the slowest in %.2fs" % (sent / 1e6, time.monotonic() - began, rss_before, rss_after, oks,
                                               len(committer.results), slowest))
    assert rss_after - rss_before < 10 * 1024, "RSS grew by %d KiB" % (rss_after - rss_before)
    assert oks >= 0.95 * len(committer.results) and slowest < 5.0
    assert all(h.bus.status()["Quorum"] for h in cluster.hosts)


def test_a_flood_of_idle_connections_leaves_the_port_bound_and_the_host_in_the_cluster(cluster):
    h1, h2, h3 = cluster.hosts
    # Host 1 with few descriptors, so that the flood would exhaust them without the guard; the
    # others connect to host 1 (PySyncObj: the higher address calls), so its port must stay bound.
    h1.stop()
    h1.start(cluster.secret, peers=[h2.ip, h3.ip], wrap=["prlimit", "--nofile=160:160"])
    ns = stranger(cluster)
    flood = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", IDLE, h1.ip, "1100", "15"],
                             stdout=subprocess.PIPE, text=True)
    try:
        opened = int(flood.stdout.readline() or 0)
        print("a stranger opened %d connections to host 1's Raft port" % opened)
        assert opened >= 1000, "the flood did not happen"
        with Committer(cluster, [h1]) as committer:
            time.sleep(5.0)  # host 1 serves for a while under the flood
        oks, slowest = committer.summary(5.0)
        print("meanwhile %d of %d allocations through host 1 committed, the slowest in %.2fs"
              % (oks, len(committer.results), slowest))
        assert oks >= 0.9 * len(committer.results) and slowest < 5.0
        # A peer that reconnects now must be accepted: the port is still bound.
        h2.kill()
        cluster.start(h2)
        wait_for(lambda: h1.bus.status()["Quorum"] and all(m[3] in ("leader", "connected", "self")
                                                           for m in h1.bus.status()["Members"]),
                 timeout=30, what="host 2 connected to host 1 again")
    finally:
        flood.kill()
        flood.wait()
    h1.plugin("IpamDriver.RequestAddress", {"PoolID": cluster.pool, "Address": "", "Options": {}})
    assert "%s:7380" % h1.ip in h1.netns("ss -Hltn").stdout, "the Raft port is still bound"
    assert "Traceback" not in h1.read_log()
