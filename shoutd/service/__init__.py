"""What shoutd does, independent of who asks: the one layer the adapters call.

The Docker plugin, D-Bus and the CLI are thin translations onto these
methods, one module per API area (as Docker's own drivers split theirs):

- cluster.py     what every area shares: this host's view of the replicated
                 state, proposing operations, the copies the mirror is making
- membership.py  the cluster's members and its status (D-Bus, shoutdctl)
- ipam.py        Docker's IpamDriver API: pools and addresses
- driver.py      Docker's NetworkDriver API: networks, endpoints, join/leave
- swarm.py       the NetworkDriver calls of swarm networks (the managed plugin)
- authz.py       Docker's AuthZ API: refusing to remove a network in use elsewhere

Each method checks its input, proposes one operation to the replicated state,
and (where the kernel must change before the caller goes on) waits for the
reconciler.  Nothing here touches netlink or Docker.
"""

from .authz import Authz
from .cluster import Cluster
from .driver import MULTICAST, NETWORK_OPTION, NetworkDriver, mac_for
from .ipam import Ipam
from .membership import Membership
from .swarm import SwarmNetworks

__all__ = ["Authz", "Cluster", "Ipam", "MULTICAST", "Membership", "NETWORK_OPTION", "NetworkDriver", "Service", "SwarmNetworks",
           "mac_for"]


class Service:
    """The areas, wired to one Cluster: adapters call service.<area>.<method>."""

    def __init__(self, raft, reconciler, node, config, on_network_changed=None, kernel_prunes=True):
        self.cluster = Cluster(raft, node, config, kernel_prunes, reconciler.firewall)
        self.membership = Membership(self.cluster)
        self.ipam = Ipam(self.cluster)
        self.driver = NetworkDriver(self.cluster, reconciler, on_network_changed)
        self.authz = Authz(self.cluster)
        self.swarm = SwarmNetworks(self.cluster, reconciler)
