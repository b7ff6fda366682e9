"""The pruning part of the benchmark (`bench.py --parts pruning`): four lab hosts.

1. A 100 Mbit/s group from host 1 with listeners on k = 1, 2, 3 of the other
   three hosts, on a pruned network and on a flooding one, in turn: the bytes
   host 1's underlay sends, pruned as a ratio of flooded (the goal is k/3),
   and the loss at the listeners.
2. Join latency: from a new listener's IGMP report to its first packet, as
   tcpdump sees both on its veth, over a few joins.
3. A burst of 100 joins in one container: how many commits it cost, and how
   fast they went.
"""

import json
import re
import shutil
import statistics
import time

from lab import Lab, wait_for
from support import Capture, iperf_listening, iperf_summary

GROUP = "239.20.0.1"
PORT = "5020"


def tx_bytes(host):
    out = json.loads(host.netns("ip", "-j", "-s", "link", "show", "eth0").stdout)[0]
    return out["stats64"]["tx"]["bytes"]


def vni(host, network):
    """The VNI of a shoutd network, from its bridge's alias (the reconciler names the network there)."""
    for link in json.loads(host.netns("ip", "-j", "-d", "link", "show", "type", "bridge").stdout):
        if re.search(r"network %s VNI (\d+)" % re.escape(network), link.get("ifalias", "")):
            return int(re.search(r"VNI (\d+)", link["ifalias"]).group(1))
    raise RuntimeError("no bridge for network %s" % network)


def listeners_known(sender, vni_, k):
    out = sender.netns("bridge", "mdb", "show", "dev", "shx%d" % vni_).stdout
    return sum(1 for line in out.splitlines() if (" grp %s " % GROUP) in (line + " ")) == k


def stream(lab, network, k, seconds):
    """(bytes host 1 sent, [(lost, total)] at the k listeners) for one run on `network`."""
    h1, others = lab.hosts[0], lab.hosts[1:]
    names = []
    for h in others[:k]:
        name = "%s-rx%d" % (network, h.n)
        h.run(name, network, "iperf", "-u", "-s", "-B", GROUP, "-p", PORT)
        wait_for(lambda h=h, name=name: iperf_listening(h.docker("logs", name).stdout), what=name)
        names.append((h, name))
    if network == "pruned":
        wait_for(lambda: listeners_known(h1, vni(h1, network), k), timeout=10, what="host 1 to learn %d" % k)
    before = tx_bytes(h1)
    h1.exec("%s-tx" % network, "iperf", "-u", "-c", GROUP, "-p", PORT, "-T", "4", "-b", "100M", "-t", str(seconds),
            timeout=seconds + 30)
    sent = tx_bytes(h1) - before
    losses = [wait_for(lambda h=h, name=name: iperf_summary(h.docker("logs", name).stdout, seconds), what=name)
              for h, name in names]
    for h, name in names:
        h.docker("rm", "-f", name)
    return sent, losses


def join_latency(lab, joins):
    h1, h2 = lab.hosts[0], lab.hosts[1]
    h1.docker("exec", "-d", "pruned-tx", "iperf", "-u", "-c", GROUP, "-p", PORT, "-T", "4", "-b", "2M",
              "-t", str(10 * joins + 30))
    out = []
    for i in range(joins):
        name = "join%d" % i
        h2.run(name, "pruned")
        endpoint = json.loads(h2.docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"]["pruned"][
            "EndpointID"]
        veth = Capture(["nsenter", "--net=/run/netns/" + h2.name, "tcpdump", "-lni", "shv" + endpoint[:12], "-tt",
                        "igmp or dst %s" % GROUP])
        h2.docker("exec", "-d", name, "iperf", "-u", "-s", "-B", GROUP, "-p", PORT)
        first = wait_for(lambda: (veth.times(GROUP) or [None])[0], timeout=10)
        out.append(first - veth.first("report"))    # the IGMP report, not a query
        veth.stop()
        h2.docker("rm", "-f", name)
        # Until host 1 has forgotten it, the next join would find the group already flowing.
        wait_for(lambda: listeners_known(h1, vni(h1, "pruned"), 0), timeout=15)
    return out


def burst(lab, count=100):
    """`count` groups joined at once in one container: (commits, seconds from first to last)."""
    h2 = lab.hosts[1]
    h2.run("burst", "pruned")
    with open(h2.log) as f:
        start = len(f.read())
    script = "for i in $(seq 1 %d); do iperf -u -s -B 239.21.0.$i -p 6000 >/dev/null 2>&1 & done; wait" % count
    began = time.time()
    h2.docker("exec", "-d", "burst", "sh", "-c", script)

    def reports():
        with open(h2.log) as f:
            return [l for l in f.read()[start:].splitlines() if "this host listens to" in l]

    def complete():
        lines = reports()
        return lines and lines[-1].count("239.21.0.") >= count
    wait_for(complete, timeout=60, what="all %d groups reported" % count)
    lines = reports()
    stamps = [time.mktime(time.strptime(l[:19], "%Y-%m-%d %H:%M:%S")) + int(l[20:23]) / 1000.0 for l in lines]
    return len(lines), max(stamps) - began


def run(seconds, joins):
    lab = Lab(4, prefix="bp")
    figures = {}
    try:
        lab.up()
        lab.start_shoutd()
        h1 = lab.hosts[0]
        for network, mode in (("pruned", "pruned"), ("flooded", "flood")):
            h1.docker("network", "create", "-d", "shoutd", "--ipam-driver", "shoutd", "--opt",
                      "multicast=" + mode, network)
            for h in lab.hosts:
                wait_for(lambda h=h: network in h.docker("network", "ls").stdout)
            h1.run("%s-tx" % network, network)
        for k in (1, 2, 3):
            pruned, losses = stream(lab, "pruned", k, seconds)
            flooded, flood_losses = stream(lab, "flooded", k, seconds)
            figures[k] = (pruned / flooded, losses + flood_losses)
        figures["join"] = join_latency(lab, joins)
        figures["burst"] = burst(lab)
    finally:
        lab.down()
    return figures


def report(figures):
    for k in (1, 2, 3):
        ratio, losses = figures[k]
        lost = sum(l for l, _ in losses)
        total = sum(t for _, t in losses)
        print("pruned / flooded underlay bytes sent, listeners on %d of 3 hosts: %.3f  (goal %.3f +- 0.02); "
              "lost %d of %d datagrams" % (k, ratio, k / 3, lost, total))
    joins = figures["join"]
    print("join latency (IGMP report to first packet), %d joins: median %.0f ms, max %.0f ms"
          % (len(joins), 1000 * statistics.median(joins), 1000 * max(joins)))
    commits, took = figures["burst"]
    print("a burst of 100 joins in one container: %d commit%s in %.2f s (%.1f commits/s)"
          % (commits, "" if commits == 1 else "s", took, commits / took if took else float("nan")))


if shutil.which("tcpdump") is None:
    raise SystemExit("the pruning benchmark needs tcpdump (see .ci/setup)")
