"""Hosts whose firewall would drop bridged traffic: Docker 28's own, and Docker 29's, emulated.

Three lab hosts run Docker 28.5.2 with its firewall on (each in its own
network namespace, so each has its own iptables, nftables and br_netfilter
switches).  br_netfilter hands bridged frames to both iptables and
ip6tables, and both FORWARD policies are DROP, as Docker leaves them once it
has enabled forwarding.  Docker 29's rules, which no engine here writes, are
loaded as moby documents them at the docker-v29.7.2 tag (moby-29.7/).  Each
case sends ping and an iperf multicast stream between containers on
different hosts.
"""

import os
import re
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from engines import DEBIAN_UNSTABLE  # noqa: E402
from lab import Lab  # noqa: E402
from support import sh, wait_for  # noqa: E402

pytestmark = pytest.mark.e2e
if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("nft"):
    pytest.skip("end-to-end tests need root, dockerd and nft", allow_module_level=True)

NET = "fwnet"
MATCH = ["-i", "shb+", "-o", "shb+", "-j", "ACCEPT"]      # shoutd's rule, as the user sees it
RULE = "-A FORWARD " + " ".join(MATCH)
MOBY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "moby-29.7")
# nft 1.0.6 (Debian 12) knows the symbolic priorities dstnat and srcnat only on some hooks; Docker 29's
# tables use them everywhere.  Their values (nft(8)): the same tables, in words Debian 12's nft reads.
PRIORITIES = [("priority dstnat;", "priority -100;"), ("priority srcnat;", "priority 100;")]


@pytest.fixture(scope="module")
def lab():
    # The e2e modules run 28.5.2 with containerd's image store; this one with the graph driver's.
    with Lab(3, prefix="fw", engine=DEBIAN_UNSTABLE, iptables=True, containerd_store=False) as lab:
        for h in lab.hosts:
            br_netfilter(h, True)
            for tool in ("iptables", "ip6tables"):
                h.netns(tool, "-P", "FORWARD", "DROP")
        lab.create_network(NET)
        yield lab


def br_netfilter(host, on):
    """br_netfilter's switches are per network namespace: on, bridged frames pass ip(6)tables."""
    for family in ("iptables", "ip6tables"):
        host.netns("sh", "-c", "echo %d > /proc/sys/net/bridge/bridge-nf-call-%s" % (int(on), family))


def forward(host, tool="iptables"):
    return [r for r in host.netns(tool, "-S", "FORWARD").stdout.splitlines() if r.startswith("-A ")]


def ours(host, tool="iptables"):
    return [i for i, r in enumerate(forward(host, tool)) if r == RULE]


def containers(lab, tag):
    """One new container per host (each start runs a reconcile pass there); returns their addresses."""
    ips = {}
    for h in lab.hosts:
        name = "%s%d" % (tag, h.n)
        h.run(name, NET)
        ips[h.n] = h.container_ip(name, NET)
    return ips


def traffic_passes(lab, tag, ips):
    """Ping from host 1 to the others, and a multicast stream from host 1 that host 2 gets whole."""
    h1, h2, _ = lab.hosts
    for n in (2, 3):
        res = h1.exec("%s1" % tag, "ping", "-c", "2", "-W", "2", ips[n], check=False)
        assert res.returncode == 0, "ping from host 1 to host %d: %s" % (n, res.stdout + res.stderr)
    lost, total = h1.multicast("%s1" % tag, h2, "%s2" % tag, "224.7.7.7", 5007)
    assert total > 100 and lost == 0, (lost, total)


def test_docker_28_s_chains_with_drop_policies_in_both_families(lab):
    ips = containers(lab, "a")
    traffic_passes(lab, "a", ips)
    for h in lab.hosts:
        rules = forward(h)
        assert rules[0] == "-A FORWARD -j DOCKER-USER" and ours(h) == [1], rules
        assert len(ours(h, "ip6tables")) == 1, forward(h, "ip6tables")
    # The rule is what lets the traffic through: without it host 2 is cut off, until shoutd's next pass.
    h1, h2, h3 = lab.hosts
    h2.netns("iptables", "-D", "FORWARD", *MATCH)
    assert h1.exec("a1", "ping", "-c", "2", "-W", "1", ips[2], check=False).returncode != 0
    h2.run("a2b", NET)
    assert ours(h2) == [1]
    traffic_passes(lab, "a", ips)
    # dockerd restarts: it puts DOCKER-USER and DOCKER-FORWARD back at the top, above shoutd's rule.
    h3.docker("rm", "-f", "a3")
    h3.stop_dockerd()
    h3.start_dockerd()
    rules = forward(h3)
    assert rules[:2] == ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-FORWARD"], rules
    h3.run("a3", NET)
    ips[3] = h3.container_ip("a3", NET)
    traffic_passes(lab, "a", ips)
    assert ours(h3) == [2], "left where Docker's re-insert put it, once: %s" % forward(h3)


def test_without_br_netfilter_no_rule_is_needed(lab):
    for h in lab.hosts:
        br_netfilter(h, False)
        for tool in ("iptables", "ip6tables"):
            for _ in ours(h, tool):
                h.netns(tool, "-D", "FORWARD", *MATCH)
    try:
        traffic_passes(lab, "b", containers(lab, "b"))
        for h in lab.hosts:
            assert ours(h) == [] and ours(h, "ip6tables") == [], "shoutd added a rule nothing needs"
    finally:
        for h in lab.hosts:
            br_netfilter(h, True)


def test_docker_29_s_iptables_rules(lab):
    for h in lab.hosts:
        for table in ("filter", "nat"):
            h.netns("iptables", "-t", table, "-F")
            h.netns("iptables", "-t", table, "-X")
        h.netns("iptables-restore", "--noflush", os.path.join(MOBY, "iptables-new-daemon.rules"))
        h.netns("iptables", "-P", "FORWARD", "DROP")
    traffic_passes(lab, "c", containers(lab, "c"))
    for h in lab.hosts:
        assert forward(h)[:3] == ["-A FORWARD -j DOCKER-USER", forward(h)[1], "-A FORWARD -j DOCKER-FORWARD"]
        assert ours(h) == [1], forward(h)


def test_docker_29_s_nftables_tables_and_a_chain_that_drops_is_named_with_the_fix(lab):
    with open(os.path.join(MOBY, "nftables-new-daemon.nft")) as f:
        tables = f.read()
    for old, new in PRIORITIES:
        tables = tables.replace(old, new)
    for h in lab.hosts:
        # Docker 29 with --firewall-backend=nftables writes no iptables rules at all.
        for family in ("ip", "ip6"):
            for table in ("filter", "nat"):
                h.netns("nft", "delete", "table", family, table, check=False)
        sh(["nsenter", "--net=/run/netns/" + h.name, "nft", "-f", "-"], input=tables)
        assert "table ip docker-bridges" in h.netns("nft", "list", "tables").stdout
    ips = containers(lab, "d")
    traffic_passes(lab, "d", ips)

    # A ruleset of the host's own that drops forwarded traffic (Debian's nftables.conf with policy drop).
    h1, h2, _ = lab.hosts
    h2.netns("nft", "add table inet filter; add chain inet filter forward "
                    "{ type filter hook forward priority 0; policy drop; }")
    assert h1.exec("d1", "ping", "-c", "2", "-W", "2", ips[2], check=False).returncode != 0, "the chain drops"
    start = len(open(h2.log, "rb").read())
    h2.run("d2b", NET)                  # a container start: a reconcile pass looks at the firewall
    said = wait_for(lambda: re.search(r"firewall: nftables chain inet filter forward .*?Accept it there: (nft .*)",
                                      open(h2.log).read()[start:]), what="shoutd naming the chain in its log")
    fix = said.group(1).strip()
    assert fix == 'nft insert rule inet filter forward iifname "shb*" oifname "shb*" accept', fix
    h2.netns(*fix.replace('"', "").split())
    traffic_passes(lab, "d", ips)
    h2.run("d2c", NET)
    wait_for(lambda: "firewall: nothing blocks shoutd traffic" in open(h2.log).read()[start:],
             what="shoutd seeing the fix")
