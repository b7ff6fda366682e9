"""End to end with a replica (issue 16): three voters and one replica host, each with its own dockerd.

Host 4 joins by AddPeer on host 1 and so becomes a replica (shoutd/roles.py):
it follows the state through one voter's feed and writes through it.  What
Docker sees there must be what it sees on a voter.
"""

import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lab import Lab  # noqa: E402
from support import wait_for  # noqa: E402

pytestmark = pytest.mark.e2e
if os.geteuid() != 0 or not shutil.which("dockerd"):
    pytest.skip("end-to-end tests need root and dockerd", allow_module_level=True)


@pytest.fixture(scope="module")
def lab(engine):
    with Lab(4, engine=engine, replicas=1, prefix="rl") as lab:
        yield lab


def ping(host, container, ip):
    return host.exec(container, "ping", "-c", "2", "-W", "2", ip, check=False).returncode == 0


def test_a_network_made_on_the_replica_carries_the_multicast_demo_and_outlives_the_leader(lab):
    h1, h2, h3, replica = lab.hosts
    assert "replica of " in replica.log_tail(200000), "host 4 joined as a replica"
    replica.docker("network", "create", "-d", "shoutd", "--ipam-driver", "shoutd", "rep")
    for h in lab.hosts:
        wait_for(lambda h=h: "rep" in h.docker("network", "ls", "--format", "{{.Name}}").stdout.split(),
                 what="network rep on " + h.name)
    replica.run("tx", "rep")
    h2.run("rx", "rep")
    lost, total = replica.multicast("tx", h2, "rx", "224.4.4.4", 5004, seconds=4)
    assert total > 200 and lost == 0, (lost, total)
    rx_ip = h2.container_ip("rx", "rep")
    assert ping(replica, "tx", rx_ip)

    # The leader's shoutd killed: the replica's containers stay connected, and once a new leader is in
    # place the replica allocates again (a container started there gets an address of its own).
    leader = lab.leader()
    leader.kill_shoutd()
    assert ping(replica, "tx", rx_ip), "the data plane is the kernel's: it does not wait for a leader"
    replica.run("tx2", "rep")
    ips = {replica.container_ip("tx", "rep"), replica.container_ip("tx2", "rep"), rx_ip}
    assert len(ips) == 3, ips
    assert ping(replica, "tx2", rx_ip)
    leader.start_shoutd()
    lab.wait_ready()
