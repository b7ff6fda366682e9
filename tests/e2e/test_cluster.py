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
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lab import Lab  # noqa: E402
from support import iperf_listening, iperf_summary, wait_for  # noqa: E402

pytestmark = pytest.mark.e2e
if os.geteuid() != 0 or not shutil.which("dockerd"):
    pytest.skip("end-to-end tests need root and dockerd", allow_module_level=True)


@pytest.fixture(scope="module")
def lab(engine):
    with Lab(3, authz=[1], engine=engine) as lab:    # host 1's dockerd uses shoutd as authorization plugin
        yield lab


def network(lab, name, on=1, *extra):
    lab.hosts[on - 1].docker("network", "create", "-d", "shoutd", "--ipam-driver", "shoutd", *extra, name)
    for h in lab.hosts:
        wait_for(lambda h=h: name in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split(),
                 timeout=30)


def remove(lab, *containers):
    for h in lab.hosts:
        h.docker("rm", "-f", *containers, check=False)


def logs(host, container):
    return host.docker("logs", container).stdout


def listening(host, container):
    wait_for(lambda: iperf_listening(logs(host, container)), what="iperf receiver %s" % container)


def summary(host, container, seconds):
    """(lost, total) once the receiver has printed its closing report of a `seconds`-long stream."""
    return wait_for(lambda: iperf_summary(logs(host, container), seconds), what="report of %s" % container)


def ping(host, container, ip, count=3):
    return host.exec(container, "ping", "-c", str(count), "-W", "2", ip, check=False)


def test_the_iperf_multicast_demo_loses_nothing(lab):
    h1, h2, h3 = lab.hosts
    network(lab, "mc")
    for h, name in ((h2, "rx2"), (h3, "rx3")):
        h.run(name, "mc", "iperf", "-u", "-s", "-B", "224.1.1.1", "-p", "5000", "-i", "1")
    h1.run("tx", "mc")
    for h, name in ((h2, "rx2"), (h3, "rx3")):
        listening(h, name)
    out = h1.exec("tx", "iperf", "-u", "-c", "224.1.1.1", "-p", "5000", "-T", "2", "-t", "8", "-i", "1").stdout
    assert "Sent" in out
    for h, name in ((h2, "rx2"), (h3, "rx3")):
        lost, total = summary(h, name, 8)
        assert total > 500 and lost == 0, (name, lost, total)


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


def test_arp_across_hosts(lab):
    network(lab, "arp")
    h1, h2, _ = lab.hosts
    h1.run("a1", "arp")
    h2.run("a2", "arp")
    ip2 = h2.container_ip("a2", "arp")
    mac2 = json.loads(h2.docker("inspect", "a2").stdout)[0]["NetworkSettings"]["Networks"]["arp"]["MacAddress"]
    out = h1.exec("a1", "arping", "-c", "2", "-w", "5", "-I", "eth0", ip2, check=False).stdout
    assert mac2.lower() in out.lower(), out


SEND_RAW = """
import socket, struct
vrrp = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
vrrp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
# VRRPv2 advertisement: version 2, type 1, VRID 51, priority 100, no addresses
vrrp.sendto(struct.pack("!BBBBBBH", 0x21, 51, 100, 0, 0, 1, 0), ("224.0.0.18", 0))
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
raw.bind(("eth0", 0))
mac = raw.getsockname()[4]
raw.send(b"\\xff" * 6 + mac + b"\\x88\\xb5" + b"shoutd-not-ip".ljust(46, b"."))
"""


@pytest.mark.parametrize("mode", ["flood", "pruned"])
def test_non_ip_and_non_tcp_udp_protocols_cross_hosts(lab, mode):
    """VRRP (IP protocol 112) and a non-IP EtherType arrive unchanged on every other host.

    IGMP too where the network floods; a pruned network keeps it on its host,
    where the bridge is the querier (dataplane/fence.py).
    """
    name = "proto-" + mode
    network(lab, name, 1, "--opt", "multicast=" + mode)
    h1, h2, h3 = lab.hosts
    h1.run("src", name)
    for h in (h2, h3):
        h.run("dst%d" % h.n, name)
    waits = {}
    for h in (h2, h3):
        # Pruned: collect every IGMP message for a while (the host's own queries come too).
        igmp = h.capture("dst%d" % h.n, "igmp") if mode == "flood" else \
            h.capture("dst%d" % h.n, "igmp", count=100, timeout=6)
        waits[h.n] = [h.capture("dst%d" % h.n, "ip proto 112"), h.capture("dst%d" % h.n, "ether proto 0x88b5"),
                      igmp]
    pid = json.loads(h1.docker("inspect", "src").stdout)[0]["State"]["Pid"]
    subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", SEND_RAW], check=True)
    # Joining a group sends an IGMP membership report.
    h1.docker("exec", "-d", "src", "iperf", "-u", "-s", "-B", "224.9.9.9", "-p", "5009")
    for n, (vrrp, other, igmp) in waits.items():
        out = vrrp()
        assert "224.0.0.18" in out and "vrrp" in out.lower(), (n, out)
        out = other()
        assert "0x88b5" in out and "ff:ff:ff:ff:ff:ff" in out, (n, out)
        out = igmp()
        if mode == "flood":
            assert "igmp" in out.lower() and "224.9.9.9" in out, (n, out)
        else:
            assert "224.9.9.9" not in out, "a report crossed hosts in a pruned network: %s" % out


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


def test_a_network_created_on_host2_is_usable_on_host3_and_removed_everywhere(lab):
    network(lab, "from2", 2)
    _, h2, h3 = lab.hosts
    h3.run("c3", "from2")
    h2.run("c2", "from2")
    assert ping(h3, "c3", h2.container_ip("c2", "from2")).returncode == 0
    # In use on host 3. Host 1 (shoutd authorizes its Docker API) refuses the removal, saying where.
    h1 = lab.hosts[0]
    res = h1.docker("network", "rm", "from2", check=False)
    assert res.returncode != 0 and "still has containers attached on host" in res.stderr, res.stderr
    assert "10.213." in res.stderr or "(198.18.0.3)" in res.stderr, res.stderr
    assert "from2" in h1.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
    # Host 2 (no authorization plugin) cannot be stopped from dropping its copy, but the
    # cluster keeps the network and shoutd puts the copy back.
    remove(lab, "c2")
    h2.docker("network", "rm", "from2")
    wait_for(lambda: "from2" in h2.docker("network", "ls", "--format", "{{.Name}}").stdout.split())
    with open(h2.log) as f:
        assert "still has containers attached on host" in f.read()
    h2.run("c2b", "from2")
    assert ping(h3, "c3", h2.container_ip("c2b", "from2")).returncode == 0
    remove(lab, "c2b", "c3")
    h1.docker("network", "rm", "from2")
    for h in lab.hosts:
        wait_for(lambda h=h: "from2" not in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split())


def test_create_without_shoutd_ipam_is_refused_with_the_right_command(lab):
    res = lab.hosts[0].docker("network", "create", "-d", "shoutd", "wrong", check=False)
    assert res.returncode != 0 and "--ipam-driver shoutd" in res.stderr, res.stderr


def test_ipv6_and_ipv4_less_networks_are_refused_before_any_pool_is_reserved(lab):
    h1 = lab.hosts[0]
    for extra, words in ((["--ipv6"], "without --ipv6"), (["-o", "multicast=flooded"], "multicast=pruned")):
        res = h1.docker("network", "create", "-d", "shoutd", "--ipam-driver", "shoutd", *extra, "bad", check=False)
        assert res.returncode != 0 and words in res.stderr, res.stderr
    assert "bad" not in h1.docker("network", "ls", "--format", "{{.Name}}").stdout.split()


def test_an_interface_name_is_ignored_by_docker_and_shoutd_says_so(lab):
    if lab.engine.cli_config is None:
        pytest.skip("Docker 20.10 has no --network name=N,driver-opt=... (and sends no interface name)")
    h1 = lab.hosts[0]
    network(lab, "named")
    start = len(open(h1.log, "rb").read())
    h1.run("nm", "name=named,driver-opt=com.docker.network.endpoint.ifname=foo0")
    assert "eth0" in h1.exec("nm", "ip", "-o", "link").stdout
    assert "asks for interface name 'foo0'" in open(h1.log).read()[start:]


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
    listening(h2, "krx")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sender = pool.submit(h1.exec, "k1", "iperf", "-u", "-c", "224.2.2.2", "-p", "5001", "-T", "2",
                             "-t", "8", "-i", "1")
        time.sleep(2)                  # the kill falls in the middle of the 8 s stream: that is the test
        h3.kill_shoutd(signal.SIGKILL)
        sender.result(timeout=60)
    lost, total = summary(h2, "krx", 8)
    assert total > 500 and lost == 0, (lost, total)
    # Containers on the host without shoutd still talk: the data plane is the kernel's.
    assert ping(h1, "k1", k3_ip).returncode == 0

    h3.start_shoutd()
    lab.wait_ready()
    assert veths(h3) == before, "restart must recreate nothing and leak nothing"
    assert ping(h1, "k1", k3_ip).returncode == 0
    h3.run("k3b", "kill")
    assert ping(h1, "k1", h3.container_ip("k3b", "kill")).returncode == 0


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


def test_restarting_dockerd_reconnects_containers_and_leaks_nothing(lab):
    h1, h2, _ = lab.hosts
    network(lab, "dk")
    h1.run("d1", "dk")
    h2.run("d2", "dk", extra=["--restart", "always"])
    h2.run("d2gone", "dk")                      # not restarted: its endpoint must be cleaned up
    h2.stop_dockerd()
    h2.start_dockerd()
    wait_for(lambda: h2.docker("inspect", "-f", "{{.State.Running}}", "d2").stdout.strip() == "true", timeout=60)
    assert ping(h1, "d1", h2.container_ip("d2", "dk")).returncode == 0
    shv = [n for n in veths(h2) if n.startswith("shv")]
    assert len(shv) == 1, shv                  # d2's new veth only: d2gone's and d2's old ones are gone
    remove(lab, "d1", "d2", "d2gone")
    # No stale endpoint is left in the cluster: host 1's authorization check lets the removal through.
    h1.docker("network", "rm", "dk")
    for h in lab.hosts:
        wait_for(lambda h=h: "dk" not in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split())


def test_a_host_reboot_is_reconciled(lab):
    """Everything on host 2 goes down and its kernel forgets shoutd's devices, as in a reboot."""
    h1, h2, _ = lab.hosts
    network(lab, "boot")
    h1.run("b1", "boot")
    h2.run("b2", "boot", extra=["--restart", "always"])
    h2.stop_dockerd()
    h2.kill_shoutd(signal.SIGKILL)
    for name in veths(h2):
        h2.netns("ip", "link", "del", name, check=False)
    assert not veths(h2)
    h2.start_shoutd()
    lab.wait_ready()
    h2.start_dockerd()
    wait_for(lambda: h2.docker("inspect", "-f", "{{.State.Running}}", "b2").stdout.strip() == "true", timeout=60)
    assert ping(h1, "b1", h2.container_ip("b2", "boot")).returncode == 0
    names = veths(h2)
    assert len([n for n in names if n.startswith("shv")]) == 1, names
    assert len([n for n in names if n.startswith("shx")]) == len([n for n in names if n.startswith("shb")])
