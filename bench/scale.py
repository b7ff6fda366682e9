"""Many shoutd daemons on one machine: what a cluster's size costs (issue 16).

    python3 bench/scale.py [--hosts 8,32] [--allocations 200] [--idle 10] [--all-voters]

For each size N: N real daemons, each in a network namespace of its own on
one underlay bridge (tests/hostlab.py), no Docker (the plugin API is driven
over each daemon's socket).  Three of them start as one cluster (the
voters); every other one starts alone and is added by AddPeer on a voter,
at most JOINS at once, and so joins as a replica (shoutd/roles.py).  With
--all-voters every daemon is given every other as a peer instead, and all
vote (shoutd before replicas).  From one run it prints:
- formed: from starting every daemon until each is a registered member;
- allocation latency (RequestAddress), median and p99, on the leader and on
  another host (a replica, if there are any);
- FDB: from an endpoint's CreateEndpoint on that host until its MAC is in
  the VXLAN FDB of every other host;
- failover: from kill -9 of the leader until that host's write is accepted
  again;
- idle CPU (% of one core) and RSS of the leader and of that host.
While forming, it also says on stderr when every daemon had started (each
registered alone) and when the AddPeer calls returned.
Not a test: nothing here asserts a time.  Needs root; the larger sizes need
minutes on a small machine.
"""

import argparse
import concurrent.futures
import os
import re
import signal
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from tests.hostlab import PluginError, World  # noqa: E402
from tests.support import docker_id, wait_for  # noqa: E402

POOL = "10.90.0.0/16"
VOTERS = 3
JOINS = 8               # AddPeer calls at once
BUS_CALL = ["call", "org.darkkitchen.Shoutd", "/org/darkkitchen/Shoutd", "org.darkkitchen.Shoutd"]
TICKS = os.sysconf("SC_CLK_TCK")


def is_replica(host):
    """Whether `host` started, or started again, as a replica (it logs whom it follows)."""
    return "replica of" in host.read_log(since=host.run_log_start)


def leader_of(hosts):
    """The host every running voter last logged as leader."""
    def agreed():
        last = set()
        for h in hosts:
            if is_replica(h):
                continue
            changes = re.findall(r"leader changed: (\S+) in term", h.read_log(since=h.run_log_start))
            last.add(changes[-1] if changes else None)
        return last.pop() if len(last) == 1 and None not in last else None
    member = wait_for(agreed, timeout=120, interval=0.5, what="a leader every host logged")
    return next(h for h in hosts if h.member == member)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS        # utime + stime


def idle(hosts, seconds):
    """{host: (% of one core, RSS MiB)} over `seconds` of doing nothing."""
    before = {h: cpu_seconds(h.pid()) for h in hosts}
    time.sleep(seconds)                 # the idle period measured
    return {h: (100.0 * (cpu_seconds(h.pid()) - before[h]) / seconds, h.rss_kib() / 1024.0) for h in hosts}


def latencies(host, pool, count):
    """Seconds each of `count` RequestAddress calls took on `host`, one after another."""
    took = []
    for _ in range(count):
        began = time.monotonic()
        host.plugin("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})
        took.append(time.monotonic() - began)
    return sorted(took)


def p(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def fdb_everywhere(hosts, vni, mac, began, timeout=60):
    """Seconds from `began` until `mac` is in every host's FDB of VXLAN device shx<vni> (polled in turn)."""
    waiting = list(hosts)
    while waiting:
        waiting = [h for h in waiting if mac not in h.netns("bridge fdb show dev shx%d" % vni, check=False).stdout]
        if time.monotonic() - began > timeout:
            raise RuntimeError("%s not in the FDB of %d hosts after %ds" % (mac, len(waiting), timeout))
    return time.monotonic() - began


def failover(hosts, pool, other):
    """(seconds from kill -9 of the leader until `other`'s write is accepted, the leader killed)."""
    leader = leader_of(hosts)
    began = time.monotonic()
    leader.kill()
    while True:
        try:
            other.plugin("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}}, timeout=30)
            return time.monotonic() - began, leader
        except PluginError:
            time.sleep(0.05)             # refused during the election: ask again


def print_cpu(spent, leader, voters):
    """Where an allocation's CPU goes (on stderr): the leader, each other voter, each replica, all daemons."""
    replicas = [spent[h] for h in spent if h is not leader and h not in voters]
    print("  CPU per allocation on the leader: %.2f ms on it, %.2f ms on another voter, %.2f ms on a replica, "
          "%.1f ms on all %d daemons" % (1000 * spent[leader], 1000 * statistics.mean([spent[h] for h in voters] or [0]),
                                         1000 * statistics.mean(replicas or [0]), 1000 * sum(spent.values()), len(spent)),
          file=sys.stderr, flush=True)


def form(world, secret, hosts, all_voters):
    """Start every daemon and make them one cluster; the seconds it took."""
    began = time.monotonic()
    if all_voters:
        for h in hosts:
            h.start(secret, peers=[o.ip for o in hosts if o is not h], wait=False)
        for h in hosts:
            h.wait_registered(timeout=600)
        return time.monotonic() - began
    voters, replicas = hosts[:VOTERS], hosts[VOTERS:]
    bus = world.bus()
    for h in voters:
        h.start(secret, bus if h is voters[0] else None, peers=[o.ip for o in voters if o is not h], wait=False)
    for h in replicas:
        h.start(secret, wait=False)
    for h in hosts:
        h.wait_registered(timeout=600)
    print("  started, each registered alone: %.1f s" % (time.monotonic() - began), file=sys.stderr, flush=True)
    # Once the leader recorded the voters, AddPeer makes replicas.
    wait_for(lambda: any("voters now " in h.read_log() for h in voters), timeout=60, what="the voters recorded")
    with concurrent.futures.ThreadPoolExecutor(JOINS) as pool:
        # An AddPeer that runs out of D-Bus time on a busy machine still completes: membership decides below.
        list(pool.map(lambda h: bus.busctl(*BUS_CALL, "AddPeer", "s", h.ip, check=False), replicas))
    print("  AddPeer calls returned: %.1f s" % (time.monotonic() - began), file=sys.stderr, flush=True)
    wait_for(lambda: len(bus.status()["Roles"]) == len(hosts), timeout=600, interval=0.5, what="every host a member")
    return time.monotonic() - began


def run(n, allocations, idle_seconds, all_voters):
    tmp = tempfile.mkdtemp(prefix="shoutd-scale-")
    world = World(tmp, subnet="198.23.0")
    try:
        secret = world.secret()
        hosts = [world.host() for _ in range(n)]
        formed = form(world, secret, hosts, all_voters or n <= VOTERS)
        leader = leader_of(hosts)
        other = hosts[-1] if hosts[-1] is not leader else hosts[-2]
        pool = leader.plugin("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": POOL, "Options": {},
                                                        "V6": False})["PoolID"]
        pids = {h: h.pid() for h in hosts}
        before = {h: cpu_seconds(pid) for h, pid in pids.items()}
        on_leader = latencies(leader, pool, allocations)
        spent = {h: (cpu_seconds(pid) - before[h]) / allocations for h, pid in pids.items()}
        print_cpu(spent, leader, [h for h in hosts if h is not leader and not is_replica(h)])
        on_other = latencies(other, pool, allocations)
        net = docker_id("scale")
        other.plugin("NetworkDriver.CreateNetwork", {"NetworkID": net, "Options": {"com.docker.network.generic": {}},
                                                     "IPv4Data": [{"AddressSpace": "shoutd", "Pool": POOL}]})
        vni = int(re.findall(r"VNI (\d+)", other.read_log())[-1])
        addr = other.plugin("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}})["Address"]
        began = time.monotonic()
        reply = other.plugin("NetworkDriver.CreateEndpoint", {"NetworkID": net, "EndpointID": docker_id("ep"),
                                                              "Interface": {"Address": addr}})
        fdb = fdb_everywhere([h for h in hosts if h is not other], vni, reply["Interface"]["MacAddress"], began)
        quiet = idle([leader, other], idle_seconds)
        took, _ = failover(hosts, pool, other)
        return {"formed": formed, "leader": on_leader, "other": on_other, "fdb": fdb, "failover": took,
                "idle": (quiet[leader], quiet[other])}
    finally:
        world.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="8,32", help="cluster sizes, comma-separated")
    ap.add_argument("--allocations", type=int, default=200, help="RequestAddress calls timed on each host")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idling measured")
    ap.add_argument("--all-voters", action="store_true", help="every host a voter (shoutd before replicas)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("scale.py needs root (network namespaces)")
    # `timeout` stops a size that does not form: take its namespaces and daemons down on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM) before the cluster formed"))
    print("(%s)" % ("every host a voter" if args.all_voters else "%d voters, the other hosts replicas" % VOTERS))
    print("| hosts | all registered after | allocation on the leader, median / p99 | on another host, median / p99 "
          "| endpoint MAC in every FDB | leader killed, writes again after | idle CPU, RSS: leader; other |")
    print("|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.hosts.split(",")]:
        r = run(n, args.allocations, args.idle, args.all_voters)
        (lc, lr), (fc, fr) = r["idle"]
        print("| %d | %.1f s | %.1f / %.1f ms | %.1f / %.1f ms | %.2f s | %.2f s | %.1f %%, %.0f MiB; %.1f %%, %.0f MiB |"
              % (n, r["formed"], 1000 * statistics.median(r["leader"]), 1000 * p(r["leader"], 0.99),
                 1000 * statistics.median(r["other"]), 1000 * p(r["other"], 0.99), r["fdb"], r["failover"],
                 lc, lr, fc, fr), flush=True)


if __name__ == "__main__":
    main()
