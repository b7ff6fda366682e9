"""shoutd's networks on hosts that have joined a swarm, beside Docker's own overlay networks.

Three lab hosts form a swarm (one manager, two workers).  Docker's overlay
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
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lab import Lab  # noqa: E402
from support import wait_for  # noqa: E402

pytestmark = pytest.mark.e2e
if os.geteuid() != 0 or not shutil.which("dockerd"):
    pytest.skip("end-to-end tests need root and dockerd", allow_module_level=True)

OVERLAY_VNI = "com.docker.network.driver.overlay.vxlanid_list"


@pytest.fixture(scope="module")
def lab(engine):
    with Lab(3, prefix="sw", engine=engine) as lab:
        lab.swarm()
        yield lab


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
