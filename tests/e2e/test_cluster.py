"""End to end: three hosts on one machine, each with its own dockerd and shoutd.

Real kernel, real dockerd, real traffic between containers on different
hosts (see tests/lab.py for how the hosts are built).
"""

import concurrent.futures
import json
import os
import re
import shutil
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lab import Lab, wait_for  # noqa: E402

pytestmark = pytest.mark.e2e
if os.geteuid() != 0 or not shutil.which("dockerd"):
    pytest.skip("end-to-end tests need root and dockerd", allow_module_level=True)

LOSS = re.compile(r"(\d+)/\s*(\d+) \(")


@pytest.fixture(scope="module")
def lab():
    lab = Lab(3)
    try:
        lab.up()
        lab.start_shoutd()
        yield lab
    finally:
        lab.down()


def network(lab, name, on=1, *extra):
    lab.hosts[on - 1].docker("network", "create", "-d", "shoutd", "--ipam-driver", "shoutd", *extra, name)
    for h in lab.hosts:
        wait_for(lambda h=h: name in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split(),
                 timeout=30)


def remove(lab, *containers):
    for h in lab.hosts:
        h.docker("rm", "-f", *containers, check=False)


def ping(host, container, ip, count=3):
    return host.exec(container, "ping", "-c", str(count), "-W", "2", ip, check=False)


def iperf_report(host, container):
    """(lost, total) from an iperf UDP server's final report."""
    reports = [(int(a), int(b)) for a, b in LOSS.findall(host.docker("logs", container).stdout)]
    assert reports, host.docker("logs", container).stdout
    return max(reports, key=lambda r: r[1])


def test_the_iperf_multicast_demo_loses_nothing(lab):
    h1, h2, h3 = lab.hosts
    network(lab, "mc")
    for h, name in ((h2, "rx2"), (h3, "rx3")):
        h.run(name, "mc", "iperf", "-u", "-s", "-B", "224.1.1.1", "-p", "5000", "-i", "1")
    h1.run("tx", "mc")
    time.sleep(1)
    out = h1.exec("tx", "iperf", "-u", "-c", "224.1.1.1", "-p", "5000", "-T", "2", "-t", "8", "-i", "1").stdout
    assert "Sent" in out
    time.sleep(2)
    for h, name in ((h2, "rx2"), (h3, "rx3")):
        lost, total = iperf_report(h, name)
        assert total > 500 and lost == 0, (name, lost, total)
    remove(lab, "rx2", "rx3", "tx")


def test_ping_and_broadcast_cross_every_host(lab):
    network(lab, "l2")
    ips = {}
    for h in lab.hosts:
        name = "p%d" % h.n
        h.run(name, "l2", extra=["--sysctl", "net.ipv4.icmp_echo_ignore_broadcasts=0"])
        ips[h.n] = h.container_ip(name, "l2")
    h1 = lab.hosts[0]
    for n in (2, 3):
        res = ping(h1, "p1", ips[n])
        assert res.returncode == 0 and "3 packets received" in res.stdout, res.stdout + res.stderr
    subnet = json.loads(h1.docker("network", "inspect", "l2").stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    broadcast = subnet.rsplit(".", 1)[0] + ".255" if subnet.endswith("/24") else None
    assert broadcast, subnet
    out = h1.exec("p1", "ping", "-c", "3", "-W", "3", broadcast, check=False).stdout
    repliers = set(re.findall(r"bytes from ([\d.]+)", out))
    assert {ips[2], ips[3]} <= repliers, out
    # The container routes multicast through shoutd, not docker_gwbridge.
    routes = h1.exec("p1", "ip", "route").stdout
    assert re.search(r"224\.0\.0\.0/4 dev eth0", routes), routes
    assert "mtu 1450" in h1.exec("p1", "ip", "link", "show", "eth0").stdout
    remove(lab, "p1", "p2", "p3")


def test_arp_across_hosts(lab):
    network(lab, "arp")
    h1, h2, _ = lab.hosts
    h1.run("a1", "arp")
    h2.run("a2", "arp")
    ip2 = h2.container_ip("a2", "arp")
    mac2 = json.loads(h2.docker("inspect", "a2").stdout)[0]["NetworkSettings"]["Networks"]["arp"]["MacAddress"]
    out = h1.exec("a1", "arping", "-c", "2", "-w", "5", "-I", "eth0", ip2, check=False).stdout
    assert mac2.lower() in out.lower(), out
    remove(lab, "a1", "a2")


def test_addresses_are_unique_across_hosts_even_when_started_together(lab):
    network(lab, "ipam", 1, "--subnet", "10.77.0.0/24")
    jobs = [(h, "u%d-%d" % (h.n, i)) for h in lab.hosts for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda j: j[0].run(j[1], "ipam"), jobs))
    ips = [h.container_ip(name, "ipam") for h, name in jobs]
    assert len(set(ips)) == len(ips) and all(ip.startswith("10.77.0.") for ip in ips), ips
    # A static address is honoured, and refused on another host once taken.
    h1, h2, _ = lab.hosts
    h1.run("static1", "ipam", ip="10.77.0.200")
    assert h1.container_ip("static1", "ipam") == "10.77.0.200"
    res = h2.docker("run", "-d", "--name", "static2", "--network", "ipam", "--ip", "10.77.0.200", "shoutd-lab",
                    "sleep", "60", check=False)
    assert res.returncode != 0 and "already in use" in res.stderr, res.stderr
    remove(lab, "static1", "static2", *[name for _, name in jobs])


def test_two_networks_are_isolated(lab):
    network(lab, "red")
    network(lab, "blue", 2)
    h1, h2, _ = lab.hosts
    h1.run("red1", "red")
    h2.run("red2", "red")
    h2.run("blue2", "blue")
    red2 = h2.container_ip("red2", "red")
    assert ping(h1, "red1", red2).returncode == 0
    # Give blue1 red2's subnet neighbour address: it must still not reach red.
    blue = json.loads(h2.docker("network", "inspect", "blue").stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    assert blue != json.loads(h1.docker("network", "inspect", "red").stdout)[0]["IPAM"]["Config"][0]["Subnet"]
    out = h2.exec("blue2", "arping", "-c", "2", "-w", "3", "-I", "eth0", red2, check=False).stdout
    assert "Unicast reply" not in out, out
    assert ping(h2, "blue2", red2, count=2).returncode != 0
    remove(lab, "red1", "red2", "blue2")


def test_a_network_created_on_host2_is_usable_on_host3_and_removed_everywhere(lab):
    network(lab, "from2", 2)
    _, h2, h3 = lab.hosts
    h3.run("c3", "from2")
    h2.run("c2", "from2")
    assert ping(h3, "c3", h2.container_ip("c2", "from2")).returncode == 0
    # In use on host 3: removing it on host 1 cannot take it from the cluster.
    h1 = lab.hosts[0]
    h1.docker("network", "rm", "from2", check=False)
    time.sleep(2)
    wait_for(lambda: "from2" in h1.docker("network", "ls", "--format", "{{.Name}}").stdout.split())
    assert ping(h3, "c3", h2.container_ip("c2", "from2")).returncode == 0
    with open(h1.log) as f:
        assert "still has containers attached on host" in f.read()
    remove(lab, "c2", "c3")
    h1.docker("network", "rm", "from2")
    for h in lab.hosts:
        wait_for(lambda h=h: "from2" not in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split())


def test_create_without_shoutd_ipam_is_refused_with_the_right_command(lab):
    res = lab.hosts[0].docker("network", "create", "-d", "shoutd", "wrong", check=False)
    assert res.returncode != 0 and "--ipam-driver shoutd" in res.stderr, res.stderr


def veths(host):
    out = host.netns("ip", "-j", "link", "show").stdout
    return {l["ifname"]: l["ifindex"] for l in json.loads(out) if l["ifname"].startswith(("shv", "shx", "shb"))}


def test_kill_9_on_one_host_leaves_the_others_talking_and_it_rejoins(lab):
    h1, h2, h3 = lab.hosts
    network(lab, "kill")
    h3.run("k3", "kill")
    h1.run("k1", "kill")
    k3_ip = h3.container_ip("k3", "kill")
    before = veths(h3)
    h2.run("krx", "kill", "iperf", "-u", "-s", "-B", "224.2.2.2", "-p", "5001", "-i", "1")
    time.sleep(1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sender = pool.submit(h1.exec, "k1", "iperf", "-u", "-c", "224.2.2.2", "-p", "5001", "-T", "2",
                             "-t", "8", "-i", "1")
        time.sleep(2)
        h3.kill_shoutd(signal.SIGKILL)
        sender.result(timeout=60)
    time.sleep(2)
    lost, total = iperf_report(h2, "krx")
    assert total > 500 and lost == 0, (lost, total)
    # Containers on the host without shoutd still talk: the data plane is the kernel's.
    assert ping(h1, "k1", k3_ip).returncode == 0

    h3.start_shoutd()
    lab.wait_ready()
    assert veths(h3) == before, "restart must recreate nothing and leak nothing"
    assert ping(h1, "k1", k3_ip).returncode == 0
    h3.run("k3b", "kill")
    assert ping(h1, "k1", h3.container_ip("k3b", "kill")).returncode == 0
    remove(lab, "k1", "k3", "k3b", "krx")


def test_a_graceful_restart_keeps_every_veth(lab):
    h1, h2, _ = lab.hosts
    network(lab, "calm")
    h1.run("g1", "calm")
    h2.run("g2", "calm")
    before = veths(h1)
    h1.kill_shoutd(signal.SIGTERM)
    h1.start_shoutd()
    lab.wait_ready()
    assert veths(h1) == before
    assert ping(h1, "g1", h2.container_ip("g2", "calm")).returncode == 0
    remove(lab, "g1", "g2")
