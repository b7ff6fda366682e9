"""A host for the kernel tests: a network namespace with an underlay address and a netlink worker inside.

The kernel is always read back with iproute2, never with the code under
test, so a wrong reading and a wrong write cannot cancel each other out.
"""

import dataclasses
import json

from shoutd.dataplane.desired import desired
from shoutd.dataplane.firewall import Firewall
from shoutd.dataplane.reconciler import Underlay, program
from shoutd.dataplane.worker import Worker

from ..support import sh as run


def sh(cmd, check=True):
    """A command's output (see support.sh)."""
    return run(cmd, check=check).stdout


class Host:
    def __init__(self, name, ip):
        self.name, self.ip = name, ip
        self.worker = Worker(netns="/run/netns/" + name)
        self.firewall = Firewall()      # runs on the worker's thread, in this host's namespace

    def ip_json(self, args):
        out = sh("ip -n %s -d -j %s" % (self.name, args))
        return json.loads(out) if out.strip() else []

    def link(self, name):
        """iproute2's reading of one link, or None."""
        links = [l for l in self.ip_json("link show") if l["ifname"] == name]
        return links[0] if links else None

    def underlay(self):
        index, _, mtu = self.worker.call(lambda nl: nl.underlay(self.ip))
        return Underlay(self.ip, 4789, index, mtu)

    def reconcile(self, state, node, previous=None, fence=None, vxlan_mdb=True):
        """A pass as the daemon runs it; returns its plan, for a later change-only pass.

        `vxlan_mdb=False` is what the daemon does on a kernel before 6.4."""
        nets, eps = desired(state, node)
        underlay = dataclasses.replace(self.underlay(), vxlan_mdb=vxlan_mdb)
        self.worker.call(lambda nl: program(nl, nets, eps, underlay, previous, fence, self.firewall))
        return nets, eps
