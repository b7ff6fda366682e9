"""The heartbeat part of the benchmark (`bench.py --parts heartbeat`): four lab hosts.

How long the leader's followers go without hearing from it, which is what
decides whether they start an election (issue 12): the gaps between the
Raft messages the leader sends each follower, seen by tcpdump on the
leader's underlay (TCP segments with data on Raft connections; their
content is encrypted, their timing is not).  Heartbeats go every 0.1 s.

Twice: idle, and under the load that used to cost the cluster its leader:
containers starting on every host while the leader's host imports an image
of a few hundred MB again and again, and each fsync of the leader's shoutd
takes 0.6 to 1.8 s, as it did on the disk of the report (this machine's own
disk stays under 0.2 s; see tests/slowdisk.py).  Printed: median, p99 and
max of the gaps over all followers, and how many elections happened.
"""

import statistics
import time

from lab import IMAGE, ImageImports, Lab
from support import Capture

RAFT_PORT = 7380
NET = "hb"


def gaps(capture, leader, followers):
    """Every gap (s) between consecutive messages from the leader to each follower."""
    out = []
    for f in followers:
        stamps = sorted(capture.times(f.ip))
        out += [b - a for a, b in zip(stamps, stamps[1:])]
    return out


def watch(lab, leader, seconds, load):
    followers = [h for h in lab.hosts if h is not leader]
    capture = Capture(["nsenter", "--net=/run/netns/" + leader.name, "tcpdump", "-lni", "eth0", "-tt",
                       "tcp port %d and src host %s and (tcp[tcpflags] & tcp-push != 0)" % (RAFT_PORT, leader.ip)])
    runs = 0
    try:
        if load:
            leader.slow_disk(0.6, 1.8)
            with ImageImports(leader) as imports:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for h in lab.hosts:
                        name = "hb%d-%s" % (runs, h.name)
                        h.docker("run", "-d", "--name", name, "--network", NET, IMAGE, "sleep", "600", check=False)
                        h.docker("rm", "-f", name, check=False)
                    runs += 1
            leader.slow_disk(0)
            load = "%d rounds of containers on %d hosts, %d imports of 400 MB, fsync 0.6-1.8 s" % (
                runs, len(lab.hosts), len(imports.codes))
        else:
            time.sleep(seconds)  # idle: only heartbeats
    finally:
        capture.stop()
    return gaps(capture, leader, followers), load


def run(seconds=20):
    lab = Lab(4, prefix="hb", slow_disks=True)
    try:
        lab.up()
        lab.start_shoutd()
        lab.create_network(NET)
        leader = lab.leader()
        before = sum(len(h.raft_events()[0]) for h in lab.hosts)
        out = {}
        for name, load in (("idle", False), ("busy", True)):
            g, what = watch(lab, leader, seconds, load)
            out[name] = (g, what)
        out["elections"] = sum(len(h.raft_events()[0]) for h in lab.hosts) - before
        return out
    finally:
        lab.down()


def report(figures):
    for name in ("idle", "busy"):
        g, what = figures[name]
        if not g:
            print("heartbeat gaps, %s: no messages seen" % name)
            continue
        g.sort()
        print("heartbeat gaps on the leader, %s%s: median %.3f s, p99 %.3f s, max %.3f s (%d gaps)"
              % (name, " (%s)" % what if what else "", statistics.median(g), g[int(len(g) * 0.99)], g[-1], len(g)))
    print("elections during the heartbeat part: %d" % figures["elections"])
