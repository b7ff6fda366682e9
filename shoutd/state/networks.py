"""Networks and their addresses: IPAM decided inside the state machine, so no address is ever handed out twice.

Two hosts starting containers at the same moment propose two allocations;
Raft orders them and every host applies both in that order, so the second
finds the first's address taken.  Addresses are handed out in turn (a
cursor per network), not lowest-free, so a just-released address is not
reused while peers may still cache its MAC.
"""

import functools
import ipaddress
import socket
from typing import TYPE_CHECKING, Tuple

from .. import checks
from ..errors import CONFLICT, NOT_FOUND
from .records import Network, network_label, summary
from .rules import reject

if TYPE_CHECKING:
    from . import ClusterState

VNI_MIN = 4200
VNI_MAX = 16777215


def network_reserve(state: "ClusterState", op: dict):
    """IPAM RequestPool: find or create the cluster network for a subnet."""
    req, node = checks.own_id(op["req"], "network id"), op["node"]
    if req in state.networks:
        return summary(state.networks[req])        # a retried proposal
    wanted = op.get("subnet")
    if wanted:
        subnet = parse_subnet(wanted)
        existing = state.network_by_subnet(str(subnet))
        if existing is not None and op.get("network") == existing["id"]:
            return summary(existing)               # shoutd creating the replica on another host
        for other in state.networks.values():
            if subnet.overlaps(ipaddress.IPv4Network(other["subnet"])):
                reject("subnet %s overlaps %s of shoutd network %s; choose another --subnet"
                       % (subnet, other["subnet"], network_label(other)), CONFLICT)
    else:
        if op.get("network"):
            existing = state.networks.get(op["network"])
            if existing is None:
                reject("shoutd network %s no longer exists" % op["network"], NOT_FOUND)
            return summary(existing)
        subnet = free_subnet(state, op["pool"], op["pool_prefix"])
    net: Network = {"id": req, "name": None, "subnet": str(subnet), "gateway": str(subnet.network_address + 1),
                    "vni": free_vni(state), "creator": node, "bindings": {}, "addresses": {}, "next": 0,
                    "options": checks.options(op.get("options")), "identity": {}, "endpoints": {},
                    "multicast": None, "listeners": {}}
    if "port" in op:
        net["port"] = checks.udp_port(op["port"])
    state.networks[req] = net
    return summary(net)


def network_follow(state: "ClusterState", op: dict):
    """A swarm network (AllocateNetwork on the leading manager, or CreateNetwork on a node): shoutd follows it.

    Swarm's IPAM is the authority for its networks' addresses, tasks' and
    attached containers' alike: it allocates them all on the leading
    manager and keeps them in swarm's own Raft store.  So shoutd records the
    subnet swarm chose and gives the network a VNI and port; it allocates
    nothing in it, and takes each endpoint's address as swarm gave it
    (endpoints.endpoint_add).  Proposed by every host that meets the network:
    the first one creates it, the others find it.
    """
    swarm = checks.swarm_id(op["swarm"], "swarm network id")
    existing = state.network_by_swarm_id(swarm)
    if existing is not None:
        return summary(existing)
    req = checks.own_id(op["req"], "network id")
    subnet = parse_subnet(op["subnet"])
    gateway = str(checks.host_in(checks.ipv4(op["gateway"], "gateway"), str(subnet), "gateway",
                                 str(subnet))) if op.get("gateway") else ""
    options = checks.options(op.get("options"))
    net: Network = {"id": req, "name": None, "subnet": str(subnet), "gateway": gateway, "vni": free_vni(state),
                    "creator": op["node"], "bindings": {}, "addresses": {}, "next": 0, "options": options,
                    "identity": {}, "endpoints": {}, "listeners": {},
                    "multicast": checks.multicast_mode(options.get("multicast", checks.PRUNED)),
                    "port": checks.udp_port(op["port"]), "swarm": swarm}
    state.networks[req] = net
    return summary(net)


def network_unbind(state: "ClusterState", op: dict):
    """DeleteNetwork of a swarm network on one host: swarm takes it off hosts without tasks on it."""
    net = state.networks.get(op["network"])
    if net is not None:
        net["bindings"].pop(op["node"], None)
    return None


def network_unfollow(state: "ClusterState", op: dict):
    """FreeNetwork: swarm has removed the network, so its endpoints are gone whatever a host last said."""
    net = state.network_by_swarm_id(checks.swarm_id(op["swarm"], "swarm network id"))
    if net is None:
        return None
    for ep_id in list(net["endpoints"].values()):
        del state.endpoints[ep_id]
    del state.networks[net["id"]]
    return summary(net)


def network_bind(state: "ClusterState", op: dict):
    """NetworkDriver CreateNetwork on one host: remember that host's Docker id.

    One cluster network is one Docker network per host: a second Docker
    network for the same subnet on the same host is refused, unless the
    mirror is replacing a copy Docker lost (`replace`).
    """
    net = state.network(op["network"])
    node = op["node"]
    # A swarm network has swarm's id on every host (state version 5: only such networks have "swarm").
    docker_id = checks.swarm_id(op["docker_id"], "swarm network id") if "swarm" in net \
        else checks.docker_id(op["docker_id"], "Docker network id")
    options = checks.options(op.get("options"))
    mode = checks.multicast_mode(options.get("multicast", checks.PRUNED))
    other = state.network_by_docker_id(node, docker_id)
    if other is not None and other["id"] != net["id"]:
        reject("Docker network %s on %s is already bound to shoutd network %s"
               % (docker_id, state.member_label(node), network_label(other)), CONFLICT)
    bound = net["bindings"].get(node)
    if bound not in (None, docker_id) and not op.get("replace"):
        reject("subnet %s is already shoutd network %s on %s (Docker network %s); pick another --subnet"
               % (net["subnet"], network_label(net), state.member_label(node), str(bound)[:12]), CONFLICT)
    net["bindings"][node] = docker_id
    net["options"].update(options)
    if net["multicast"] is None:         # the creating host decides; copies carry the same option
        net["multicast"] = mode
    return summary(net)


def network_name(state: "ClusterState", op: dict):
    net = state.network(op["network"])
    name = checks.network_name(op["name"])
    identity = checks.identity(op.get("identity"))
    if net["name"] == name:
        if identity and not net["identity"]:
            net["identity"] = identity
        return summary(net)
    if net["name"] is not None:
        reject("shoutd network %s is already named %s" % (net["id"], net["name"]), CONFLICT)
    other = state.network_by_name(name)
    if other is not None:
        reject("a shoutd network named %s already exists (subnet %s); pick another name"
               % (name, other["subnet"]), CONFLICT)
    net["name"] = name
    net["identity"] = identity
    return summary(net)


def network_gateway(state: "ClusterState", op: dict):
    net = state.network(op["network"])
    gw = checks.ipv4(op["gateway"], "gateway")
    if str(gw) == net["gateway"]:
        return summary(net)
    if net["name"] is not None or net["bindings"] or op["node"] != net["creator"]:
        reject("shoutd network %s already has gateway %s; its gateway cannot change"
               % (network_label(net), net["gateway"]), CONFLICT)
    checks.host_in(gw, net["subnet"], "gateway", network_label(net))
    if str(gw) in net["addresses"]:
        reject("gateway %s is already allocated in %s" % (gw, net["subnet"]), CONFLICT)
    net["gateway"] = str(gw)
    return summary(net)


def network_release(state: "ClusterState", op: dict):
    """IPAM ReleasePool on one host.

    Docker releases the pool *before* it calls DeleteNetwork, so for a
    named network the release changes nothing: DeleteNetwork decides.
    Only a network Docker abandoned mid-create (never named) goes here.
    """
    net = state.networks.get(op["network"])
    if net is None or net["name"] is not None:
        return None
    net["bindings"].pop(op["node"], None)
    if not net["bindings"] and not net["endpoints"]:
        del state.networks[net["id"]]
    return None


def network_delete(state: "ClusterState", op: dict):
    """`docker network rm` on any host removes the network everywhere.

    Unless containers are still attached somewhere.  Docker removes its
    local copy whatever a remote driver answers (libnetwork honours only
    a ForbiddenError from DeleteNetwork, which the plugin API cannot
    express; the authorization plugin can refuse earlier), so then the
    cluster keeps the network, forgets this host's deleted copy, and the
    mirror puts it back here.
    """
    net = state.networks.get(op["network"])
    if net is None:
        return {"deleted": True}
    if not net["endpoints"]:
        del state.networks[net["id"]]
        return {"deleted": True}
    net["bindings"].pop(op["node"], None)
    return {"deleted": False, "reason": state.in_use_message(net) + "; the network stays in the cluster"}


def undo_network_reserve(state: "ClusterState", req: str, net) -> bool:
    current = state.networks.get(net["id"])
    if current is None:
        return True
    if current["name"] is None and not current["bindings"] and not current["addresses"] \
            and not current["endpoints"]:
        del state.networks[current["id"]]
        return True
    return False


# -- addresses ---------------------------------------------------------------------------

def ip_allocate(state: "ClusterState", op: dict) -> str:
    net = state.network(op["network"])
    req, node, addrs = op["req"], op["node"], net["addresses"]
    wanted = op.get("ip")
    if wanted:
        ip = checks.host_in(checks.ipv4(wanted, "address"), net["subnet"], "address", network_label(net))
        if str(ip) == net["gateway"]:
            reject("address %s is the gateway of %s; pick another --ip" % (ip, network_label(net)), CONFLICT)
        holder = addrs.get(str(ip))
        if holder is not None:
            reject("address %s in %s is already in use on %s; pick another --ip"
                   % (ip, network_label(net), state.member_label(holder["node"])), CONFLICT)
    else:
        ip = free_ip(net)
    addrs[str(ip)] = {"node": node, "req": req}
    return str(ip)


def ip_release(state: "ClusterState", op: dict):
    net = state.networks.get(op["network"])
    if net is None:
        return None
    ip = str(checks.ipv4(op["ip"], "address"))
    if ip not in net["addresses"]:
        return None
    holder = net["endpoints"].get(ip)
    if holder is not None:
        ep = state.endpoints[holder]
        reject("address %s is still used by endpoint %s on %s"
               % (ip, ep["id"][:12], state.member_label(ep["node"])), CONFLICT)
    del net["addresses"][ip]
    return None


def undo_ip_allocate(state: "ClusterState", req: str, ip) -> bool:
    for net in state.networks.values():
        holder = net["addresses"].get(ip)
        if holder is not None and holder["req"] == req:
            if ip in net["endpoints"]:
                return False          # a container uses it: Docker went on after all
            del net["addresses"][ip]
            return True
    return True                       # already released


# -- choosing free ones ------------------------------------------------------------------------

def free_vni(state: "ClusterState") -> int:
    used = {n["vni"] for n in state.networks.values()}
    vni = VNI_MIN
    while vni in used:
        vni += 1
    if vni > VNI_MAX:
        reject("no free VXLAN network identifier", CONFLICT)
    return vni


def free_subnet(state: "ClusterState", pool, prefix) -> ipaddress.IPv4Network:
    pool = ipaddress.IPv4Network(pool)
    taken = [ipaddress.IPv4Network(n["subnet"]) for n in state.networks.values()]
    for candidate in pool.subnets(new_prefix=int(prefix)):
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    reject("the default address pool %s has no free /%s left; pass --subnet or enlarge "
           "default_pool in shoutd.conf" % (pool, prefix), CONFLICT)


@functools.lru_cache(maxsize=1024)
def _hosts(subnet: str) -> Tuple[int, int]:
    """(first host address as an integer, number of host addresses) of `subnet`.

    Every host applies every allocation, and parsing the subnet was most of
    an allocation's cost there: a network's subnet never changes."""
    net = ipaddress.IPv4Network(subnet)
    return int(net.network_address) + 1, net.num_addresses - 2


def free_ip(net: Network) -> str:
    first, size = _hosts(net["subnet"])
    taken, gateway = net["addresses"], net["gateway"]
    if len(taken) + (gateway not in taken) >= size:
        reject("no free address left in %s (subnet %s)" % (network_label(net), net["subnet"]), CONFLICT)
    # The cursor makes this O(1) on average, whatever the number in use.
    for i in range(size):
        offset = (net["next"] + i) % size
        candidate = socket.inet_ntoa((first + offset).to_bytes(4, "big"))     # as str(IPv4Address) writes it
        if candidate not in taken and candidate != gateway:
            net["next"] = offset + 1
            return candidate
    reject("no free address left in %s (subnet %s)" % (network_label(net), net["subnet"]), CONFLICT)


def parse_subnet(text) -> ipaddress.IPv4Network:
    try:
        subnet = ipaddress.ip_network(text, strict=False)
    except (ValueError, TypeError):
        reject("%r is not a subnet; use CIDR notation such as 10.20.0.0/24" % (text,))
    if subnet.version != 4:
        reject("subnet %s is IPv6; shoutd supports IPv4 subnets only" % subnet)
    if subnet.prefixlen > 30:
        reject("subnet %s is too small; use /30 or larger" % subnet)
    return subnet  # type: ignore[return-value]  # an IPv4 network, by the check above
