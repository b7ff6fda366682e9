"""Docker's NetworkDriver API: a host's copy of a cluster network, its endpoints, join and leave.

CreateNetwork binds this host's Docker network to the cluster network whose
pool it was given; CreateEndpoint records the container's address and MAC;
Join hands Docker the container side of the veth that the reconciler made.
Each waits for the reconciler where the kernel must be ready before Docker
goes on.
"""

import ipaddress
import logging

from .. import checks
from ..dataplane.desired import veth_names
from ..errors import CONFLICT, NOT_FOUND, ShoutdError
from ..state import ADDRESS_SPACE, network_label, ops

log = logging.getLogger(__name__)

# shoutd 0.1 marked the copies it made with this IPAM option; Compose v1 then
# saw an option its file lacks and refused the network.  Still understood.
NETWORK_OPTION = "shoutd.network"
MULTICAST = "224.0.0.0/4"
RIGHT_COMMAND = "docker network create -d shoutd --ipam-driver shoutd [--subnet SUBNET] NAME"
IPV4_ONLY = "shoutd supports IPv4 only; create the network without --ipv6"
# Network options Docker 28 and later always send, as JSON booleans (older releases omit them).
ENABLE_IPV4 = "com.docker.network.enable_ipv4"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
GENERIC = "com.docker.network.generic"      # the -o/--opt driver options
# The name a container's interface should get (`docker run --network name=N,driver-opt=...`, Compose's
# interface_name); Docker 28 and later pass it in CreateEndpoint's options.
IFNAME = "com.docker.network.endpoint.ifname"


def network_options(options):
    """A network's driver options, once its other options ask for nothing shoutd cannot serve.

    Checked twice: by GwAllocCheck (Docker 28+), before Docker reserves a pool,
    so a bad option costs no cluster write; and by CreateNetwork, for older Docker.
    """
    options = options if isinstance(options, dict) else {}
    if options.get(ENABLE_IPV4) in (False, "false"):
        raise ShoutdError("shoutd networks are IPv4 networks (IPv6 is not supported yet); create the "
                          "network without --ipv4=false: " + RIGHT_COMMAND)
    if options.get(ENABLE_IPV6) in (True, "true"):
        raise ShoutdError(IPV4_ONLY)
    generic = checks.options(options.get(GENERIC), "driver options")
    checks.multicast_mode(generic.get("multicast", checks.PRUNED))
    return generic


def mac_for(ip):
    """A stable, locally administered MAC derived from the (cluster-unique) IP."""
    return "0a:5d:" + ":".join("%02x" % b for b in ipaddress.IPv4Address(ip).packed)


class NetworkDriver:
    def __init__(self, cluster, reconciler, on_network_changed=None):
        self.cluster = cluster
        self.reconciler = reconciler
        self.on_network_changed = on_network_changed or (lambda docker_id: None)

    def gateway_check(self, options):
        """Docker 28+ asks whether the network wants a gateway address: (skip IPv4, skip IPv6).

        shoutd keeps one: the cluster state reserves one gateway address per
        network whatever the engine, because engines before 28 always ask for
        it, and hosts with different engines must agree on which addresses are
        free.  Docker then shows the same Gateway on every host.  No host holds
        that address (Join names no gateway: a shoutd network is a plain L2
        segment); it stays free for a router a user may attach.
        """
        network_options(options)
        return False, False

    async def create_network(self, docker_id, ipv4_data, options):
        generic = network_options(options)
        if not ipv4_data:
            raise ShoutdError("shoutd networks need an IPv4 subnet; create it with: " + RIGHT_COMMAND)
        data = ipv4_data[0]
        if not str(data.get("AddressSpace", "")).startswith(ADDRESS_SPACE):
            raise ShoutdError("shoutd networks must use shoutd's IPAM, because Docker's default "
                              "IPAM would hand out the same addresses on every host. Create the "
                              "network with: " + RIGHT_COMMAND)
        checks.docker_id(docker_id, "NetworkID")
        pool = checks.subnet(data.get("Pool"), "IPv4Data Pool")
        net = self.cluster.state().network_by_subnet(pool)
        if net is None:
            raise ShoutdError("no shoutd pool %s: was it released meanwhile? Try again." % pool, NOT_FOUND)
        asked = generic.get("multicast", checks.PRUNED)
        mode = net["multicast"] or asked     # the first binding (the creating host) decides; copies ask the same
        await self.cluster.submit(ops.network_bind(self.cluster.node, net["id"], docker_id,
                                                   {k: v for k, v in generic.items() if k != NETWORK_OPTION},
                                                   replace=self.cluster.replica_of(pool) == net["id"]))
        log.info("Docker network %s bound to shoutd network %s (%s, VNI %d, multicast %s)",
                 docker_id[:12], net["name"] or net["id"], net["subnet"], net["vni"], mode)
        await self.reconciler.reconcile()
        self.on_network_changed(docker_id)

    async def delete_network(self, docker_id):
        checks.docker_id(docker_id, "NetworkID")
        net = self.cluster.state().network_by_docker_id(self.cluster.node, docker_id)
        if net is None:
            return            # already removed cluster-wide (we are following another host)
        label, vni = network_label(net), net["vni"]
        result = await self.cluster.submit(ops.network_delete(self.cluster.node, net["id"]))
        if not result["deleted"]:
            self.on_network_changed(docker_id)    # the mirror restores the local copy
            raise ShoutdError(result["reason"], CONFLICT)
        log.info("network %s (VNI %d) removed from the cluster", label, vni)

    async def create_endpoint(self, docker_id, endpoint_id, interface, options=None):
        net = self.cluster.bound_network(docker_id)
        checks.docker_id(endpoint_id, "EndpointID")
        interface = interface or {}
        address = interface.get("Address")
        if not address:
            raise ShoutdError("endpoint %s has no IPv4 address; shoutd networks need --ipam-driver shoutd"
                              % endpoint_id[:12])
        if interface.get("AddressIPv6"):
            raise ShoutdError("shoutd supports IPv4 only; endpoint %s asked for an IPv6 address"
                              % endpoint_id[:12])
        label = network_label(net)
        ifname = (options or {}).get(IFNAME)
        if ifname:
            # moby's remote driver drops the name Join could give back (drivers/remote Join calls
            # SetNames with no name), so refusing would only break the container; say it plainly.
            log.warning("endpoint %s in network %s asks for interface name %s: Docker names the interface "
                        "of a plugin's network after its prefix (eth) and ignores the name", endpoint_id[:12],
                        label, checks.quoted(ifname))
        ip = checks.host_in(checks.ipv4(address, "address"), net["subnet"], "address", label)
        mac = checks.unicast_mac(interface["MacAddress"]) if interface.get("MacAddress") else mac_for(ip)
        await self.cluster.submit(ops.endpoint_add(self.cluster.node, net["id"], endpoint_id, str(ip), mac))
        log.info("endpoint %s %s (%s) created in network %s", endpoint_id[:12], ip, mac, label)
        if net["name"] is None:
            # Docker has stored the network by now (it calls CreateNetwork before): name it at once.
            self.on_network_changed(docker_id)
        await self.reconciler.reconcile()
        return {} if interface.get("MacAddress") else {"MacAddress": mac}

    async def delete_endpoint(self, docker_id, endpoint_id):
        checks.docker_id(endpoint_id, "EndpointID")
        ep = self.cluster.state().endpoints.get(endpoint_id)
        if ep is None:
            return
        ip = ep["ip"]
        await self.cluster.submit(ops.endpoint_remove(self.cluster.node, endpoint_id))
        log.info("endpoint %s %s removed", endpoint_id[:12], ip)
        # Nothing waits on the veth's removal, so Docker need not either.
        self.reconciler.kick()

    def _local_endpoint(self, endpoint_id):
        checks.docker_id(endpoint_id, "EndpointID")
        ep = self.cluster.state().endpoints.get(endpoint_id)
        if ep is None or ep["node"] != self.cluster.node:
            raise ShoutdError("endpoint %s is not known on this host" % endpoint_id[:12], NOT_FOUND)
        return ep

    async def join(self, docker_id, endpoint_id, sandbox_key):
        ip = self._local_endpoint(endpoint_id)["ip"]
        await self.reconciler.reconcile()
        _, peer = veth_names(endpoint_id)
        log.info("endpoint %s %s joins sandbox %s", endpoint_id[:12], ip, sandbox_key)
        return peer

    async def leave(self, docker_id, endpoint_id):
        checks.docker_id(endpoint_id, "EndpointID")
        ep = self.cluster.state().endpoints.get(endpoint_id)
        if ep is None:
            # Gone with its network already: swarm's FreeNetwork can come before a node's Leave
            # (`docker stack rm`).  Leave changes nothing here, so there is nothing to refuse.
            log.info("endpoint %s leaves its sandbox (its network is gone already)", endpoint_id[:12])
            return
        log.info("endpoint %s %s leaves its sandbox", endpoint_id[:12], ep["ip"])

    def endpoint_info(self, docker_id, endpoint_id):
        ep = self._local_endpoint(endpoint_id)
        return {"ip": ep["ip"], "mac": ep["mac"], "host": self.cluster.state().member_label(ep["node"])}
