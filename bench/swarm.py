"""Swarm services on shoutd against Docker's overlay: three lab hosts in a swarm, figures from one run.

    python3 bench/swarm.py [--rounds 3] [--seconds 5] [--engine 20.10|28.5.2] [--only tcp|services|multicast]

1. TCP throughput between service tasks on two nodes, on a swarm network of
   shoutd's (darkkitchen/shoutd:latest) and on an overlay network, against
   host-to-host TCP on the same underlay.  Runs alternate, because
   the machine is noisy; each figure is the median of its rounds, and the
   ratio shoutd / overlay the median of each round's own ratio (its two
   runs back to back, in turn one first and the other).
2. A global service of three tasks, on each network: the time from
   `docker service create` until every task runs, and from `docker service
   rm` until every task is gone.
3. Scaling a replicated service from 0 to 12 tasks, on each network.
4. UDP multicast at 100 Mbit/s from a task on node 1 to the tasks of a
   service on nodes 2 and 3: what arrives (the overlay carries no multicast:
   moby/libnetwork#552).

Not a test: nothing here asserts a time.  Needs root and the packages of
.ci/setup.
"""

import argparse
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)
from bench import LOSS, container_to_container, host_to_host  # noqa: E402
from engines import ENGINES  # noqa: E402
from lab import IMAGE, Lab, wait_for  # noqa: E402

PLUGIN = "darkkitchen/shoutd:latest"
NETWORKS = {"shoutd": PLUGIN, "overlay": "overlay"}


def running(lab, service):
    return sum(len(h.tasks(service)) for h in lab.hosts)


def service(host, name, network, *command, on=None, off=None, mode=("--replicas", "1")):
    """A dnsrr service on `network`, placed on node `on` or anywhere but `off`."""
    where = ["--constraint", "node.id==" + on] if on else ["--constraint", "node.id!=" + off] if off else []
    host.docker("service", "create", "-d", "--name", name, *mode, "--endpoint-mode", "dnsrr", "--network", network,
                *where, IMAGE, *command)


def task(host, name):
    """The container of `name`'s task on `host`, once it runs."""
    return wait_for(lambda: host.tasks(name), timeout=120, what="a task of %s on %s" % (name, host.name))[0]


def timed(action, until, timeout=180):
    began = time.monotonic()
    action()
    wait_for(until, timeout=timeout, interval=0.1, what="the swarm")
    return time.monotonic() - began


def tcp(lab, rounds, seconds):
    h1, h2 = lab.hosts[:2]
    h2.netns("sh", "-c", "iperf -s -D >/dev/null 2>&1")
    servers, clients = {}, {}
    for kind in NETWORKS:
        service(h1, "tc-" + kind, "b-" + kind, "sleep", "1d", on=h1.node_id())
        service(h1, "ts-" + kind, "b-" + kind, "iperf", "-s", on=h2.node_id())
        clients[kind] = task(h1, "tc-" + kind)
        servers[kind] = h2.container_ip(task(h2, "ts-" + kind), "b-" + kind)
    time.sleep(1)
    results = {"underlay": []}
    results.update({kind: [] for kind in NETWORKS})
    ratios = []
    for i in range(rounds):
        results["underlay"].append(host_to_host(h1, h2, seconds))
        # The two networks back to back, first one then the other first: a drift of the machine's speed
        # during the run then weighs on both alike, and the round's ratio compares like with like.
        for kind in list(servers) if i % 2 == 0 else list(servers)[::-1]:
            results[kind].append(container_to_container(h1, clients[kind], servers[kind], seconds))
        ratios.append(results["shoutd"][-1] / results["overlay"][-1])
    for kind in NETWORKS:
        h1.docker("service", "rm", "tc-" + kind, "ts-" + kind)
    return {k: statistics.median(v) for k, v in results.items()}, ratios


def services(lab, rounds):
    h1, n = lab.hosts[0], len(lab.hosts)
    out = {}
    for kind in NETWORKS:
        up, down, scale = [], [], []
        for i in range(rounds):
            name = "g%s%d" % (kind[0], i)
            up.append(timed(lambda: h1.docker("service", "create", "-d", "--name", name, "--mode", "global",
                                              "--endpoint-mode", "dnsrr", "--network", "b-" + kind, IMAGE,
                                              "sleep", "1d"),
                            lambda: running(lab, name) == n))
            down.append(timed(lambda: h1.docker("service", "rm", name), lambda: running(lab, name) == 0))
            name = "r%s%d" % (kind[0], i)
            h1.docker("service", "create", "-d", "--name", name, "--replicas", "0", "--endpoint-mode", "dnsrr",
                      "--network", "b-" + kind, IMAGE, "sleep", "1d")
            scale.append(timed(lambda: h1.docker("service", "scale", "-d", name + "=12"),
                               lambda: running(lab, name) == 12))
            h1.docker("service", "rm", name)
            wait_for(lambda: running(lab, name) == 0, timeout=120, what="%s gone" % name)
        out[kind] = {"up": statistics.median(up), "down": statistics.median(down), "scale": statistics.median(scale)}
    return out


def multicast(lab, seconds):
    h1, h2, h3 = lab.hosts
    out = {}
    for kind in NETWORKS:
        service(h1, "mrx-" + kind, "b-" + kind, "iperf", "-u", "-s", "-B", "224.3.3.4", "-p", "5003",
                off=h1.node_id(), mode=("--mode", "global"))
        service(h1, "mtx-" + kind, "b-" + kind, "sleep", "1d", on=h1.node_id())
        receivers = {h.n: task(h, "mrx-" + kind) for h in (h2, h3)}
        sender = task(h1, "mtx-" + kind)
        time.sleep(2)
        h1.exec(sender, "iperf", "-u", "-c", "224.3.3.4", "-p", "5003", "-T", "2", "-b", "100M", "-t",
                str(seconds), timeout=seconds + 30)
        time.sleep(2)
        for h in (h2, h3):
            reports = [(int(a), int(b)) for a, b in LOSS.findall(h.docker("logs", receivers[h.n]).stdout)]
            out[kind, h.n] = max(reports, key=lambda r: r[1]) if reports else None
        h1.docker("service", "rm", "mrx-" + kind, "mtx-" + kind)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--engine", default="20.10", choices=sorted(ENGINES))
    p.add_argument("--only", choices=("tcp", "services", "multicast"), help="run this part alone")
    args = p.parse_args()
    part = lambda name: args.only in (None, name)  # noqa: E731
    with Lab(3, prefix="bs", engine=ENGINES[args.engine], managed_plugin=True) as lab:
        lab.swarm()
        for h in lab.hosts:
            wait_for(lambda h=h: PLUGIN in h.docker("plugin", "ls").stdout, timeout=60, what="the plugin")
        for kind, driver in NETWORKS.items():
            lab.hosts[0].docker("network", "create", "-d", driver, "--attachable", "b-" + kind)
        print("swarm services, Docker %s, 3 nodes, one run (%d rounds)" % (args.engine, args.rounds))
        if part("tcp"):
            rates, ratios = tcp(lab, args.rounds, args.seconds)
            print("TCP, task to task across nodes (Mbit/s, median):")
            for kind in ("underlay",) + tuple(NETWORKS):
                print("  %-8s %8.0f   %.2f of the underlay" % (kind, rates[kind], rates[kind] / rates["underlay"]))
            print("  shoutd / overlay: %.2f (median of the rounds' own ratios; rounds %s)"
                  % (statistics.median(ratios), " ".join("%.2f" % r for r in ratios)))
        if part("services"):
            times = services(lab, args.rounds)
            print("services (s, median): global service of 3 up / removed, 0 -> 12 replicas")
            for kind, t in times.items():
                print("  %-8s %6.2f  %6.2f  %6.2f" % (kind, t["up"], t["down"], t["scale"]))
            print("  shoutd / overlay: %.2f  %.2f  %.2f" % tuple(times["shoutd"][k] / times["overlay"][k]
                                                              for k in ("up", "down", "scale")))
        if part("multicast"):
            got = multicast(lab, args.seconds)
            print("multicast, 100 Mbit/s from a task on node 1 to a global service's tasks (lost / sent, per node):")
            for kind in NETWORKS:
                print("  %-8s %s" % (kind, "  ".join("node %d: %s" % (n, "%d / %d" % got[kind, n] if got[kind, n]
                                                                       else "nothing arrived") for n in (2, 3))))


if __name__ == "__main__":
    main()
