"""Swarm networks: the NetworkDriver calls that differ when the managed plugin relays them.

A swarm network (`docker network create -d darkkitchen/shoutd --scope swarm`,
or a stack's `driver: darkkitchen/shoutd`) has one id on every node, and
swarm's IPAM on the leading manager hands out its subnet and every address in
it, tasks' and attached containers' alike.  shoutd follows
(state/networks.py, `network_follow`): it gives the network a VNI and a port
and records endpoints with the addresses swarm chose.  Endpoints, Join and
Leave are the same calls as on shoutd's own networks (driver.py).
"""

import logging

from .. import checks
from ..errors import ShoutdError
from ..state import network_label, ops
from .driver import IPV4_ONLY, network_options

log = logging.getLogger(__name__)


def _ipv4(ipv4_data, ipv6_data, network_id):
    """(subnet, gateway) of a swarm network's IPv4 data."""
    if ipv6_data:
        raise ShoutdError(IPV4_ONLY)
    if not ipv4_data or not isinstance(ipv4_data[0], dict):
        raise ShoutdError("swarm network %s has no IPv4 subnet; shoutd networks are IPv4 networks"
                          % network_id[:12])
    data = ipv4_data[0]
    subnet = checks.subnet(data.get("Pool"), "IPv4Data Pool")
    gateway = str(data.get("Gateway") or "").split("/")[0] or None
    return subnet, gateway


class SwarmNetworks:
    def __init__(self, cluster, reconciler):
        self.cluster = cluster
        self.reconciler = reconciler

    async def _follow(self, swarm_id, ipv4_data, ipv6_data, driver_options):
        checks.swarm_id(swarm_id, "NetworkID")
        subnet, gateway = _ipv4(ipv4_data, ipv6_data, swarm_id)
        checks.multicast_mode(driver_options.get("multicast", checks.PRUNED))
        net = await self.cluster.submit(ops.network_follow(self.cluster.node, swarm_id, subnet, gateway,
                                                           driver_options, self.cluster.config.network_port))
        return net

    async def allocate(self, swarm_id, options, ipv4_data, ipv6_data):
        """AllocateNetwork, on the leading manager: the network joins the cluster state."""
        options = checks.options(options, "driver options")
        net = await self._follow(swarm_id, ipv4_data, ipv6_data, options)
        log.info("swarm network %s (%s) followed as VNI %d, UDP port %d, multicast %s", swarm_id[:12],
                 net["subnet"], net["vni"], net["port"], net["multicast"])
        return {}

    async def free(self, swarm_id):
        """FreeNetwork: swarm removed the network; so does shoutd, on every host."""
        checks.swarm_id(swarm_id, "NetworkID")
        net = await self.cluster.submit(ops.network_unfollow(self.cluster.node, swarm_id))
        if net is not None:
            log.info("swarm network %s (%s, VNI %d) removed from the cluster", swarm_id[:12], net["subnet"],
                     net["vni"])
        self.reconciler.kick()

    async def create_network(self, swarm_id, ipv4_data, options):
        """CreateNetwork on a node that runs a task (or an attached container) on the network."""
        generic = network_options(options)
        net = await self._follow(swarm_id, ipv4_data, [], generic)
        await self.cluster.submit(ops.network_bind(self.cluster.node, net["id"], swarm_id, {}))
        log.info("swarm network %s (%s, VNI %d) set up on this host", swarm_id[:12], net["subnet"], net["vni"])
        await self.reconciler.reconcile()

    async def delete_network(self, swarm_id):
        checks.swarm_id(swarm_id, "NetworkID")
        net = self.cluster.state().network_by_swarm_id(swarm_id)
        if net is None:
            return                 # freed already
        await self.cluster.submit(ops.network_unbind(self.cluster.node, net["id"]))
        log.info("swarm network %s (%s) no longer used on this host", swarm_id[:12], network_label(net))

