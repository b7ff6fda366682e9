"""What shoutd does, independent of who asks: the one layer adapters call.

The Docker plugin, D-Bus and the CLI are thin translations onto these
methods.  Each method checks its input, proposes one operation to the
replicated state, and (where the kernel must change before the caller goes
on) waits for the reconciler.  Nothing here touches netlink or Docker.
"""

import asyncio
import ipaddress
import logging
import re
import urllib.parse

from . import checks
from .dataplane.desired import veth_names
from .errors import CONFLICT, INVALID, NOT_FOUND, UNAVAILABLE, ShoutdError
from .raft import ask_to_join, new_request_id
from .state import ADDRESS_SPACE

log = logging.getLogger(__name__)

GATEWAY_REQUEST = "com.docker.network.gateway"
# Set by shoutd itself when it creates a cluster network in a local engine.
NETWORK_OPTION = "shoutd.network"
MULTICAST = "224.0.0.0/4"
_NETWORK_DELETE = re.compile(r"^(?:/v[0-9.]+)?/networks/([^/]+)/?$")
RIGHT_COMMAND = ("docker network create -d shoutd --ipam-driver shoutd [--subnet SUBNET] NAME")


def mac_for(ip):
    """A stable, locally administered MAC derived from the (cluster-unique) IP."""
    return "0a:5d:" + ":".join("%02x" % b for b in ipaddress.IPv4Address(ip).packed)


class Service:
    def __init__(self, raft, reconciler, node, config, on_network_changed=None):
        self.raft = raft
        self.reconciler = reconciler
        self.node = node
        self.config = config
        self.on_network_changed = on_network_changed or (lambda docker_id: None)

    def state(self):
        """The live replica of the cluster state: read, never change (see raft/machine.py)."""
        return self.raft.state

    async def until_current(self, timeout=30.0):
        """Wait until this host's copy of the state is current (see RaftNode.caught_up).

        Docker's calls decide from the state (is this endpoint ours? is that
        address free?), so right after a restart they wait for it rather than
        act on a copy that may lack the last entries.
        """
        try:
            await asyncio.wait_for(self.raft.caught_up.wait(), timeout)
        except asyncio.TimeoutError:
            raise ShoutdError("this host has not caught up with the cluster within %gs: %s"
                              % (timeout, self.raft.no_quorum_message(self.describe_member)), UNAVAILABLE) from None

    def describe_member(self, member):
        return self.state().member_label(member).replace("host ", "", 1)

    # -- cluster membership (D-Bus, shoutdctl) ---------------------------

    def peer_address(self, address):
        """'ip' or 'ip:port' -> 'ip:port', or an InvalidAddress error."""
        text = str(address).strip()
        host, sep, port = text.rpartition(":") if ":" in text else (text, "", str(self.config.raft_port))
        try:
            ip = ipaddress.IPv4Address(host)
            port = int(port)
            if not 0 < port < 65536 or ip.is_unspecified or ip.is_multicast:
                raise ValueError
        except ValueError:
            raise ShoutdError("%r is not a host address; give an IPv4 address, optionally with :port "
                              "(default port %d)" % (text, self.config.raft_port), INVALID,
                              "InvalidAddress") from None
        return "%s:%d" % (ip, port)

    def _need_quorum(self):
        st = self.raft.status
        if st.leader is None or not st.has_quorum:
            raise ShoutdError("membership cannot change: " + self.raft.no_quorum_message(self.describe_member),
                              UNAVAILABLE, "NoQuorum")
        return st

    async def add_peer(self, address):
        addr = self.peer_address(address)
        st = self._need_quorum()
        if addr in st.nodes:
            raise ShoutdError("%s is already a member of the cluster" % addr, CONFLICT, "AlreadyMember")
        members = sorted(set(st.nodes) | {addr})
        await ask_to_join(self.raft.secret, addr, members)
        await self.raft.change_membership("add", addr)
        log.info("peer %s added to the cluster; members now %s", addr, ", ".join(members))
        return addr

    async def remove_peer(self, address):
        addr = self.peer_address(address)
        st = self._need_quorum()
        if addr == self.node:
            raise ShoutdError("%s is this host; run RemovePeer on another member" % addr, INVALID, "InvalidAddress")
        if addr not in st.nodes:
            raise ShoutdError("%s is not a member of the cluster" % addr, NOT_FOUND, "NotMember")
        await self.raft.change_membership("rem", addr)
        if addr in self.state().members:
            await self._submit(op="member_remove", node=addr)
        log.info("peer %s removed from the cluster", addr)
        return addr

    def status(self):
        """This host's view: Raft roles, members, networks.  O(members + networks), no copies."""
        st = self.raft.status
        state = self.state()
        members = []
        for addr, conn in sorted(st.nodes.items()):
            rec = state.members.get(addr, {})
            members.append({"address": addr, "vtep": rec.get("advertise", ""), "hostname": rec.get("hostname", ""),
                            "state": "leader" if addr == st.leader else conn})
        networks = [{"name": n["name"] or "", "subnet": n["subnet"], "vni": n["vni"], "id": n["id"],
                     "endpoints": len(n["endpoints"]), "addresses": len(n["addresses"])}
                    for n in sorted(state.networks.values(), key=lambda n: n["vni"])]
        applied, digest = state.applied
        return {"self": self.node, "leader": st.leader or "", "term": st.term,
                "quorum": st.has_quorum, "ready": self.raft.caught_up.is_set() and st.has_quorum,
                "members": members, "networks": networks, "applied": applied, "digest": digest,
                "commit_index": st.commit_index, "last_applied": st.last_applied}

    def network(self, ident):
        """One network in full: which host holds which address (for `shoutdctl network`)."""
        state = self.state()
        net = state.network_by_name(ident) if isinstance(ident, str) else None
        net = net or state.networks.get(ident) or next(
            (n for n in state.networks.values() if ident and ident in n["bindings"].values()), None)
        if net is None:
            raise ShoutdError("no shoutd network named %r; `shoutdctl networks` lists them" % (ident,), NOT_FOUND,
                              "NotFound")
        members = state.members
        addresses = []
        for ip, holder in sorted(net["addresses"].items(), key=lambda kv: ipaddress.IPv4Address(kv[0])):
            rec = members.get(holder["node"], {})
            addresses.append({"ip": ip, "host": rec.get("hostname", ""), "member": holder["node"],
                              "endpoint": net["endpoints"].get(ip, "")})
        return {"name": net["name"] or "", "id": net["id"], "subnet": net["subnet"], "gateway": net["gateway"],
                "vni": net["vni"], "hosts": sorted(net["bindings"]), "addresses": addresses}

    async def _submit(self, **op):
        op.setdefault("node", self.node)
        return await self.raft.submit(op, describe=self.describe_member)

    def pool(self, pool_id):
        """The cluster network whose IPAM PoolID is `pool_id`."""
        checks.own_id(pool_id, "PoolID")
        net = self.state().networks.get(pool_id)
        if net is None:
            raise ShoutdError("shoutd network (pool) %s does not exist" % pool_id, NOT_FOUND)
        return net

    def bound_network(self, docker_id):
        """The cluster network that this host's Docker knows as `docker_id`."""
        checks.docker_id(docker_id, "NetworkID")
        net = self.state().network_by_docker_id(self.node, docker_id)
        if net is None:
            raise ShoutdError("Docker network %s is not a shoutd network on this host; "
                              "it may have been removed on another host" % docker_id[:12], NOT_FOUND)
        return net

    # -- IPAM ------------------------------------------------------------

    async def request_pool(self, pool, sub_pool, options, v6):
        if v6:
            raise ShoutdError("shoutd supports IPv4 only; create the network without --ipv6")
        if sub_pool:
            raise ShoutdError("--ip-range is not supported by shoutd; every container of a shoutd "
                              "network gets its address from the whole --subnet")
        options = checks.options(options, "IPAM options")
        net = await self._submit(op="network_reserve", req=new_request_id(), subnet=pool or None,
                                 network=options.get(NETWORK_OPTION), pool=self.config.default_pool,
                                 pool_prefix=self.config.default_pool_prefix)
        log.info("pool %s reserved for shoutd network %s VNI %d", net["subnet"], net["id"], net["vni"])
        return net["id"], net["subnet"]

    async def release_pool(self, pool_id):
        checks.own_id(pool_id, "PoolID")
        await self._submit(op="network_release", network=pool_id)

    async def request_address(self, pool_id, address, options):
        net = self.pool(pool_id)
        label, subnet = net["name"] or net["subnet"], net["subnet"]
        prefix = subnet.split("/")[1]
        options = checks.options(options, "address options")
        wanted = checks.host_in(checks.ipv4(address, "address"), subnet, "address", label) if address else None
        if options.get("RequestAddressType") == GATEWAY_REQUEST:
            if wanted:
                net = await self._submit(op="network_gateway", network=pool_id, gateway=str(wanted))
            return "%s/%s" % (net["gateway"], prefix)
        ip = await self._submit(op="ip_allocate", req=new_request_id(), network=pool_id,
                                ip=str(wanted) if wanted else None)
        log.info("address %s allocated in network %s", ip, label)
        return "%s/%s" % (ip, prefix)

    async def release_address(self, pool_id, address):
        checks.own_id(pool_id, "PoolID")
        ip = checks.ipv4(address, "address")
        net = self.state().networks.get(pool_id)
        if net is None or str(ip) == net["gateway"]:
            return            # the gateway lives and dies with its network
        label = net["name"] or net["subnet"]
        await self._submit(op="ip_release", network=pool_id, ip=str(ip))
        log.info("address %s released in network %s", ip, label)

    # -- authorization plugin (opt-in) ------------------------------------

    def authorize(self, method, uri):
        """(allow, message) for one Docker API request.

        Docker cannot be stopped from removing its copy of a network through
        the network driver API, but an authorization plugin can refuse the
        request itself.  Only `DELETE /networks/X` of a shoutd network that
        has containers on other hosts is refused; everything else passes.
        """
        match = _NETWORK_DELETE.match(uri.split("?", 1)[0]) if method == "DELETE" else None
        if match is None:
            return True, ""
        ident = urllib.parse.unquote(match.group(1))
        state = self.state()
        net = state.network_by_name(ident) or state.network_by_docker_id(self.node, ident)
        if net is None:
            bound = [n for n in state.networks.values()
                     if n["bindings"].get(self.node, "").startswith(ident)]
            net = bound[0] if len(bound) == 1 else None
        if net is None or not any(e["node"] != self.node for e in state.endpoints_of(net["id"])):
            return True, ""
        return False, state.in_use_message(net)

    # -- network driver --------------------------------------------------

    async def create_network(self, docker_id, ipv4_data, options):
        if not ipv4_data:
            raise ShoutdError("shoutd networks need an IPv4 subnet; create it with: " + RIGHT_COMMAND)
        data = ipv4_data[0]
        if not str(data.get("AddressSpace", "")).startswith(ADDRESS_SPACE):
            raise ShoutdError("shoutd networks must use shoutd's IPAM, because Docker's default "
                              "IPAM would hand out the same addresses on every host. Create the "
                              "network with: " + RIGHT_COMMAND)
        checks.docker_id(docker_id, "NetworkID")
        try:
            pool = str(ipaddress.IPv4Network(data.get("Pool", ""), strict=False))
        except (ValueError, TypeError):
            raise ShoutdError("IPv4Data Pool %r is not an IPv4 subnet" % (data.get("Pool"),)) from None
        net = self.state().network_by_subnet(pool)
        if net is None:
            raise ShoutdError("no shoutd pool %s: was it released meanwhile? Try again." % pool, NOT_FOUND)
        generic = checks.options((options or {}).get("com.docker.network.generic"), "driver options")
        await self._submit(op="network_bind", network=net["id"], docker_id=docker_id,
                           options={k: v for k, v in generic.items() if k != NETWORK_OPTION})
        log.info("Docker network %s bound to shoutd network %s (%s, VNI %d)",
                 docker_id[:12], net["name"] or net["id"], net["subnet"], net["vni"])
        await self.reconciler.sync()
        self.on_network_changed(docker_id)

    async def delete_network(self, docker_id):
        checks.docker_id(docker_id, "NetworkID")
        net = self.state().network_by_docker_id(self.node, docker_id)
        if net is None:
            return            # already removed cluster-wide (we are following another host)
        label, vni = net["name"] or net["subnet"], net["vni"]
        result = await self._submit(op="network_delete", network=net["id"])
        if not result["deleted"]:
            self.on_network_changed(docker_id)    # the mirror restores the local copy
            raise ShoutdError(result["reason"], CONFLICT)
        log.info("network %s (VNI %d) removed from the cluster", label, vni)

    async def create_endpoint(self, docker_id, endpoint_id, interface):
        net = self.bound_network(docker_id)
        checks.docker_id(endpoint_id, "EndpointID")
        interface = interface or {}
        address = interface.get("Address")
        if not address:
            raise ShoutdError("endpoint %s has no IPv4 address; shoutd networks need --ipam-driver shoutd"
                              % endpoint_id[:12])
        if interface.get("AddressIPv6"):
            raise ShoutdError("shoutd supports IPv4 only; endpoint %s asked for an IPv6 address"
                              % endpoint_id[:12])
        label = net["name"] or net["subnet"]
        ip = checks.host_in(checks.ipv4(address, "address"), net["subnet"], "address", label)
        mac = checks.unicast_mac(interface["MacAddress"]) if interface.get("MacAddress") else mac_for(ip)
        await self._submit(op="endpoint_add", network=net["id"], endpoint=endpoint_id, ip=str(ip), mac=mac)
        log.info("endpoint %s %s (%s) created in network %s", endpoint_id[:12], ip, mac, label)
        await self.reconciler.sync()
        return {} if interface.get("MacAddress") else {"MacAddress": mac}

    async def delete_endpoint(self, docker_id, endpoint_id):
        checks.docker_id(endpoint_id, "EndpointID")
        ep = self.state().endpoints.get(endpoint_id)
        if ep is None:
            return
        ip = ep["ip"]
        await self._submit(op="endpoint_remove", endpoint=endpoint_id)
        log.info("endpoint %s %s removed", endpoint_id[:12], ip)
        # Nothing waits on the veth's removal, so Docker need not either.
        self.reconciler.kick()

    async def join(self, docker_id, endpoint_id, sandbox_key):
        checks.docker_id(endpoint_id, "EndpointID")
        ep = self.state().endpoints.get(endpoint_id)
        if ep is None or ep["node"] != self.node:
            raise ShoutdError("endpoint %s is not known on this host" % endpoint_id[:12], NOT_FOUND)
        ip = ep["ip"]
        await self.reconciler.sync()
        _, peer = veth_names(endpoint_id)
        log.info("endpoint %s %s joins sandbox %s", endpoint_id[:12], ip, sandbox_key)
        return peer

    async def leave(self, docker_id, endpoint_id):
        checks.docker_id(endpoint_id, "EndpointID")
        ep = self.state().endpoints.get(endpoint_id)
        if ep is None:
            raise ShoutdError("endpoint %s is not known on this host" % endpoint_id[:12], NOT_FOUND)
        log.info("endpoint %s %s leaves its sandbox", endpoint_id[:12], ep["ip"])

    def endpoint_info(self, docker_id, endpoint_id):
        checks.docker_id(endpoint_id, "EndpointID")
        ep = self.state().endpoints.get(endpoint_id)
        if ep is None:
            raise ShoutdError("endpoint %s is not known on this host" % endpoint_id[:12], NOT_FOUND)
        return {"ip": ep["ip"], "mac": ep["mac"], "host": self.state().member_label(ep["node"])}

