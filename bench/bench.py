"""shoutd benchmark: three lab hosts, figures from one run, printed as ratios.

    python3 bench/bench.py [--rounds 5] [--seconds 5]

1. TCP throughput container to container across hosts on a shoutd network,
   against (a) host-to-host TCP on the same underlay and (b) a hand-built
   kernel VXLAN + bridge between the same hosts.  Runs alternate, because the
   machine is noisy; each figure is the median of its rounds.
2. UDP multicast at 100 Mbit/s from host 1 to receivers on hosts 2 and 3: loss.
3. `docker run` time on a shoutd network against a local bridge network.
4. Resident memory and idle CPU of each shoutd daemon.
5. (--parts commit, no lab) Raft commit latency of three RaftNodes on
   loopback, proposed on the leader and on a follower: what every IPAM and
   endpoint call waits for; with the journal fsynced before each
   acknowledgement (journal_sync, the default) and without.
6. (--parts failover, no Docker) kill -9 of the leader of three daemons,
   20 times: time until a write succeeds again.
7. (--parts pruning, four lab hosts) multicast pruning: underlay bytes against
   flooding, join latency, the commits a burst of joins costs (pruning.py).
8. (--parts heartbeat, four lab hosts) the gaps between the leader's
   heartbeats, idle and while containers start everywhere and the leader's
   host imports a big image (heartbeat.py).

Not a test: nothing here asserts a time.  Needs root and the packages of
.ci/setup.
"""

import argparse
import os
import re
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
from lab import IMAGE, Lab, wait_for  # noqa: E402
from support import free_ports  # noqa: E402

RATE = re.compile(r"([\d.]+) Mbits/sec")
LOSS = re.compile(r"(\d+)/\s*(\d+) \(")
HAND_VNI = 99


def mbits(output):
    rates = RATE.findall(output)
    if not rates:
        raise RuntimeError("no iperf rate in: " + output)
    return float(rates[-1])


def host_to_host(h1, h2, seconds):
    return mbits(h1.netns("iperf", "-c", h2.ip, "-t", str(seconds), "-f", "m", timeout=seconds + 30).stdout)


def container_to_container(h1, client, server_ip, seconds):
    return mbits(h1.exec(client, "iperf", "-c", server_ip, "-t", str(seconds), "-f", "m",
                         timeout=seconds + 30).stdout)


def hand_built(lab):
    """A kernel VXLAN + bridge per host, by hand, used by Docker's bridge driver."""
    h1, h2 = lab.hosts[:2]
    for h, other, gw, ip in ((h1, h2, "10.99.0.1", "10.99.0.11"), (h2, h1, "10.99.0.254", "10.99.0.12")):
        h.netns("ip", "link", "add", "hb99", "type", "bridge")
        h.netns("ip", "link", "add", "hx99", "type", "vxlan", "id", str(HAND_VNI), "local", h.ip,
                "dstport", "4789", "dev", "eth0", "nolearning")
        h.netns("ip", "link", "set", "hx99", "master", "hb99", "mtu", "1450", "up")
        h.netns("ip", "link", "set", "hb99", "mtu", "1450", "up")
        h.netns("bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "hx99", "dst", other.ip)
        h.docker("network", "create", "-d", "bridge", "-o", "com.docker.network.bridge.name=hb99",
                 "-o", "com.docker.network.driver.mtu=1450", "--subnet", "10.99.0.0/24", "--gateway", gw, "hand")
        h.run("hand%d" % h.n, "hand", ip=ip)
    h2.exec("hand2", "sh", "-c", "iperf -s -D >/dev/null 2>&1")


def tcp(lab, rounds, seconds):
    h1, h2 = lab.hosts[:2]
    h2.netns("sh", "-c", "iperf -s -D >/dev/null 2>&1")
    h1.run("tc1", "bench")
    h2.run("ts2", "bench", "iperf", "-s")
    shout_ip = h2.container_ip("ts2", "bench")
    hand_built(lab)
    time.sleep(1)
    results = {"underlay": [], "shoutd": [], "hand": []}
    for _ in range(rounds):
        results["underlay"].append(host_to_host(h1, h2, seconds))
        results["shoutd"].append(container_to_container(h1, "tc1", shout_ip, seconds))
        results["hand"].append(container_to_container(h1, "hand1", "10.99.0.12", seconds))
    return {k: statistics.median(v) for k, v in results.items()}, results


def multicast(lab, seconds):
    h1, h2, h3 = lab.hosts
    for h in (h2, h3):
        h.run("mrx%d" % h.n, "bench", "iperf", "-u", "-s", "-B", "224.3.3.3", "-p", "5002")
    h1.run("mtx", "bench")
    time.sleep(1)
    h1.exec("mtx", "iperf", "-u", "-c", "224.3.3.3", "-p", "5002", "-T", "2", "-b", "100M", "-t", str(seconds),
            timeout=seconds + 30)
    time.sleep(2)
    out = {}
    for h in (h2, h3):
        reports = [(int(a), int(b)) for a, b in LOSS.findall(h.docker("logs", "mrx%d" % h.n).stdout)]
        lost, total = max(reports, key=lambda r: r[1])
        out["host%d" % h.n] = (lost, total, 100.0 * lost / total if total else float("nan"))
    return out


def docker_run(lab, rounds):
    h1 = lab.hosts[0]
    h1.docker("network", "create", "-d", "bridge", "localbr")
    times = {"shoutd": [], "bridge": []}
    for i in range(rounds):
        for kind, net in (("shoutd", "bench"), ("bridge", "localbr")):
            t = time.monotonic()
            h1.docker("run", "--rm", "--network", net, IMAGE, "true")
            times[kind].append(time.monotonic() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def commit_latency(count=200, durable=True):
    """Median and 90th percentile of submit() on a 3-node cluster with file journals, in ms.

    `durable` fsyncs the journal before anything is acknowledged (journal_sync,
    the default); without it a power loss may lose acknowledged entries.
    """
    import asyncio
    import secrets
    import tempfile

    from shoutd.raft import RaftNode

    addrs = ["127.0.0.1:%d" % p for p in free_ports(3)]
    secret = secrets.token_hex(16)
    tmp = tempfile.mkdtemp(prefix="shoutd-bench-", dir="/var/tmp")
    nodes = [RaftNode(a, addrs, secret, journal_file=os.path.join(tmp, "j%d" % i),
                      dump_file=os.path.join(tmp, "d%d" % i), durable=durable) for i, a in enumerate(addrs)]

    async def run():
        for n in nodes:
            n.attach(asyncio.get_running_loop())
        while not all(n.status.replayed and n.status.has_quorum for n in nodes):
            await asyncio.sleep(0.05)
        leader = next(n for n in nodes if n.status.role == "leader")
        follower = next(n for n in nodes if n is not leader)
        out = {}
        for role, node in (("leader", leader), ("follower", follower)):
            took = []
            for i in range(count):
                t = time.perf_counter()
                await node.submit({"op": "member_up", "node": "bench", "advertise": "10.0.%d.%d" % (i // 250, i % 250 + 1),
                                   "raft": "bench"})
                took.append((time.perf_counter() - t) * 1000)
            took.sort()
            out[role] = (statistics.median(took), took[int(len(took) * 0.9)])
        return out
    try:
        return asyncio.run(run())
    finally:
        for n in nodes:
            n.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


def failover(rounds=20):
    """kill -9 of the leader of three daemons, `rounds` times: seconds until a write succeeds again.

    Writes go to a surviving host every 20 ms from just before the kill; the
    time is from the kill to the first write acknowledged after it.
    """
    import tempfile

    from tests.hostlab import World

    tmp = tempfile.mkdtemp(prefix="shoutd-bench-")
    world = World(tmp, subnet="198.23.0")
    try:
        secret = world.secret()
        hosts = [world.host() for _ in range(3)]
        for h in hosts:
            h.bus = world.bus()
        for h in hosts:
            h.start(secret, peers=[o.ip for o in hosts if o is not h], wait=False)
        for h in hosts:
            h.wait_registered(60)
        pool = hosts[0].plugin("IpamDriver.RequestPool", {"AddressSpace": "shoutd", "Pool": "10.99.0.0/16",
                                                          "Options": {}, "V6": False})["PoolID"]
        times = []
        for _ in range(rounds):
            leader_addr = wait_for(lambda: (lambda st: st["Leader"] if st["Quorum"] else None)(hosts[0].bus.status()
                                   if hosts[0].running() else hosts[1].bus.status()), timeout=30)
            leader = next(h for h in hosts if h.member == leader_addr)
            other = next(h for h in hosts if h is not leader)
            killed = time.monotonic()
            leader.kill()
            while True:
                try:
                    other.plugin("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "", "Options": {}},
                                 timeout=30)
                    break
                except Exception:          # noqa: BLE001 - refused while the election runs
                    time.sleep(0.02)
            times.append(time.monotonic() - killed)
            leader.start(secret, peers=[o.ip for o in hosts if o is not leader])
        return times
    finally:
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)


def idle_cpu(lab, seconds=10):
    """Share of one core each shoutd uses while nothing happens (Raft heartbeats, periodic passes)."""
    def ticks(h):
        with open("/proc/%d/stat" % h.shoutd.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])          # utime + stime
    before = {h.n: ticks(h) for h in lab.hosts}
    time.sleep(seconds)
    hz = os.sysconf("SC_CLK_TCK")
    return {"host%d" % h.n: 100.0 * (ticks(h) - before[h.n]) / hz / seconds for h in lab.hosts}


def memory(lab):
    """VmRSS of each shoutd (nsenter execs it, so the Popen pid is shoutd's)."""
    rss = {}
    for h in lab.hosts:
        with open("/proc/%d/status" % h.shoutd.pid) as f:
            rss["host%d" % h.n] = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024
    return rss


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--kills", type=int, default=20, help="leader kills for the failover figure")
    p.add_argument("--joins", type=int, default=5, help="joins for the pruning part's join latency")
    p.add_argument("--parts", default="tcp,multicast,run,commit,failover,pruning,heartbeat",
                   help="comma-separated: tcp, multicast, run, commit, failover, pruning, heartbeat")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    figures = {}
    if "commit" in parts:
        figures["commit"] = {"fsync": commit_latency(durable=True), "no fsync": commit_latency(durable=False)}
    if "failover" in parts:
        figures["failover"] = failover(args.kills)
    if parts & {"tcp", "multicast", "run"}:
        figures.update(in_the_lab(args, parts))
    if "pruning" in parts:
        import pruning               # here: it needs tcpdump, which the other parts do not
        figures["pruning"] = pruning.run(args.seconds * 2, args.joins)
    if "heartbeat" in parts:
        import heartbeat             # here: it needs tcpdump, which the other parts do not
        figures["heartbeat"] = heartbeat.run(args.seconds * 4)
    report(args, **figures)


def in_the_lab(args, parts):
    out = {}
    lab = Lab(3, prefix="bn")
    try:
        lab.up()
        lab.start_shoutd()
        lab.create_network("bench")
        if "tcp" in parts:
            out["med"], out["raw"] = tcp(lab, args.rounds, args.seconds)
        if "multicast" in parts:
            out["mc"] = multicast(lab, args.seconds * 2)
        if "run" in parts:
            out["run"] = docker_run(lab, args.rounds * 2)
        out["mem"] = memory(lab)
        out["idle"] = idle_cpu(lab)
    finally:
        lab.down()
    return out


def report(args, med=None, raw=None, mc=None, run=None, mem=None, idle=None, commit=None, failover=None,
           pruning=None, heartbeat=None):
    print("\n== shoutd benchmark (%d rounds of %d s, alternating) ==" % (args.rounds, args.seconds))
    if heartbeat:
        import heartbeat as part
        part.report(heartbeat)
    if pruning:
        import pruning as part
        part.report(pruning)
    if raw:
        for k, v in raw.items():
            print("TCP %-8s Mbit/s: %s (median %.0f)" % (k, ", ".join("%.0f" % x for x in v), med[k]))
        print("TCP shoutd / host-to-host underlay   : %.3f  (goal >= 0.85)" % (med["shoutd"] / med["underlay"]))
        print("TCP shoutd / hand-built VXLAN+bridge : %.3f  (goal >= 0.97)" % (med["shoutd"] / med["hand"]))
    for host, (lost, total, pct) in (mc or {}).items():
        print("multicast 100 Mbit/s to %s: %d/%d lost = %.3f%%  (goal 0)" % (host, lost, total, pct))
    if run:
        print("docker run median: shoutd %.3f s, local bridge %.3f s, ratio %.2f  (goal <= 1.3)"
              % (run["shoutd"], run["bridge"], run["shoutd"] / run["bridge"]))
    if mem:
        print("shoutd resident memory: " + ", ".join("%s %.1f MiB" % kv for kv in sorted(mem.items())))
    if idle:
        print("shoutd idle CPU (% of a core): " + ", ".join("%s %.1f" % kv for kv in sorted(idle.items())))
    for sync, roles in (commit or {}).items():
        for role, (median, p90) in roles.items():
            print("Raft commit (%s) proposed on the %-8s: median %.1f ms, p90 %.1f ms" % (sync, role, median, p90))
    if failover:
        print("failover after kill -9 of the leader, %d times: median %.2f s, max %.2f s (all: %s)"
              % (len(failover), statistics.median(failover), max(failover), ", ".join("%.2f" % t for t in failover)))


if __name__ == "__main__":
    main()
