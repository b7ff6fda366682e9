"""Docker's IpamDriver API: one pool per cluster network, addresses handed out cluster-wide.

Docker's default IPAM would hand out the same addresses on every host; here
every pool and address is an operation on the replicated state, decided in
the state machine, so two hosts never hand out the same address.
"""

import logging

from .. import checks
from ..errors import NOT_FOUND, ShoutdError
from ..state import network_label, ops
from .driver import IPV4_ONLY, NETWORK_OPTION

log = logging.getLogger(__name__)

GATEWAY_REQUEST = "com.docker.network.gateway"


class Ipam:
    def __init__(self, cluster):
        self.cluster = cluster

    async def request_pool(self, pool, sub_pool, options, v6):
        if v6:
            raise ShoutdError(IPV4_ONLY)
        if sub_pool:
            raise ShoutdError("--ip-range is not supported by shoutd; every container of a shoutd "
                              "network gets its address from the whole --subnet")
        options = checks.options(options, "IPAM options")
        network = options.get(NETWORK_OPTION)
        if pool and not network:
            subnet = checks.subnet(pool, "Pool")
            known = self.cluster.state().network_by_subnet(subnet)
            # The mirror making this host's copy, or Docker re-reserving the
            # pools of its networks as it starts: the cluster network it is.
            network = self.cluster.replica_of(subnet)
            if network is None and known is not None and self.cluster.node in known["bindings"]:
                network = known["id"]
        config = self.cluster.config
        # The port goes with the network only once every host knows the field (state version 4); until
        # then new networks are made as older releases make them, on the legacy port.
        op = ops.network_reserve(self.cluster.node, pool or None, network, config.default_pool,
                                 config.default_pool_prefix, port=config.network_port)
        net = await self.cluster.submit(ops.within(op, self.cluster.state().version))
        log.info("pool %s reserved for shoutd network %s VNI %d, UDP port %d", net["subnet"], net["id"], net["vni"],
                 net["port"] or config.legacy_port)
        return net["id"], net["subnet"]

    async def release_pool(self, pool_id):
        checks.own_id(pool_id, "PoolID")
        await self.cluster.submit(ops.network_release(self.cluster.node, pool_id))

    async def request_address(self, pool_id, address, options):
        net = await self.cluster.fresh_pool(pool_id)
        label, subnet = network_label(net), net["subnet"]
        prefix = subnet.split("/")[1]
        options = checks.options(options, "address options")
        wanted = checks.host_in(checks.ipv4(address, "address"), subnet, "address", label) if address else None
        if options.get("RequestAddressType") == GATEWAY_REQUEST:
            if wanted:
                net = await self.cluster.submit(ops.network_gateway(self.cluster.node, pool_id, str(wanted)))
            return "%s/%s" % (net["gateway"], prefix)
        ip = await self.cluster.submit(ops.ip_allocate(self.cluster.node, pool_id, str(wanted) if wanted else None))
        log.info("address %s allocated in network %s", ip, label)
        return "%s/%s" % (ip, prefix)

    async def release_address(self, pool_id, address):
        checks.own_id(pool_id, "PoolID")
        ip = checks.ipv4(address, "address")
        try:
            net = await self.cluster.fresh_pool(pool_id)
        except ShoutdError as e:
            if e.kind == NOT_FOUND:
                return        # the network and its addresses are gone already
            raise
        if str(ip) == net["gateway"]:
            return            # the gateway lives and dies with its network
        label = network_label(net)
        await self.cluster.submit(ops.ip_release(self.cluster.node, pool_id, str(ip)))
        log.info("address %s released in network %s", ip, label)
