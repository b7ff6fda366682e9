"""shoutd as users meet it: apt install, systemctl, busctl, docker and Compose on real systemd machines.

Three Debian machines booted with systemd in systemd-nspawn, each with Docker,
Compose and the packages built from this tree (machine.py); every test runs
on Debian 12 (bookworm: Docker 20.10, Compose v1) and Debian 13 (trixie:
Docker 26, Compose v2).
"""

import json
import os
import secrets
import shutil
import sys
import tempfile

import pytest

from ..support import busctl_json, iperf_listening, iperf_summary, wait_for
from .machine import COMPOSE, Machine, installed_tree, sh

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import readme  # noqa: E402
from lab import IMAGE_CACHE, build_image  # noqa: E402

pytestmark = pytest.mark.machines
if os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("debootstrap"):
    pytest.skip("machine tests need root, systemd-nspawn and debootstrap", allow_module_level=True)

BRIDGE = "shm-br0"
# The README's example hosts, so that its commands run here exactly as printed.
HOSTS = {"A": "192.0.2.11", "B": "192.0.2.12", "C": "192.0.2.13"}
GATEWAY = "192.0.2.254"
CALL = "busctl call org.darkkitchen.Shoutd /org/darkkitchen/Shoutd org.darkkitchen.Shoutd"


def wait(pred, timeout=60, what="condition"):
    return wait_for(pred, timeout=timeout, interval=0.5, what=what)


@pytest.fixture(scope="module")
def deb():
    return sh(["bash", os.path.join(ROOT, "packaging/build-deb")]).stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def pysyncobj_deb():
    return sh(["bash", os.path.join(ROOT, "packaging/build-pysyncobj")]).stdout.strip().splitlines()[-1]


def test_lintian_reports_no_errors(deb):
    res = sh(["lintian", deb], check=False, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    errors = [l for l in res.stdout.splitlines() if l.startswith("E:")]
    assert not errors, res.stdout
    contents = sh(["dpkg-deb", "-c", deb]).stdout
    for path in ("lib/systemd/system/shoutd.service", "lib/systemd/system/shoutd.socket", "usr/bin/shoutd",
                 "usr/bin/shoutdctl", "etc/shoutd/shoutd.conf", "dbus-1/system.d/org.darkkitchen.Shoutd.conf"):
        assert path in contents, path
    assert "/etc/shoutd/shoutd.conf" in sh(["dpkg-deb", "-I", deb, "conffiles"]).stdout


@pytest.fixture(scope="module", params=["bookworm", "trixie"])
def release(request):
    return request.param


@pytest.fixture(scope="module")
def machines(release, deb, pysyncobj_deb):
    tree, apt_log = installed_tree(release, [pysyncobj_deb, deb], build_image(IMAGE_CACHE))
    work = tempfile.mkdtemp(prefix="shoutd-machines-", dir="/var/tmp")
    sh("ip link add %s type bridge && ip link set %s up" % (BRIDGE, BRIDGE))
    sh("iptables -I FORWARD -i %s -o %s -j ACCEPT" % (BRIDGE, BRIDGE), check=False)
    ms = []
    try:
        # The documented cluster step: one secret, the same file on every host.
        secret = secrets.token_urlsafe(32) + "\n"
        for n, (letter, ip) in enumerate(sorted(HOSTS.items()), 1):
            m = Machine(tree, "shoutd-m%d" % n, BRIDGE, ip, GATEWAY, work)
            m.letter = letter
            m.write("/etc/shoutd/secret", secret, 0o600)
            ms.append(m)
        for m in ms:
            m.boot()
        for m in ms:
            m.wait_booted()
        for m in ms:
            m.run("docker import /root/image.tar shoutd-lab", timeout=300)
            # No registry here: the README's examples use busybox, and this image has it.
            m.run("docker tag shoutd-lab busybox")
        ms[0].apt_log = apt_log
        ms[0].work = work
        for m in ms:
            m.release = release
        yield ms
    finally:
        for m in ms:
            m.poweroff()
        sh("ip link del " + BRIDGE, check=False)
        sh("iptables -D FORWARD -i %s -o %s -j ACCEPT" % (BRIDGE, BRIDGE), check=False)
        shutil.rmtree(work, ignore_errors=True)


def status(m):
    return busctl_json(m.run("busctl --json=short call org.darkkitchen.Shoutd /org/darkkitchen/Shoutd "
                             "org.darkkitchen.Shoutd Status").stdout)


def journals(machines, lines=40):
    """The end of each machine's shoutd journal: what a failed step leaves to go on."""
    return "\n".join("--- shoutd on %s\n%s" % (m.name, m.run("journalctl -u shoutd -b --no-pager -o short-monotonic "
                                                             "| tail -n %d" % lines, check=False).stdout)
                     for m in machines)


def test_apt_install_pulled_in_the_debian_dependencies(machines):
    log = machines[0].apt_log
    for pkg in ("python3-pysyncobj", "python3-pyroute2", "python3-dbus-next", "python3-aiohttp",
                "python3-sdnotify", "python3-cryptography"):
        assert machines[0].run("dpkg-query -W -f='${Status}' %s" % pkg).stdout == "install ok installed", pkg
    # The backport, not Debian's older release: the Raft term and vote survive restarts.
    assert machines[0].run("dpkg-query -W -f='${Version}' python3-pysyncobj").stdout.startswith("0.3.17")
    assert "shoutd" in log
    assert machines[0].run("stat -c %a /etc/shoutd/secret").stdout.strip() == "600"
    assert machines[0].run("test -f /usr/share/dbus-1/system.d/org.darkkitchen.Shoutd.conf").returncode == 0


def test_the_readme_install_steps_run_as_printed(machines):
    """README.md's "Form a cluster", command by command, on the hosts it names."""
    by_letter = {m.letter: m for m in machines}
    steps = [(where, text) for where, text in readme.blocks() if where in set(by_letter) | {"every host"}]
    assert len(steps) >= 5, "the README's install walkthrough lost its markers"
    outputs = {}                                     # (host letter, command) -> what it printed
    for where, text in steps:
        targets = machines if where == "every host" else [by_letter[where]]
        for line in filter(str.strip, text.splitlines()):
            for m in targets:
                res = m.run("cd /root && " + line, check=False, timeout=300)
                assert res.returncode == 0, "README step on %s: %s\n%s%s\n%s" % (
                    m.letter, line, res.stdout[-2000:], res.stderr[-2000:], journals(machines))
                outputs[m.letter, line.strip()] = res.stdout
    # What the steps promise: one cluster of three, one leader, the network everywhere.
    addrs = sorted("%s:7380" % ip for ip in HOSTS.values())
    for m in machines:
        wait(lambda m=m: sorted(x[0] for x in status(m)["Members"]) == addrs, what="members on " + m.name)
        wait(lambda m=m: all(x[1] for x in status(m)["Members"]), what="VTEPs on " + m.name)
        wait(lambda m=m: "mynet" in m.run("docker network ls --format '{{.Name}}'").stdout.split(),
             what="mynet on " + m.name)
    leaders = {status(m)["Leader"] for m in machines}
    assert len(leaders) == 1 and leaders.pop() in addrs
    a = by_letter["A"]
    ip = a.run("docker inspect -f '{{.NetworkSettings.Networks.mynet.IPAddress}}' web1").stdout.strip()
    shown = outputs["A", "shoutdctl network mynet"]
    assert ip in shown and "ADDRESS" in shown, shown
    # The multicast section's networks, with the modes it asked for.
    shown = outputs["B", "shoutdctl networks"]
    table = shown.split("\n\n")[0].splitlines()[1:]          # the networks, before any groups table
    modes = {line.split()[0]: line.split()[-1] for line in table if line.split()}
    assert modes.get("feeds") == "pruned" and modes.get("lan") == "flood", shown
    st = json.loads(by_letter["B"].run("shoutdctl status --json").stdout)
    assert st["quorum"] and st["ready"] and len(st["members"]) == 3, st


def test_the_service_is_ready_and_its_socket_is_not_world_writable(machines):
    for m in machines:
        assert m.run("systemctl is-active shoutd").stdout.strip() == "active"
        text = m.run("systemctl show -p StatusText --value shoutd").stdout
        assert text.startswith("leader "), text
        assert m.run("systemctl is-active shoutd.socket").stdout.strip() == "active"
        mode = m.run("stat -c '%a %U %G' /run/docker/plugins/shoutd.sock").stdout.split()
        assert mode == ["660", "root", "docker"], mode


def test_introspection_and_who_may_do_what(machines):
    m = machines[0]
    out = m.run("busctl introspect org.darkkitchen.Shoutd /org/darkkitchen/Shoutd").stdout
    for member in ("AddPeer", "RemovePeer", "Status", "Network", "Leader", "Peers", "Networks", "PeerJoined"):
        assert "." + member in out, out
    assert "Self" in m.run(CALL + " Status", user=65534).stdout
    denied = m.run(CALL + " AddPeer s 192.0.2.9", user=65534, check=False)
    assert denied.returncode != 0 and "Access denied" in denied.stderr, denied.stderr


def test_network_and_multicast_between_two_machines(machines):
    m1, m2, _ = machines
    m1.run("docker network create -d shoutd --ipam-driver shoutd mc")
    wait(lambda: "mc" in m2.run("docker network ls --format '{{.Name}}'").stdout.split(), what="mirrored network")
    m2.run("docker run -d --name rx --network mc shoutd-lab iperf -u -s -B 224.4.4.4 -p 5003")
    m1.run("docker run -d --name tx --network mc shoutd-lab sleep 600")
    wait(lambda: iperf_listening(m2.run("docker logs rx").stdout), what="the receiver")
    m1.run("docker exec tx iperf -u -c 224.4.4.4 -p 5003 -T 2 -t 5", timeout=60)
    lost, total = wait(lambda: iperf_summary(m2.run("docker logs rx").stdout, 5), what="the receiver's report")
    assert total > 300 and lost == 0, (lost, total)
    m1.run("docker rm -f tx")
    m2.run("docker rm -f rx")


def compose(m, project, args, check=True):
    return m.run("cd /root/%s && %s -p %s %s" % (project, COMPOSE[m.release], project, args), check=check,
                 timeout=300)


def node_of(m, project):
    """(container id, its address on the project's network) of the project's one container on `m`."""
    cid = compose(m, project, "ps -q node").stdout.split()[0]
    nets = json.loads(m.run("docker inspect %s" % cid).stdout)[0]["NetworkSettings"]["Networks"]
    return cid, next(v["IPAddress"] for k, v in nets.items() if k.startswith(project) or k == "mynet")


def networks_of(m):
    return m.run("docker network ls --format '{{.Name}}'").stdout.split()


def reach(m, cid, ip):
    return m.run("docker exec %s ping -c 2 -W 2 %s" % (cid, ip), check=False).returncode == 0


def multicast_loss(tx_host, tx, rx_host, rx, group="224.6.6.6", port=5006):
    rx_host.run("docker exec %s sh -c 'iperf -u -s -B %s -p %d > /tmp/rx.log 2>&1 &'" % (rx, group, port))
    read = lambda: rx_host.run("docker exec %s cat /tmp/rx.log" % rx).stdout  # noqa: E731
    wait(lambda: iperf_listening(read()), what="iperf receiver")
    tx_host.run("docker exec %s iperf -u -c %s -p %d -T 2 -t 3" % (tx, group, port), timeout=60)
    lost, total = wait(lambda: iperf_summary(read(), 3), what="iperf report")
    rx_host.run("docker exec %s pkill iperf" % rx, check=False)
    return lost, total


def test_one_compose_file_on_every_host_makes_one_network(machines):
    """Compose v2 on Debian 13, v1 on Debian 12: the README's file brought up on three hosts."""
    for m in machines:
        m.run("mkdir -p /root/web")
        m.write("/root/web/docker-compose.yml", readme.block("compose"))
    m1, m2, m3 = machines
    compose(m1, "web", "up -d")
    for m in (m2, m3):      # shoutd makes the network on the other hosts, labelled as Compose made it
        wait(lambda m=m: "web_lan" in networks_of(m), what="web_lan on " + m.name)
        compose(m, "web", "up -d")
    nodes = {m.name: node_of(m, "web") for m in machines}
    c1, _ = nodes[m1.name]
    for m in (m2, m3):
        assert reach(m1, c1, nodes[m.name][1]), "ping from %s to %s" % (m1.name, m.name)
    lost, total = multicast_loss(m1, c1, m2, nodes[m2.name][0])
    assert total > 100 and lost == 0, (lost, total)

    # Down on one host: the others keep talking, and a later up there works again.
    compose(m2, "web", "down")
    assert reach(m1, c1, nodes[m3.name][1])
    for m in (m1, m3):
        assert "web_lan" in networks_of(m)
    wait(lambda: "web_lan" in networks_of(m2), what="web_lan back on %s (still used elsewhere)" % m2.name)
    compose(m2, "web", "up -d")
    assert reach(m1, c1, node_of(m2, "web")[1])

    # Down on every host: the last one removes the network everywhere.
    for m in machines:
        compose(m, "web", "down")
    for m in machines:
        wait(lambda m=m: "web_lan" not in networks_of(m), what="web_lan gone from " + m.name)


def test_compose_with_an_external_network(machines):
    """The README's second form, on the network its walkthrough made (mynet)."""
    m1, m2, m3 = machines
    for m in machines:
        assert "mynet" in networks_of(m)
        m.run("mkdir -p /root/ext")
        m.write("/root/ext/docker-compose.yml", readme.block("compose-external"))
        compose(m, "ext", "up -d")
    nodes = {m.name: node_of(m, "ext") for m in machines}
    c1, _ = nodes[m1.name]
    for m in (m2, m3):
        assert reach(m1, c1, nodes[m.name][1])
    for m in machines:
        compose(m, "ext", "down")
    assert all("mynet" in networks_of(m) for m in machines), "an external network outlives the projects"
    m1.run("docker rm -f web1")
    m1.run("docker network rm mynet")
    for m in machines:
        wait(lambda m=m: "mynet" not in networks_of(m), what="mynet gone from " + m.name)


def test_a_docker_plugin_call_starts_the_stopped_service(machines):
    m3 = machines[2]
    m3.run("systemctl stop shoutd.service")
    assert m3.run("systemctl is-active shoutd.service", check=False).stdout.strip() == "inactive"
    assert m3.run("systemctl is-active shoutd.socket").stdout.strip() == "active"
    m3.run("docker network create -d shoutd --ipam-driver shoutd activated", timeout=120)
    # Docker's call is served from the socket; READY=1 follows once Raft has a leader.
    wait(lambda: m3.run("systemctl is-active shoutd.service", check=False).stdout.strip() == "active",
         timeout=60, what="shoutd active")
    log = m3.run("journalctl -u shoutd -b --no-pager -o cat").stdout
    assert "socket passed by systemd" in log


def test_a_frozen_daemon_is_restarted_by_the_watchdog(machines):
    m2 = machines[1]
    pid = m2.run("systemctl show -p MainPID --value shoutd").stdout.strip()
    m2.run("kill -STOP %s" % pid)
    new = wait(lambda: (lambda p: p if p not in ("0", pid) else None)(
        m2.run("systemctl show -p MainPID --value shoutd").stdout.strip()), timeout=120, what="a new MainPID")
    wait(lambda: m2.run("systemctl is-active shoutd", check=False).stdout.strip() == "active", timeout=60,
         what="active again")
    log = m2.run("journalctl -u shoutd -b --no-pager -o cat").stdout
    assert "Watchdog timeout" in log, log[-2000:]
    assert new != pid


def test_upgrade_keeps_the_cluster_state_and_restarts(machines, deb):
    m1 = machines[0]
    version = sh(["dpkg-deb", "-f", deb, "Version"]).stdout.strip() + "+upgrade1"
    newer = sh(["bash", os.path.join(ROOT, "packaging/build-deb"), version]).stdout.strip().splitlines()[-1]
    shutil.copy(newer, os.path.join(m1.root, "root/"))
    before = status(m1)
    pid = m1.run("systemctl show -p MainPID --value shoutd").stdout.strip()
    m1.run("apt-get install -y -q ./root/%s" % os.path.basename(newer), timeout=300)
    assert m1.run("dpkg-query -W -f='${Version}' shoutd").stdout == version
    wait(lambda: m1.run("systemctl is-active shoutd", check=False).stdout.strip() == "active", what="active")
    assert m1.run("systemctl show -p MainPID --value shoutd").stdout.strip() != pid, "restarted"
    after = wait(lambda: (lambda st: st if st["Ready"] and st["Leader"] else None)(status(m1)), what="ready")
    assert sorted(x[0] for x in after["Members"]) == sorted(x[0] for x in before["Members"])
    assert [n[0] for n in after["Networks"]] == [n[0] for n in before["Networks"]]
    assert "mc" in [n[0] for n in after["Networks"]]


def docker_plugins(m):
    return m.run("docker plugin ls --format '{{.Name}} {{.Enabled}}'").stdout.split("\n")


def test_the_service_installed_the_managed_plugin_for_swarm(machines):
    """After `apt install shoutd` nothing else is needed for swarm networks (README: Swarm services)."""
    for m in machines:
        wait(lambda m=m: "darkkitchen/shoutd:latest true" in docker_plugins(m), timeout=120,
             what="the managed plugin on " + m.name)
    log = machines[0].run("journalctl -u shoutd -b --no-pager -o cat").stdout
    assert "managed plugin: created darkkitchen/shoutd:latest" in log or \
        "managed plugin: darkkitchen/shoutd:latest is up to date" in log, log[-2000:]


def test_purge_removes_state_secret_and_plugin(machines):
    m3 = machines[2]
    assert m3.run("test -d /var/lib/shoutd").returncode == 0
    m3.run("apt-get purge -y -q shoutd", timeout=300)
    assert not any(line.startswith("darkkitchen/shoutd") for line in docker_plugins(m3)), "the plugin went too"
    for path in ("/var/lib/shoutd", "/etc/shoutd/secret", "/etc/shoutd/shoutd.conf"):
        assert m3.run("test -e %s" % path, check=False).returncode != 0, path
    assert m3.run("systemctl is-active shoutd.socket", check=False).stdout.strip() != "active"
