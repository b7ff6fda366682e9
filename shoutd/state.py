"""The cluster's replicated state machine: members, networks, addresses, endpoints.

Every shoutd daemon holds an identical copy of this state; Raft (see raft/)
decides the order in which operations are applied.  So `apply` must be a pure,
deterministic function of (state, op): no clocks, no randomness, no I/O.  Ids
that need to be fresh (a network's id, a request id) are chosen by the
proposer and carried in the op.

`apply` never raises.  It runs on PySyncObj's tick thread, where an exception
would stop (0.3.11) or endlessly retry (0.3.17) the whole cluster's progress.
Ops check every value before they mutate anything, so a refused op leaves no
trace; the edges (plugin, D-Bus) run the same checks (checks.py) first.

Requests, and why they are remembered.  Every op carries a request id
(`req`).  The last REQUEST_MEMORY successful requests are remembered with
their result, so that a retried proposal returns the same answer instead of
acting twice.  A proposer that gave up waiting for its op proposes
`withdraw` for it: if the op has not been applied yet it never will be, and
if it has, it is undone where that is safe.  Either way the proposer learns a
definite outcome (see raft/node.py).

Every op's cost is independent of the state's size: addresses, endpoints and
requests are found through dict indexes, never by scanning.  Records are
plain dicts (the TypedDicts below document their shape) so they pickle into
Raft snapshots and read as JSON.
"""

import collections
import hashlib
import ipaddress
import json
import logging
from typing import Dict, List, TypedDict

from . import checks
from .errors import CONFLICT, INTERNAL, INVALID, NOT_FOUND, UNAVAILABLE, ShoutdError

log = logging.getLogger(__name__)

VNI_MIN = 4200
VNI_MAX = 16777215
# Docker tells us a network is ours by the address space our IPAM reports.
ADDRESS_SPACE = "shoutd"
REQUEST_MEMORY = 10000
WITHDRAWN = {"withdrawn": True}


class Member(TypedDict):
    id: str            # its Raft address, ip:port
    advertise: str     # its VTEP address
    raft: str
    hostname: str


class Allocation(TypedDict):
    node: str          # the member that asked for it
    req: str           # the request that took it


class Network(TypedDict):
    id: str                         # shoutd's id: the IPAM PoolID
    name: str                       # Docker's name; None until a host names it
    subnet: str
    gateway: str
    vni: int
    creator: str                    # the member whose Docker created it
    bindings: Dict[str, str]        # member -> that host's Docker network id
    addresses: Dict[str, Allocation]
    next: int                       # where the address search starts (hand out in turn)
    options: Dict[str, str]         # Docker driver options (com.docker.network.generic)
    identity: Dict[str, object]     # labels, internal, attachable, driver and IPAM options, as the
                                    # creating host's Docker holds them (checks.identity)
    endpoints: Dict[str, str]       # index: ip -> endpoint id
    multicast: str                  # "pruned" or "flood" (checks.MULTICAST_MODES); None until created
    listeners: Dict[str, List[str]] # member -> the groups its containers listen to (pruned networks)


class Endpoint(TypedDict):
    id: str            # Docker's endpoint id
    network: str
    node: str
    ip: str
    mac: str
    mtu: int
    req: str


# What each successful op may have changed: followers of the state (kernel,
# Docker, D-Bus) look only at the parts that did.
MEMBERS, NETWORKS, ADDRESSES, ENDPOINTS, GROUPS = "members", "networks", "addresses", "endpoints", "groups"
_TOUCHES = {
    "member_up": {MEMBERS}, "member_remove": {MEMBERS, NETWORKS, ADDRESSES, ENDPOINTS, GROUPS},
    "network_reserve": {NETWORKS}, "network_bind": {NETWORKS}, "network_name": {NETWORKS},
    "network_gateway": {NETWORKS}, "network_release": {NETWORKS}, "network_delete": {NETWORKS},
    "ip_allocate": {ADDRESSES}, "ip_release": {ADDRESSES},
    "endpoint_add": {ENDPOINTS, ADDRESSES}, "endpoint_remove": {ENDPOINTS, ADDRESSES},
    "withdraw": {NETWORKS, ADDRESSES, ENDPOINTS},
    "groups_set": {GROUPS}, "groups_withdraw": {GROUPS},
}
EVERYTHING = frozenset({MEMBERS, NETWORKS, ADDRESSES, ENDPOINTS, GROUPS})


def empty():
    return {"members": {}, "networks": {}, "endpoints": {}, "requests": collections.OrderedDict(),
            "log": {"applied": 0, "digest": ""}}


def normalize(data):
    """The current shape of `data`, which may come from an older shoutd's snapshot."""
    base = empty()
    if not isinstance(data, dict):
        return base
    for key, value in base.items():
        data.setdefault(key, value)
    if not isinstance(data["requests"], collections.OrderedDict):
        data["requests"] = collections.OrderedDict(data["requests"])
    for net in data["networks"].values():
        net.setdefault("options", {})
        net.setdefault("identity", {})
        net.setdefault("multicast", checks.FLOOD)     # made before pruning existed: it flooded
        net.setdefault("listeners", {})
        net["endpoints"] = {}
    for ep in data["endpoints"].values():
        ep.setdefault("req", "")
        net = data["networks"].get(ep["network"])
        if net is not None:
            net["endpoints"][ep["ip"]] = ep["id"]
    return data


def summary(net):
    """A network's identity, as a fresh dict: safe to hand to another thread."""
    return {"id": net["id"], "name": net["name"], "subnet": net["subnet"], "gateway": net["gateway"],
            "vni": net["vni"], "multicast": net["multicast"]}


def pruned(net):
    return net["multicast"] == checks.PRUNED


def _reject(message, kind=INVALID):
    raise ShoutdError(message, kind)


class ClusterState:
    def __init__(self, data=None):
        self.data = normalize(data) if data is not None else empty()
        self.changed = set(EVERYTHING)      # parts changed since a follower last looked

    # -- reading ---------------------------------------------------------

    @property
    def members(self):
        return self.data["members"]

    @property
    def networks(self):
        return self.data["networks"]

    @property
    def endpoints(self):
        return self.data["endpoints"]

    @property
    def applied(self):
        """(number of ops applied, digest of them all): equal on hosts that applied the same log."""
        return self.data["log"]["applied"], self.data["log"]["digest"]

    def take_changes(self):
        """The parts changed since the last call."""
        changed, self.changed = self.changed, set()
        return changed

    def network_by_name(self, name):
        return next((n for n in self.networks.values() if n["name"] == name), None)

    def network_by_subnet(self, subnet):
        return next((n for n in self.networks.values() if n["subnet"] == subnet), None)

    def network_by_docker_id(self, node, docker_id):
        return next((n for n in self.networks.values()
                     if n["bindings"].get(node) == docker_id), None)

    def endpoints_of(self, net_id):
        net = self.networks.get(net_id)
        if net is None:
            return []
        return [self.endpoints[e] for e in net["endpoints"].values()]

    def member_label(self, node):
        m = self.members.get(node)
        return "host %s (%s)" % (m["hostname"], m["advertise"]) if m else "host %s" % node

    def network_label(self, net):
        return net["name"] or net["subnet"]

    def in_use_message(self, net):
        """Why `net` cannot go: which hosts still have which containers on it."""
        where = {}
        for ep in self.endpoints_of(net["id"]):
            where.setdefault(ep["node"], []).append(ep["ip"])
        detail = "; ".join("%s: %s" % (self.member_label(n), ", ".join(sorted(ips)))
                           for n, ips in sorted(where.items()))
        return ("shoutd network %s still has containers attached on %s. Disconnect or remove them "
                "first (docker network disconnect / docker rm)" % (self.network_label(net), detail))

    # -- applying --------------------------------------------------------

    def apply(self, op):
        """Apply one operation; return {"value": ...} or {"error", "kind"}."""
        self._record(op)
        try:
            handler = getattr(self, "_op_" + str(op.get("op")), None) if isinstance(op, dict) else None
            if handler is None:
                _reject("unknown operation %r: is every node running the same shoutd version?"
                        % (op.get("op") if isinstance(op, dict) else op))
            req = op.get("req")
            if req is not None:
                checks.own_id(req, "request id")
                remembered = self.data["requests"].get(req)
                if remembered is WITHDRAWN or remembered == WITHDRAWN:
                    _reject("request %s was withdrawn because it did not commit in time; nothing was changed"
                            % req, UNAVAILABLE)
                if remembered is not None:
                    return {"value": remembered["result"]}
            value = handler(op)
            if req is not None and op["op"] != "withdraw":
                self._remember(req, {"op": op["op"], "result": value})
            self.changed |= _TOUCHES.get(op["op"], set())
            return {"value": value}
        except ShoutdError as e:
            return {"error": e.message, "kind": e.kind}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            return {"error": "malformed %s operation: %s" % (_name(op), e), "kind": INVALID}
        except Exception as e:  # noqa: BLE001 - see the module note: never raise
            log.exception("bug: operation %r failed", op)
            return {"error": "internal error applying %s: %s (a bug in shoutd; please report it)"
                    % (_name(op), e), "kind": INTERNAL}

    def _record(self, op):
        """Fold every op, refused or not, into the digest of the applied log."""
        try:
            text = json.dumps(op, sort_keys=True, separators=(",", ":"), default=repr)
        except (TypeError, ValueError):
            text = repr(op)
        entry = self.data["log"]
        entry["applied"] += 1
        entry["digest"] = hashlib.blake2b((entry["digest"] + text).encode("utf-8", "replace"),
                                          digest_size=8).hexdigest()

    def _remember(self, req, outcome):
        requests = self.data["requests"]
        requests[req] = outcome
        while len(requests) > REQUEST_MEMORY:
            requests.popitem(last=False)

    # members

    def _op_member_up(self, op):
        node = checks.text(op["node"], "member")
        rec = {"id": node, "advertise": str(checks.ipv4(op["advertise"], "advertise address")),
               "raft": checks.text(op["raft"], "Raft address"),
               "hostname": checks.text(str(op.get("hostname") or node), "hostname")}
        for other in self.members.values():
            if other["id"] != node and other["advertise"] == rec["advertise"]:
                _reject("advertise address %s is already used by member %s"
                        % (rec["advertise"], other["id"]), CONFLICT)
        self.members[node] = rec
        return dict(rec)

    def _op_member_remove(self, op):
        node = op["node"]
        if node not in self.members:
            _reject("%s is not a member of the cluster" % node, NOT_FOUND)
        del self.members[node]
        # A removed host's containers cannot come back: free what they held.
        for ep in [e for e in self.endpoints.values() if e["node"] == node]:
            self._drop_endpoint(ep)
        for net in self.networks.values():
            net["bindings"].pop(node, None)
            net["listeners"].pop(node, None)
            for ip in [ip for ip, a in net["addresses"].items() if a["node"] == node]:
                del net["addresses"][ip]
        return node

    # networks

    def _op_network_reserve(self, op):
        """IPAM RequestPool: find or create the cluster network for a subnet."""
        req, node = checks.own_id(op["req"], "network id"), op["node"]
        if req in self.networks:
            return summary(self.networks[req])        # a retried proposal
        wanted = op.get("subnet")
        if wanted:
            subnet = _parse_subnet(wanted)
            existing = self.network_by_subnet(str(subnet))
            if existing is not None and op.get("network") == existing["id"]:
                return summary(existing)              # shoutd creating the replica on another host
            for net in self.networks.values():
                if subnet.overlaps(ipaddress.IPv4Network(net["subnet"])):
                    _reject("subnet %s overlaps %s of shoutd network %s; choose another --subnet"
                            % (subnet, net["subnet"], self.network_label(net)), CONFLICT)
        else:
            if op.get("network"):
                existing = self.networks.get(op["network"])
                if existing is None:
                    _reject("shoutd network %s no longer exists" % op["network"], NOT_FOUND)
                return summary(existing)
            subnet = self._free_subnet(op["pool"], op["pool_prefix"])
        gateway = str(subnet.network_address + 1)
        net = {"id": req, "name": None, "subnet": str(subnet), "gateway": gateway,
               "vni": self._free_vni(), "creator": node, "bindings": {},
               "addresses": {}, "next": 0, "options": checks.options(op.get("options")), "identity": {},
               "endpoints": {}, "multicast": None, "listeners": {}}
        self.networks[req] = net
        return summary(net)

    def _op_network_bind(self, op):
        """NetworkDriver CreateNetwork on one host: remember that host's Docker id.

        One cluster network is one Docker network per host: a second Docker
        network for the same subnet on the same host is refused, unless the
        mirror is replacing a copy Docker lost (`replace`).
        """
        net = self._network(op["network"])
        node, docker_id = op["node"], checks.docker_id(op["docker_id"], "Docker network id")
        options = checks.options(op.get("options"))
        mode = checks.multicast_mode(options.get("multicast", checks.PRUNED))
        other = self.network_by_docker_id(node, docker_id)
        if other is not None and other["id"] != net["id"]:
            _reject("Docker network %s on %s is already bound to shoutd network %s"
                    % (docker_id, self.member_label(node), self.network_label(other)), CONFLICT)
        bound = net["bindings"].get(node)
        if bound not in (None, docker_id) and not op.get("replace"):
            _reject("subnet %s is already shoutd network %s on %s (Docker network %s); pick another --subnet"
                    % (net["subnet"], self.network_label(net), self.member_label(node), bound[:12]), CONFLICT)
        net["bindings"][node] = docker_id
        net["options"].update(options)
        if net["multicast"] is None:         # the creating host decides; copies carry the same option
            net["multicast"] = mode
        return summary(net)

    def _op_network_name(self, op):
        net = self._network(op["network"])
        name = checks.network_name(op["name"])
        identity = checks.identity(op.get("identity"))
        if net["name"] == name:
            if identity and not net["identity"]:
                net["identity"] = identity
            return summary(net)
        if net["name"] is not None:
            _reject("shoutd network %s is already named %s" % (net["id"], net["name"]), CONFLICT)
        other = self.network_by_name(name)
        if other is not None:
            _reject("a shoutd network named %s already exists (subnet %s); pick another name"
                    % (name, other["subnet"]), CONFLICT)
        net["name"] = name
        net["identity"] = identity
        return summary(net)

    def _op_network_gateway(self, op):
        net = self._network(op["network"])
        gw = checks.ipv4(op["gateway"], "gateway")
        if str(gw) == net["gateway"]:
            return summary(net)
        if net["name"] is not None or net["bindings"] or op["node"] != net["creator"]:
            _reject("shoutd network %s already has gateway %s; its gateway cannot change"
                    % (self.network_label(net), net["gateway"]), CONFLICT)
        checks.host_in(gw, net["subnet"], "gateway", self.network_label(net))
        if str(gw) in net["addresses"]:
            _reject("gateway %s is already allocated in %s" % (gw, net["subnet"]), CONFLICT)
        net["gateway"] = str(gw)
        return summary(net)

    def _op_network_release(self, op):
        """IPAM ReleasePool on one host.

        Docker releases the pool *before* it calls DeleteNetwork, so for a
        named network the release changes nothing: DeleteNetwork decides.
        Only a network Docker abandoned mid-create (never named) goes here.
        """
        net = self.networks.get(op["network"])
        if net is None or net["name"] is not None:
            return None
        net["bindings"].pop(op["node"], None)
        if not net["bindings"] and not net["endpoints"]:
            del self.networks[net["id"]]
        return None

    def _op_network_delete(self, op):
        """`docker network rm` on any host removes the network everywhere.

        Unless containers are still attached somewhere.  Docker removes its
        local copy whatever a remote driver answers (libnetwork honours only
        a ForbiddenError from DeleteNetwork, which the plugin API cannot
        express; the authorization plugin can refuse earlier), so then the
        cluster keeps the network, forgets this host's deleted copy, and the
        mirror puts it back here.
        """
        net = self.networks.get(op["network"])
        if net is None:
            return {"deleted": True}
        if not net["endpoints"]:
            del self.networks[net["id"]]
            return {"deleted": True}
        net["bindings"].pop(op["node"], None)
        return {"deleted": False, "reason": self.in_use_message(net) + "; the network stays in the cluster"}

    # addresses

    def _op_ip_allocate(self, op):
        net = self._network(op["network"])
        req, node, addrs = op["req"], op["node"], net["addresses"]
        wanted = op.get("ip")
        if wanted:
            ip = checks.host_in(checks.ipv4(wanted, "address"), net["subnet"], "address", self.network_label(net))
            if str(ip) == net["gateway"]:
                _reject("address %s is the gateway of %s; pick another --ip" % (ip, self.network_label(net)),
                        CONFLICT)
            holder = addrs.get(str(ip))
            if holder is not None:
                _reject("address %s in %s is already in use on %s; pick another --ip"
                        % (ip, self.network_label(net), self.member_label(holder["node"])), CONFLICT)
        else:
            ip = self._free_ip(net)
        addrs[str(ip)] = {"node": node, "req": req}
        return str(ip)

    def _op_ip_release(self, op):
        net = self.networks.get(op["network"])
        if net is None:
            return None
        ip = str(checks.ipv4(op["ip"], "address"))
        if ip not in net["addresses"]:
            return None
        holder = net["endpoints"].get(ip)
        if holder is not None:
            ep = self.endpoints[holder]
            _reject("address %s is still used by endpoint %s on %s"
                    % (ip, ep["id"][:12], self.member_label(ep["node"])), CONFLICT)
        del net["addresses"][ip]
        return None

    # endpoints

    def _op_endpoint_add(self, op):
        net = self._network(op["network"])
        ep_id, node = checks.docker_id(op["endpoint"], "endpoint id"), op["node"]
        ip = str(checks.ipv4(op["ip"], "address"))
        mac = checks.unicast_mac(op["mac"])
        mtu = checks.mtu(op.get("mtu"))
        existing = self.endpoints.get(ep_id)
        if existing is not None:
            if existing["network"] == net["id"] and existing["ip"] == ip:
                return dict(existing)
            _reject("endpoint %s already exists with address %s" % (ep_id[:12], existing["ip"]), CONFLICT)
        if ip not in net["addresses"]:
            _reject("address %s was not allocated by shoutd in %s; create the network with "
                    "--ipam-driver shoutd" % (ip, self.network_label(net)))
        holder = net["endpoints"].get(ip)
        if holder is not None:
            other = self.endpoints[holder]
            _reject("address %s in %s is already used by endpoint %s on %s"
                    % (ip, self.network_label(net), holder[:12], self.member_label(other["node"])), CONFLICT)
        ep = {"id": ep_id, "network": net["id"], "node": node, "ip": ip, "mac": mac, "mtu": mtu,
              "req": op.get("req") or ""}
        self.endpoints[ep_id] = ep
        net["endpoints"][ip] = ep_id
        return dict(ep)

    def _op_endpoint_remove(self, op):
        ep = self.endpoints.get(op["endpoint"])
        if ep is not None:
            self._drop_endpoint(ep)
        return None

    # a no-op whose commit proves that this host has applied everything committed before it

    def _op_barrier(self, op):
        return None

    # multicast listeners (see multicast.py)

    def _op_groups_set(self, op):
        """A host's current groups, per pruned network: each list replaces what it reported before."""
        node = op["node"]
        if node not in self.members:
            _reject("%s is not a member of the cluster" % node, NOT_FOUND)
        sets = op["groups"]
        if not isinstance(sets, dict):
            _reject("groups must map network ids to lists of groups")
        checked = {net_id: checks.multicast_groups(groups) for net_id, groups in sets.items()}
        changed = 0
        for net_id, groups in checked.items():
            net = self.networks.get(net_id)
            if net is None or not pruned(net):
                continue                     # removed meanwhile, or it floods anyway
            if net["listeners"].get(node, []) == groups:
                continue
            if groups:
                net["listeners"][node] = groups
            else:
                del net["listeners"][node]
            changed += 1
        return changed

    def _op_groups_withdraw(self, op):
        """A member that stopped answering (`node`, the leader, saw it): forget its groups until it reports again."""
        member = op["member"]
        return sum(net["listeners"].pop(member, None) is not None for net in self.networks.values())

    # withdrawing a request that did not commit in time

    def _op_withdraw(self, op):
        """Settle request `target`: never apply it from now on, or undo it if that is safe.

        Returns {"withdrawn": True} when the target has no effect (it never
        ran, or it was undone), else {"applied": its result}.
        """
        target = checks.own_id(op["target"], "request id")
        requests = self.data["requests"]
        done = requests.get(target)
        if done == WITHDRAWN:
            return dict(WITHDRAWN)
        if done is None:
            self._remember(target, WITHDRAWN)
            return dict(WITHDRAWN)
        undo = getattr(self, "_undo_" + done["op"], None)
        if undo is not None and undo(target, done["result"]):
            requests[target] = WITHDRAWN
            return dict(WITHDRAWN)
        return {"applied": done["result"]}

    def _undo_ip_allocate(self, req, ip):
        for net in self.networks.values():
            holder = net["addresses"].get(ip)
            if holder is not None and holder["req"] == req:
                if ip in net["endpoints"]:
                    return False          # a container uses it: Docker went on after all
                del net["addresses"][ip]
                return True
        return True                       # already released

    def _undo_endpoint_add(self, req, ep):
        current = self.endpoints.get(ep["id"])
        if current is not None and current.get("req") == req:
            self._drop_endpoint(current)
        return True

    def _undo_network_reserve(self, req, net):
        current = self.networks.get(net["id"])
        if current is None:
            return True
        if current["name"] is None and not current["bindings"] and not current["addresses"] \
                and not current["endpoints"]:
            del self.networks[current["id"]]
            return True
        return False

    # helpers

    def _drop_endpoint(self, ep):
        del self.endpoints[ep["id"]]
        net = self.networks.get(ep["network"])
        if net is not None and net["endpoints"].get(ep["ip"]) == ep["id"]:
            del net["endpoints"][ep["ip"]]

    def _network(self, net_id):
        net = self.networks.get(net_id) if isinstance(net_id, str) else None
        if net is None:
            _reject("shoutd network %s does not exist (removed on another host?)" % (net_id,), NOT_FOUND)
        return net

    def _free_vni(self):
        used = {n["vni"] for n in self.networks.values()}
        vni = VNI_MIN
        while vni in used:
            vni += 1
        if vni > VNI_MAX:
            _reject("no free VXLAN network identifier", CONFLICT)
        return vni

    def _free_subnet(self, pool, prefix):
        pool = ipaddress.IPv4Network(pool)
        taken = [ipaddress.IPv4Network(n["subnet"]) for n in self.networks.values()]
        for candidate in pool.subnets(new_prefix=int(prefix)):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        _reject("the default address pool %s has no free /%s left; pass --subnet or enlarge "
                "default_pool in shoutd.conf" % (pool, prefix), CONFLICT)

    def _free_ip(self, net):
        subnet = ipaddress.IPv4Network(net["subnet"])
        first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
        size = last - first + 1
        taken, gateway = net["addresses"], net["gateway"]
        if len(taken) + (gateway not in taken) >= size:
            _reject("no free address left in %s (subnet %s)" % (self.network_label(net), subnet), CONFLICT)
        # Hand out addresses in turn rather than lowest-free, so a just-released
        # address is not reused at once while peers may still cache its MAC.
        # The cursor makes this O(1) on average, whatever the number in use.
        for i in range(size):
            offset = (net["next"] + i) % size
            candidate = str(ipaddress.IPv4Address(first + offset))
            if candidate not in taken and candidate != gateway:
                net["next"] = offset + 1
                return candidate
        _reject("no free address left in %s (subnet %s)" % (self.network_label(net), subnet), CONFLICT)


def _name(op):
    return op.get("op") if isinstance(op, dict) else op


def _parse_subnet(text):
    try:
        subnet = ipaddress.ip_network(text, strict=False)
    except (ValueError, TypeError):
        _reject("%r is not a subnet; use CIDR notation such as 10.20.0.0/24" % (text,))
    if subnet.version != 4:
        _reject("subnet %s is IPv6; shoutd supports IPv4 subnets only" % subnet)
    if subnet.prefixlen > 30:
        _reject("subnet %s is too small; use /30 or larger" % subnet)
    return subnet
