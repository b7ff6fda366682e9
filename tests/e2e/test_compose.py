"""Compose on three lab hosts: the README's compose file, on each Docker release of the lab.

Docker 20.10 is driven by Debian 12's Compose v1 and 28.5.2 by Debian
unstable's Compose v2, each against its own engine.  (The machine tier runs
the same file with the packages installed by apt, on Debian 12 and 13.)
"""

import json
import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import readme  # noqa: E402
from lab import IMAGE, Lab  # noqa: E402
from support import wait_for  # noqa: E402

pytestmark = pytest.mark.e2e
if os.geteuid() != 0 or not shutil.which("dockerd"):
    pytest.skip("end-to-end tests need root and dockerd", allow_module_level=True)


@pytest.fixture(scope="module")
def lab(engine):
    with Lab(3, prefix="co", engine=engine) as lab:
        yield lab


@pytest.fixture
def project():
    """The README's compose file, with the lab's image (there is no registry to pull busybox from)."""
    directory = tempfile.mkdtemp(prefix="shoutd-compose-")
    with open(os.path.join(directory, "docker-compose.yml"), "w") as f:
        f.write(readme.block("compose").replace("image: busybox", "image: " + IMAGE))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def node(host, directory):
    """(container id, its address on web_lan) of the project's container on `host`."""
    cid = host.compose(directory, "web", "ps", "-q", "node").stdout.split()[0]
    return cid, json.loads(host.docker("inspect", cid).stdout)[0]["NetworkSettings"]["Networks"]["web_lan"]["IPAddress"]


def networks(host):
    return host.docker("network", "ls", "--format", "{{.Name}}").stdout.split()


def test_one_compose_file_on_every_host_makes_one_network_with_multicast(lab, project):
    h1, h2, h3 = lab.hosts
    h1.compose(project, "web", "up", "-d")
    for h in (h2, h3):      # shoutd makes the network on the other hosts, labelled as Compose made it
        wait_for(lambda h=h: "web_lan" in networks(h), what="web_lan on " + h.name)
        h.compose(project, "web", "up", "-d")
    nodes = {h.n: node(h, project) for h in lab.hosts}
    c1 = nodes[1][0]
    for n in (2, 3):
        assert h1.exec(c1, "ping", "-c", "2", "-W", "2", nodes[n][1], check=False).returncode == 0, "ping to host %d" % n
    lost, total = h1.multicast(c1, h2, nodes[2][0], "224.6.6.6", 5006, seconds=3)
    assert total > 100 and lost == 0, (lost, total)

    # Down on one host: the others keep talking, and a later up there works again.
    h2.compose(project, "web", "down")
    assert h1.exec(c1, "ping", "-c", "2", "-W", "2", nodes[3][1], check=False).returncode == 0
    wait_for(lambda: "web_lan" in networks(h2), what="web_lan back on h2 (still used elsewhere)")
    h2.compose(project, "web", "up", "-d")
    assert h1.exec(c1, "ping", "-c", "2", "-W", "2", node(h2, project)[1], check=False).returncode == 0

    # Down on every host: the last one removes the network everywhere.
    for h in lab.hosts:
        h.compose(project, "web", "down")
    for h in lab.hosts:
        wait_for(lambda h=h: "web_lan" not in networks(h), what="web_lan gone from " + h.name)
