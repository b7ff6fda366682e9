"""shoutd as users meet it: apt install, systemctl, busctl and docker on real systemd machines.

Three Debian bookworm machines booted with systemd in systemd-nspawn, each
with Docker and the shoutd .deb built from this tree (machine.py).
"""

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time

import pytest

from .machine import Machine, installed_tree, sh

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from lab import IMAGE_CACHE, build_image  # noqa: E402

pytestmark = pytest.mark.machines
if os.geteuid() != 0 or not shutil.which("systemd-nspawn") or not shutil.which("debootstrap"):
    pytest.skip("machine tests need root, systemd-nspawn and debootstrap", allow_module_level=True)

BRIDGE = "shm-br0"
GATEWAY = "198.22.0.254"
CALL = "busctl call org.darkkitchen.Shoutd /org/darkkitchen/Shoutd org.darkkitchen.Shoutd"
LOSS = re.compile(r"(\d+)/\s*(\d+) \(")


def wait(pred, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.time() < deadline, "timed out waiting for " + what
        time.sleep(0.5)


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


@pytest.fixture(scope="module")
def machines(deb, pysyncobj_deb):
    tree, apt_log = installed_tree([pysyncobj_deb, deb], build_image(IMAGE_CACHE))
    work = tempfile.mkdtemp(prefix="shoutd-machines-", dir="/var/tmp")
    sh("ip link add %s type bridge && ip link set %s up" % (BRIDGE, BRIDGE))
    sh("iptables -I FORWARD -i %s -o %s -j ACCEPT" % (BRIDGE, BRIDGE), check=False)
    ms = []
    try:
        # The documented cluster step: one secret, the same file on every host.
        secret = secrets.token_urlsafe(32) + "\n"
        for n in (1, 2, 3):
            m = Machine(tree, "shoutd-m%d" % n, BRIDGE, "198.22.0.%d" % n, GATEWAY, work)
            m.write("/etc/shoutd/secret", secret, 0o600)
            ms.append(m)
        for m in ms:
            m.boot()
        for m in ms:
            m.wait_booted()
        for m in ms:
            m.run("docker import /root/image.tar shoutd-lab", timeout=300)
        ms[0].apt_log = apt_log
        ms[0].work = work
        yield ms
    finally:
        for m in ms:
            m.poweroff()
        sh("ip link del " + BRIDGE, check=False)
        sh("iptables -D FORWARD -i %s -o %s -j ACCEPT" % (BRIDGE, BRIDGE), check=False)
        shutil.rmtree(work, ignore_errors=True)


def status(m):
    out = m.run("busctl --json=short call org.darkkitchen.Shoutd /org/darkkitchen/Shoutd "
                "org.darkkitchen.Shoutd Status").stdout
    return {k: v["data"] for k, v in json.loads(out)["data"][0].items()}


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


def test_enable_now_leaves_the_service_active_after_ready(machines):
    for m in machines:
        m.run("systemctl enable --now shoutd")
        assert m.run("systemctl is-active shoutd").stdout.strip() == "active"
        text = m.run("systemctl show -p StatusText --value shoutd").stdout
        assert text.startswith("leader "), text
        assert m.run("systemctl is-active shoutd.socket").stdout.strip() == "active"
        mode = m.run("stat -c '%a %U %G' /run/docker/plugins/shoutd.sock").stdout.split()
        assert mode == ["660", "root", "docker"], mode


def test_introspection_and_who_may_do_what(machines):
    m = machines[0]
    out = m.run("busctl introspect org.darkkitchen.Shoutd /org/darkkitchen/Shoutd").stdout
    for member in ("AddPeer", "RemovePeer", "Status", "Leader", "Peers", "Networks", "PeerJoined"):
        assert "." + member in out, out
    assert "Self" in m.run(CALL + " Status", user=65534).stdout
    denied = m.run(CALL + " AddPeer s 198.22.0.9", user=65534, check=False)
    assert denied.returncode != 0 and "Access denied" in denied.stderr, denied.stderr


def test_busctl_addpeer_forms_the_cluster(machines):
    m1 = machines[0]
    for m in machines[1:]:
        m1.run(CALL + " AddPeer s %s" % m.ip)
    addrs = sorted("%s:7380" % m.ip for m in machines)
    for m in machines:
        wait(lambda m=m: sorted(x[0] for x in status(m)["Members"]) == addrs, what="members on " + m.name)
        wait(lambda m=m: all(x[1] for x in status(m)["Members"]), what="VTEPs on " + m.name)
    leaders = {status(m)["Leader"] for m in machines}
    assert len(leaders) == 1 and leaders.pop() in addrs


def test_network_and_multicast_between_two_machines(machines):
    m1, m2, _ = machines
    m1.run("docker network create -d shoutd --ipam-driver shoutd mc")
    wait(lambda: "mc" in m2.run("docker network ls --format '{{.Name}}'").stdout.split(), what="mirrored network")
    m2.run("docker run -d --name rx --network mc shoutd-lab iperf -u -s -B 224.4.4.4 -p 5003")
    m1.run("docker run -d --name tx --network mc shoutd-lab sleep 600")
    time.sleep(1)
    m1.run("docker exec tx iperf -u -c 224.4.4.4 -p 5003 -T 2 -t 5", timeout=60)
    time.sleep(2)
    reports = [(int(a), int(b)) for a, b in LOSS.findall(m2.run("docker logs rx").stdout)]
    lost, total = max(reports, key=lambda r: r[1])
    assert total > 300 and lost == 0, (lost, total)
    m1.run("docker rm -f tx")
    m2.run("docker rm -f rx")


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


def test_upgrade_keeps_the_cluster_state_and_restarts(machines):
    m1 = machines[0]
    newer = sh(["bash", os.path.join(ROOT, "packaging/build-deb"), "0.1.0+upgrade1"]).stdout.strip().splitlines()[-1]
    shutil.copy(newer, os.path.join(m1.root, "root/"))
    before = status(m1)
    pid = m1.run("systemctl show -p MainPID --value shoutd").stdout.strip()
    m1.run("apt-get install -y -q ./root/%s" % os.path.basename(newer), timeout=300)
    assert m1.run("dpkg-query -W -f='${Version}' shoutd").stdout == "0.1.0+upgrade1"
    wait(lambda: m1.run("systemctl is-active shoutd", check=False).stdout.strip() == "active", what="active")
    assert m1.run("systemctl show -p MainPID --value shoutd").stdout.strip() != pid, "restarted"
    after = wait(lambda: (lambda st: st if st["Ready"] and st["Leader"] else None)(status(m1)), what="ready")
    assert sorted(x[0] for x in after["Members"]) == sorted(x[0] for x in before["Members"])
    assert [n[0] for n in after["Networks"]] == [n[0] for n in before["Networks"]]
    assert "mc" in [n[0] for n in after["Networks"]]


def test_purge_removes_state_and_secret(machines):
    m3 = machines[2]
    assert m3.run("test -d /var/lib/shoutd").returncode == 0
    m3.run("apt-get purge -y -q shoutd", timeout=300)
    for path in ("/var/lib/shoutd", "/etc/shoutd/secret", "/etc/shoutd/shoutd.conf"):
        assert m3.run("test -e %s" % path, check=False).returncode != 0, path
    assert m3.run("systemctl is-active shoutd.socket", check=False).stdout.strip() != "active"
