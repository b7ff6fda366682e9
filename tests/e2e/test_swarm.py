"""Swarm services on shoutd's managed plugin, and shoutd's networks beside Docker's own overlay networks.

Three lab hosts form a swarm (one manager, two workers); shoutd installs the
managed plugin darkkitchen/shoutd in each host's Docker as it starts.
A stack on a darkkitchen/shoutd network: names and tasks resolve on every
node, multicast crosses nodes, and scaling, rolling updates and draining keep
every address unique and connected; `docker stack rm` leaves nothing behind.

Docker's overlay
carries VXLAN on UDP 4789 with VNIs from 4096 up, or any VNI a user names
(`vxlanid_list`); shoutd's networks have VNIs from 4200 up.  Two VXLAN
devices with one VNI on one port cannot both exist on a host, so shoutd keeps
its networks on a port of their own: here an overlay network is forced onto
a shoutd network's VNI, in both orders, and both carry traffic.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lab import Lab  # noqa: E402
from support import Capture, iperf_summary, wait_for  # noqa: E402

pytestmark = pytest.mark.e2e
if os.geteuid() != 0 or not shutil.which("dockerd"):
    pytest.skip("end-to-end tests need root and dockerd", allow_module_level=True)

OVERLAY_VNI = "com.docker.network.driver.overlay.vxlanid_list"


PLUGIN = "darkkitchen/shoutd:latest"
STACK = """version: "3.8"
services:
  a: &server
    image: shoutd-lab
    command: ["sh", "-c", "while true; do nc -l -p 81 -e hostname; done"]
    networks: [mesh]
    deploy:
      mode: global
      endpoint_mode: dnsrr
  b: *server
networks:
  mesh:
    driver: %s
    attachable: true
""" % PLUGIN
MESH = "st_mesh"


@pytest.fixture(scope="module")
def lab(engine):
    with Lab(3, prefix="sw", engine=engine, managed_plugin=True) as lab:
        lab.swarm()
        for h in lab.hosts:
            wait_for(lambda h=h: plugins(h) == [PLUGIN + " true"], timeout=60,
                     what="the managed plugin enabled on " + h.name)
        yield lab


def plugins(host):
    return [line for line in host.docker("plugin", "ls", "--format", "{{.Name}} {{.Enabled}}").stdout.split("\n")
            if line]


@pytest.fixture(scope="module")
def stack(lab):
    """The stack above, deployed from host 1, with a task of each service on every node."""
    directory = tempfile.mkdtemp(prefix="shoutd-stack-")
    with open(os.path.join(directory, "stack.yml"), "w") as f:
        f.write(STACK)
    lab.hosts[0].docker("stack", "deploy", "--resolve-image", "never", "-c", os.path.join(directory, "stack.yml"), "st")
    for service in ("st_a", "st_b"):
        converged(lab, service, len(lab.hosts))
    yield "st"
    shutil.rmtree(directory, ignore_errors=True)


def converged(lab, service, count):
    """Until `service` runs `count` tasks, each with its address on the mesh."""
    def running():
        return len(tasks(lab, service)) == count
    wait_for(running, timeout=120, interval=1, what="%d running tasks of %s" % (count, service))


def tasks(lab, service, hosts=None):
    """[(host, container id)] of the running tasks of `service`, on every node (or on `hosts`)."""
    return [(h, cid) for h in hosts or lab.hosts for cid in h.tasks(service)]


def mesh_addresses(lab, hosts=None):
    """{address: [(host name, container)]} of every running container on the mesh, on every node (or `hosts`)."""
    seen = {}
    for h in hosts or lab.hosts:
        for cid in h.docker("ps", "-q", "--filter", "network=" + MESH).stdout.split():
            info = json.loads(h.docker("inspect", cid).stdout)[0]
            ip = info["NetworkSettings"]["Networks"][MESH]["IPAddress"]
            seen.setdefault(ip, []).append((h.name, cid))
    return seen


def lookup(host, cid, name):
    """The addresses Docker's DNS gives for `name` inside container `cid`."""
    out = host.exec(cid, "nslookup", name, "127.0.0.11", check=False).stdout
    return sorted(re.findall(r"Address: (\d+\.\d+\.\d+\.\d+)$", out, re.M))


def all_connected(lab, label, hosts=None):
    """Every address on the mesh is unique, and one container reaches every other one."""
    seen = mesh_addresses(lab, hosts)
    doubles = {ip: holders for ip, holders in seen.items() if len(holders) > 1}
    assert not doubles, "%s: addresses held twice: %s" % (label, doubles)
    host, cid = seen[min(seen)][0]
    h = next(x for x in lab.hosts if x.name == host)
    for ip in seen:
        res = h.exec(cid, "ping", "-c", "1", "-W", "2", ip, check=False)
        assert res.returncode == 0, "%s: %s on %s cannot reach %s (%s)" % (
            label, cid[:12], host, ip, ", ".join("%s on %s" % (c[:12], n) for n, c in seen[ip]))
    return seen


def kernel_veths(host):
    return [line for line in host.netns("ip", "-o", "link").stdout.splitlines() if " shv" in line]


def vni_of(host, network):
    """The VNI of a shoutd network on this host: its VXLAN device's alias names the network once it is named."""
    def found():
        for link in json.loads(host.netns("ip", "-d", "-j", "link", "show", "type", "vxlan").stdout):
            if link["ifname"].startswith("shx") and ("shoutd network %s VNI" % network) in link.get("ifalias", ""):
                return link["linkinfo"]["info_data"]["id"]
        return None
    return wait_for(found, what="the VXLAN device of %s on %s" % (network, host.name))


def run_on(lab, network, tag):
    """A container on `network` on hosts 1 and 2; returns host 2's address."""
    h1, h2, _ = lab.hosts
    h1.run("%s1" % tag, network)
    h2.run("%s2" % tag, network)
    return h2.container_ip("%s2" % tag, network)


def pings(lab, tag, ip):
    res = lab.hosts[0].exec("%s1" % tag, "ping", "-c", "2", "-W", "2", ip, check=False)
    return res.returncode == 0


def multicast_passes(lab, tag):
    h1, h2, _ = lab.hosts
    lost, total = h1.multicast("%s1" % tag, h2, "%s2" % tag, "224.8.8.8", 5008)
    return total > 100 and lost == 0


def overlay(lab, name, vni=None):
    args = ["network", "create", "-d", "overlay", "--attachable"]
    if vni is not None:
        args += ["-o", "%s=%d" % (OVERLAY_VNI, vni)]
    lab.hosts[0].docker(*args, name)


def test_shoutd_networks_work_on_swarm_nodes_beside_an_overlay_network(lab):
    lab.create_network("sh1")
    overlay(lab, "ov1")
    ip = run_on(lab, "sh1", "s")
    assert pings(lab, "s", ip) and multicast_passes(lab, "s")
    ip = run_on(lab, "ov1", "o")
    assert pings(lab, "o", ip), "Docker's overlay works beside shoutd"


def test_an_overlay_forced_onto_a_shoutd_network_s_vni_leaves_both_working(lab):
    lab.create_network("sh2")
    vni = vni_of(lab.hosts[0], "sh2")
    overlay(lab, "ov2", vni)
    ip_o = run_on(lab, "ov2", "p")
    ip_s = run_on(lab, "sh2", "q")
    assert pings(lab, "p", ip_o), "the overlay on VNI %d" % vni
    assert pings(lab, "q", ip_s) and multicast_passes(lab, "q"), "shoutd's network on VNI %d" % vni


def test_a_shoutd_network_made_on_an_overlay_s_vni_leaves_both_working(lab):
    # shoutd hands out the lowest free VNI from 4200: take the one it will give next, for an overlay first.
    used = {int(v) for v in re.findall(r"\bshx(\d+)", lab.hosts[0].netns("ip", "-o", "link").stdout)}
    vni = min(v for v in range(4200, 4300) if v not in used)
    overlay(lab, "ov3", vni)
    ip_o = run_on(lab, "ov3", "r")
    lab.create_network("sh3")
    assert vni_of(lab.hosts[0], "sh3") == vni
    ip_s = run_on(lab, "sh3", "t")
    assert pings(lab, "r", ip_o), "the overlay on VNI %d" % vni
    assert pings(lab, "t", ip_s) and multicast_passes(lab, "t"), "shoutd's network on VNI %d" % vni


def test_installing_the_plugin_again_changes_nothing_and_a_removed_one_comes_back(lab):
    h1, _, h3 = lab.hosts
    assert h1.plugin("install").stdout.strip() == PLUGIN + " is up to date"
    assert plugins(h1) == [PLUGIN + " true"]
    assert "managed plugin: created " + PLUGIN in open(h1.log).read(), "shoutd installed it as it started"
    assert h3.plugin("remove").stdout.strip() == "removed " + PLUGIN and plugins(h3) == []
    assert h3.plugin("install").stdout.startswith("created " + PLUGIN)
    assert plugins(h3) == [PLUGIN + " true"]


def test_a_stack_s_names_resolve_to_tasks_on_every_node_and_multicast_crosses_nodes(lab, stack):
    a = dict((h.n, cid) for h, cid in tasks(lab, "st_a"))
    b_addresses = sorted(ip for ip, holders in mesh_addresses(lab).items()
                         if any(cid in {c for _, c in tasks(lab, "st_b")} for _, cid in holders))
    assert len(b_addresses) == 3
    for h in lab.hosts:
        for name in ("st_b", "b", "tasks.st_b"):
            assert lookup(h, a[h.n], name) == b_addresses, (h.name, name)
    h1, h2, h3 = lab.hosts
    # Connections by name go to tasks on several nodes (endpoint mode dnsrr: see docs/swarm.md).
    answers = {h1.exec(a[1], "nc", "-w", "2", "st_b", "81", check=False).stdout.strip() for _ in range(12)}
    assert len(answers - {""}) >= 2, answers
    lost, total = h1.multicast(a[1], h2, a[2], "224.8.8.9", 5009)
    assert total > 100 and lost == 0, (lost, total)
    lost, total = h3.multicast(a[3], h1, a[1], "239.1.2.3", 5010)
    assert total > 100 and lost == 0, (lost, total)


SEND_MDNS_AND_VRRP = """
import socket, struct
mdns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
mdns.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
mdns.sendto(b"\\0\\0\\0\\0\\0\\1\\0\\0\\0\\0\\0\\0\\6shoutd\\5local\\0\\0\\1\\0\\1", ("224.0.0.251", 5353))
vrrp = socket.socket(socket.AF_INET, socket.SOCK_RAW, 112)
vrrp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
vrrp.sendto(struct.pack("!BBBBBBH", 0x21, 51, 100, 0, 0, 1, 0), ("224.0.0.18", 0))
"""


def test_mdns_and_vrrp_from_a_task_reach_tasks_on_every_other_node(lab, stack):
    a = dict((h.n, cid) for h, cid in tasks(lab, "st_a"))
    h1 = lab.hosts[0]
    waits = {h.n: h.capture(a[h.n], "dst 224.0.0.251 or ip proto 112", count=2) for h in lab.hosts[1:]}
    pid = json.loads(h1.docker("inspect", a[1]).stdout)[0]["State"]["Pid"]
    subprocess.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", SEND_MDNS_AND_VRRP], check=True)
    for n, seen in waits.items():
        out = seen()
        assert "224.0.0.251.5353" in out and "shoutd.local" in out, (n, out)
        assert "224.0.0.18" in out and "vrrp" in out.lower(), (n, out)


def test_a_group_reaches_only_the_nodes_where_a_task_listens(lab, stack):
    h1, h2, h3 = lab.hosts
    a = dict((h.n, cid) for h, cid in tasks(lab, "st_a"))
    group, vni = "239.5.5.5", vni_of_swarm_network(h1)
    h2.docker("exec", "-d", a[2], "sh", "-c", "iperf -u -s -B %s -p 5011 > /tmp/rx5011.log 2>&1" % group)

    def mdb_entries():
        out = h1.netns("bridge", "mdb", "show", "dev", "shx%d" % vni).stdout
        return sum(1 for line in out.splitlines() if (" grp %s " % group) in (line + " "))
    wait_for(lambda: mdb_entries() == 1, timeout=15, what="host 1 to send %s to host 2 only" % group)
    caps = {h.n: Capture(["nsenter", "--net=/run/netns/" + h.name, "tcpdump", "-lni", "eth0", "-T", "vxlan",
                          "udp port 7380"]) for h in (h2, h3)}
    h1.exec(a[1], "iperf", "-u", "-c", group, "-p", "5011", "-T", "4", "-b", "5M", "-t", "2", timeout=60)
    lost, total = wait_for(lambda: iperf_summary(h2.exec(a[2], "cat", "/tmp/rx5011.log").stdout, 2),
                           what="the listening task's report")
    counts = {n: cap.count(group) for n, cap in caps.items()}
    for cap in caps.values():
        cap.stop()
    assert total > 500 and lost == 0, (lost, total)
    assert counts[2] > 500, counts
    assert counts[3] == 0, "no task on %s listens, yet its underlay carried %d packets of %s" % (
        h3.name, counts[3], group)


def test_scaling_rolling_updates_and_draining_keep_addresses_unique_and_connected(lab, stack):
    h1, h2, _ = lab.hosts
    h1.docker("service", "create", "-d", "--name", "st_r", "--replicas", "6", "--endpoint-mode", "dnsrr",
              "--network", MESH, "shoutd-lab", "sleep", "1d")
    converged(lab, "st_r", 6)
    all_connected(lab, "scaled to 6")
    h1.docker("service", "scale", "-d", "st_r=2")
    converged(lab, "st_r", 2)
    all_connected(lab, "scaled to 2")
    h1.docker("service", "update", "-d", "--force", "--update-parallelism", "1", "st_r")
    wait_for(lambda: "completed" in h1.docker("service", "inspect", "--format", "{{.UpdateStatus.State}}",
                                              "st_r").stdout, timeout=120, what="the rolling update of st_r")
    converged(lab, "st_r", 2)
    all_connected(lab, "after a rolling update")
    node2 = h2.node_id()
    h1.docker("node", "update", "--availability", "drain", node2)
    try:
        wait_for(lambda: not h2.docker("ps", "-q", "--filter", "network=" + MESH).stdout.strip(), timeout=120,
                 what="no task left on drained " + h2.name)
        converged(lab, "st_r", 2)
        all_connected(lab, "with %s drained" % h2.name)
        assert not kernel_veths(h2), "a drained node keeps no container's veth"
    finally:
        h1.docker("node", "update", "--availability", "active", node2)
    for service in ("st_a", "st_b"):
        converged(lab, service, 3)
    seen = all_connected(lab, "with %s active again" % h2.name)
    h1.docker("service", "rm", "st_r")
    wait_for(lambda: len(mesh_addresses(lab)) == len(seen) - 2, what="st_r's tasks gone")
    for h in lab.hosts:
        local = h.docker("ps", "-q", "--filter", "network=" + MESH).stdout.split()
        wait_for(lambda h=h, local=local: len(kernel_veths(h)) == len(local),
                 what="one veth per container on %s, none left over" % h.name)


ATTACHED_PROJECT = """version: "3.7"
services:
  node:
    image: shoutd-lab
    command: ["sleep", "3600"]
    networks: [mesh]
networks:
  mesh:
    external: true
    name: %s
""" % MESH


def test_a_plugin_replaced_under_running_tasks_serves_the_next_ones(lab, stack):
    """What an upgrade whose relay changed does (managed.install): remove and create, tasks running."""
    h1, _, h3 = lab.hosts
    assert h3.plugin("remove").stdout.startswith("removed ")
    assert h3.plugin("install").stdout.startswith("created ")
    h1.docker("service", "update", "-d", "--force", "st_b")
    wait_for(lambda: "completed" in h1.docker("service", "inspect", "--format", "{{.UpdateStatus.State}}",
                                              "st_b").stdout, timeout=180, interval=1, what="st_b updated")
    converged(lab, "st_b", 3)
    all_connected(lab, "with %s's plugin replaced" % h3.name)


def test_a_docker_run_container_and_a_compose_project_reach_services_by_name(lab, stack):
    _, h2, h3 = lab.hosts
    h2.run("att", MESH)
    directory = tempfile.mkdtemp(prefix="shoutd-attached-")
    with open(os.path.join(directory, "docker-compose.yml"), "w") as f:
        f.write(ATTACHED_PROJECT)
    try:
        h3.compose(directory, "side", "up", "-d")
        project = h3.compose(directory, "side", "ps", "-q", "node").stdout.split()[0]
        b = sorted(ip for ip in lookup(h2, "att", "st_b"))
        assert len(b) == 3
        for host, cid in ((h2, "att"), (h3, project)):
            assert lookup(host, cid, "st_b") == b and lookup(host, cid, "tasks.st_b") == b, host.name
            assert host.exec(cid, "nc", "-w", "2", "st_b", "81").stdout.strip(), host.name
            for ip in b:
                assert host.exec(cid, "ping", "-c", "1", "-W", "2", ip, check=False).returncode == 0, (host.name, ip)
        all_connected(lab, "with a docker run container and a Compose project attached")
    finally:
        h3.compose(directory, "side", "down", check=False)
        shutil.rmtree(directory, ignore_errors=True)


def test_a_node_that_leaves_the_swarm_keeps_nothing_and_comes_back_connected(lab, stack):
    h1, _, h3 = lab.hosts
    node3 = h3.node_id()
    h3.docker("swarm", "leave", timeout=120)
    wait_for(lambda: not h3.docker("ps", "-q", "--filter", "label=com.docker.swarm.task.id").stdout.strip(),
             timeout=60, what="no task left on " + h3.name)
    wait_for(lambda: not kernel_veths(h3), timeout=30, what="no veth left on " + h3.name)
    all_connected(lab, "with %s out of the swarm" % h3.name, lab.hosts[:2])
    h1.docker("node", "rm", "--force", node3)
    token = h1.docker("swarm", "join-token", "-q", "worker").stdout.strip()
    h3.docker("swarm", "join", "--advertise-addr", h3.ip, "--token", token, h1.ip + ":2377", timeout=120)
    for service in ("st_a", "st_b"):
        converged(lab, service, 3)
    all_connected(lab, "with %s back in the swarm" % h3.name)


def test_the_leading_manager_killed_leaves_the_network_working_and_swarm_allocating(lab, stack):
    """Three managers; the leader's dockerd is killed: a new leader allocates, and no address is held twice."""
    h1, h2, h3 = lab.hosts
    node1 = h1.node_id()
    h1.docker("node", "promote", h2.node_id(), h3.node_id())
    wait_for(lambda: h1.docker("node", "ls", "--format", "{{.ManagerStatus}}").stdout.split().count("Reachable") == 2,
             timeout=60, what="hosts 2 and 3 reachable managers")
    try:
        os.kill(h1.dockerd.pid, signal.SIGKILL)
        h1.dockerd.wait()
        h1.dockerd = None
        survivors = [h2, h3]
        wait_for(lambda: "Leader" in h2.docker("node", "ls", "--format", "{{.ManagerStatus}}", check=False).stdout,
                 timeout=90, interval=1, what="a new leading manager")

        def created():
            # Swarm's own Raft may still be settling ("node lost leader status"): its business, so try again.
            res = h2.docker("service", "create", "-d", "--name", "st_f", "--replicas", "4", "--endpoint-mode",
                            "dnsrr", "--constraint", "node.id!=" + node1, "--network", MESH, "shoutd-lab", "sleep",
                            "1d", check=False, timeout=120)
            return res.returncode == 0 or "already exists" in res.stderr
        wait_for(created, timeout=120, interval=2, what="st_f created through the new leading manager")
        wait_for(lambda: len(tasks(lab, "st_f", survivors)) == 4, timeout=120, interval=1,
                 what="st_f's tasks, allocated by the new leader")
        all_connected(lab, "after the leader's dockerd was killed", survivors)
    finally:
        if h1.dockerd is None:
            h1.start_dockerd()
    wait_for(lambda: h2.docker("node", "inspect", "--format", "{{.Status.State}}", node1).stdout.strip() == "ready",
             timeout=120, interval=1, what="host 1 back in the swarm")
    for service in ("st_a", "st_b"):
        converged(lab, service, 3)
    all_connected(lab, "with host 1 back")
    h2.docker("service", "rm", "st_f")


def test_stack_rm_removes_the_network_and_its_kernel_state_everywhere(lab, stack):
    h1 = lab.hosts[0]
    vni = vni_of_swarm_network(h1)
    h1.docker("stack", "rm", stack)
    for h in lab.hosts:
        wait_for(lambda h=h: MESH not in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split(),
                 timeout=60, what="%s gone on %s" % (MESH, h.name))
        wait_for(lambda h=h: ("shx%d" % vni) not in h.netns("ip", "-o", "link").stdout and not kernel_veths(h),
                 timeout=30, what="VNI %d's devices and every veth gone on %s" % (vni, h.name))
    # FreeNetwork comes from the leading manager, host 2 or 3 since host 1's dockerd was killed.
    assert any("removed from the cluster" in line for h in lab.hosts for line in open(h.log).read().splitlines()
               if "swarm network" in line)


def vni_of_swarm_network(host):
    """The VNI shoutd gave the stack's network, from its log line on host 1."""
    net_id = host.docker("network", "inspect", "--format", "{{.Id}}", MESH).stdout.strip()
    found = re.findall(r"swarm network %s \S+ followed as VNI (\d+)|swarm network %s \(\S+, VNI (\d+)\) set up"
                       % (net_id[:12], net_id[:12]), open(host.log).read())
    assert found, "no log line names the VNI of %s" % net_id
    return int([v for pair in found for v in pair if v][0])
