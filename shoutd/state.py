"""The cluster's replicated state machine: members, networks, addresses, endpoints.

Every shoutd daemon holds an identical copy of this state; Raft (see raft.py)
decides the order in which operations are applied.  So `apply` must be a pure,
deterministic function of (state, op): no clocks, no randomness, no I/O.  Ids
that need to be fresh (a network's id) are chosen by the proposer and carried
in the op.

`apply` never raises.  PySyncObj 0.3.11 runs it on its tick thread, and an
exception there kills the thread and hangs every later command.  Ops validate
everything before they mutate anything, so a rejected op leaves no trace.

The state is plain dicts and strings so it pickles into Raft snapshots and can
be read as JSON by `shoutdctl status`.
"""

import ipaddress
import logging

from .errors import CONFLICT, INTERNAL, INVALID, NOT_FOUND, ShoutdError

log = logging.getLogger(__name__)

VNI_MIN = 4200
VNI_MAX = 16777215
# Docker tells us a network is ours by the address space our IPAM reports.
ADDRESS_SPACE = "shoutd"


def empty():
    return {"members": {}, "networks": {}, "endpoints": {}}


def _reject(message, kind=INVALID):
    raise ShoutdError(message, kind)


class ClusterState:
    def __init__(self, data=None):
        self.data = data if data is not None else empty()

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

    def network_by_name(self, name):
        return next((n for n in self.networks.values() if n["name"] == name), None)

    def network_by_subnet(self, subnet):
        return next((n for n in self.networks.values() if n["subnet"] == subnet), None)

    def network_by_docker_id(self, node, docker_id):
        return next((n for n in self.networks.values()
                     if n["bindings"].get(node) == docker_id), None)

    def endpoints_of(self, net_id):
        return [e for e in self.endpoints.values() if e["network"] == net_id]

    def member_label(self, node):
        m = self.members.get(node)
        return "host %s (%s)" % (m["hostname"], m["advertise"]) if m else "host %s" % node

    def network_label(self, net):
        return net["name"] or net["subnet"]

    # -- applying --------------------------------------------------------

    def apply(self, op):
        """Apply one operation; return {"value": ...} or {"error", "kind"}."""
        try:
            handler = getattr(self, "_op_" + str(op.get("op")), None) if isinstance(op, dict) else None
            if handler is None:
                _reject("unknown operation %r: is every node running the same shoutd version?"
                        % (op.get("op") if isinstance(op, dict) else op))
            return {"value": handler(op)}
        except ShoutdError as e:
            return {"error": e.message, "kind": e.kind}
        except (KeyError, TypeError, ValueError) as e:
            return {"error": "malformed %s operation: %s" % (op.get("op"), e), "kind": INVALID}
        except Exception as e:  # noqa: BLE001 - see the module note: never raise
            log.exception("bug: operation %r failed", op)
            return {"error": "internal error applying %s: %s (a bug in shoutd; please report it)"
                    % (op.get("op"), e), "kind": INTERNAL}

    # members

    def _op_member_up(self, op):
        node = op["node"]
        rec = {"id": node, "advertise": str(ipaddress.IPv4Address(op["advertise"])),
               "raft": op["raft"], "hostname": str(op.get("hostname") or node)}
        for other in self.members.values():
            if other["id"] != node and other["advertise"] == rec["advertise"]:
                _reject("advertise address %s is already used by member %s"
                        % (rec["advertise"], other["id"]), CONFLICT)
        self.members[node] = rec
        return rec

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
            for ip in [ip for ip, a in net["addresses"].items() if a["node"] == node]:
                del net["addresses"][ip]
        return node

    # networks

    def _op_network_reserve(self, op):
        """IPAM RequestPool: find or create the cluster network for a subnet."""
        req, node = op["req"], op["node"]
        for net in self.networks.values():
            if net["id"] == req:
                return net            # a retried proposal
        wanted = op.get("subnet")
        if wanted:
            subnet = _parse_subnet(wanted)
            existing = self.network_by_subnet(str(subnet))
            if existing is not None and op.get("network") == existing["id"]:
                return existing       # shoutd creating the replica on another host
            for net in self.networks.values():
                if subnet.overlaps(ipaddress.IPv4Network(net["subnet"])):
                    _reject("subnet %s overlaps %s of shoutd network %s; choose another --subnet"
                            % (subnet, net["subnet"], self.network_label(net)), CONFLICT)
        else:
            if op.get("network"):
                existing = self.networks.get(op["network"])
                if existing is None:
                    _reject("shoutd network %s no longer exists" % op["network"], NOT_FOUND)
                return existing
            subnet = self._free_subnet(op["pool"], op["pool_prefix"])
        gateway = str(subnet.network_address + 1)
        net = {"id": req, "name": None, "subnet": str(subnet), "gateway": gateway,
               "vni": self._free_vni(), "creator": node, "bindings": {},
               "addresses": {}, "next": 0, "options": dict(op.get("options") or {})}
        self.networks[req] = net
        return net

    def _op_network_bind(self, op):
        """NetworkDriver CreateNetwork on one host: remember that host's Docker id."""
        net = self._network(op["network"])
        node, docker_id = op["node"], op["docker_id"]
        other = self.network_by_docker_id(node, docker_id)
        if other is not None and other["id"] != net["id"]:
            _reject("Docker network %s on %s is already bound to shoutd network %s"
                    % (docker_id, self.member_label(node), self.network_label(other)), CONFLICT)
        net["bindings"][node] = docker_id
        if op.get("options"):
            net["options"].update(op["options"])
        return net

    def _op_network_name(self, op):
        net = self._network(op["network"])
        name = op["name"]
        if net["name"] == name:
            return net
        if net["name"] is not None:
            _reject("shoutd network %s is already named %s" % (net["id"], net["name"]), CONFLICT)
        other = self.network_by_name(name)
        if other is not None:
            _reject("a shoutd network named %s already exists (subnet %s); pick another name"
                    % (name, other["subnet"]), CONFLICT)
        net["name"] = name
        return net

    def _op_network_gateway(self, op):
        net = self._network(op["network"])
        gw = ipaddress.IPv4Address(op["gateway"])
        subnet = ipaddress.IPv4Network(net["subnet"])
        if str(gw) == net["gateway"]:
            return net
        if net["name"] is not None or net["bindings"] or op["node"] != net["creator"]:
            _reject("shoutd network %s already has gateway %s; its gateway cannot change"
                    % (self.network_label(net), net["gateway"]), CONFLICT)
        if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
            _reject("gateway %s is not a host address in subnet %s" % (gw, subnet))
        if str(gw) in net["addresses"]:
            _reject("gateway %s is already allocated in %s" % (gw, subnet), CONFLICT)
        net["gateway"] = str(gw)
        return net

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
        if not net["bindings"] and not self.endpoints_of(net["id"]):
            del self.networks[net["id"]]
        return None

    def _op_network_delete(self, op):
        """`docker network rm` on any host removes the network everywhere.

        Unless containers are still attached somewhere.  Docker removes its
        local copy whatever a remote driver answers (libnetwork honours only
        a ForbiddenError from DeleteNetwork, which the plugin API cannot
        express; the authorization plugin in service.authorize can refuse
        earlier), so then the cluster keeps the network, forgets this host's
        deleted copy, and the mirror puts it back here.
        """
        net = self.networks.get(op["network"])
        if net is None:
            return {"deleted": True}
        eps = self.endpoints_of(net["id"])
        if not eps:
            del self.networks[net["id"]]
            return {"deleted": True}
        net["bindings"].pop(op["node"], None)
        return {"deleted": False, "reason": self.in_use_message(net) + "; the network stays in the cluster"}

    def in_use_message(self, net):
        """Why `net` cannot go: which hosts still have which containers on it."""
        where = {}
        for ep in self.endpoints_of(net["id"]):
            where.setdefault(ep["node"], []).append(ep["ip"])
        detail = "; ".join("%s: %s" % (self.member_label(n), ", ".join(sorted(ips)))
                           for n, ips in sorted(where.items()))
        return ("shoutd network %s still has containers attached on %s. Disconnect or remove them "
                "first (docker network disconnect / docker rm)" % (self.network_label(net), detail))

    # addresses

    def _op_ip_allocate(self, op):
        net = self._network(op["network"])
        req, node, addrs = op["req"], op["node"], net["addresses"]
        for ip, a in addrs.items():
            if a["req"] == req:
                return ip             # a retried proposal
        subnet = ipaddress.IPv4Network(net["subnet"])
        wanted = op.get("ip")
        if wanted:
            ip = ipaddress.IPv4Address(wanted)
            if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
                _reject("address %s is not a host address of %s (subnet %s)"
                        % (ip, self.network_label(net), subnet))
            if str(ip) == net["gateway"]:
                _reject("address %s is the gateway of %s; pick another --ip" % (ip, self.network_label(net)),
                        CONFLICT)
            holder = addrs.get(str(ip))
            if holder is not None:
                _reject("address %s in %s is already in use on %s; pick another --ip"
                        % (ip, self.network_label(net), self.member_label(holder["node"])), CONFLICT)
        else:
            ip = self._free_ip(net, subnet)
        addrs[str(ip)] = {"node": node, "req": req}
        return str(ip)

    def _op_ip_release(self, op):
        net = self.networks.get(op["network"])
        if net is None:
            return None
        ip = str(ipaddress.IPv4Address(op["ip"]))
        holder = net["addresses"].get(ip)
        if holder is None:
            return None
        for ep in self.endpoints_of(net["id"]):
            if ep["ip"] == ip:
                _reject("address %s is still used by endpoint %s on %s"
                        % (ip, ep["id"][:12], self.member_label(ep["node"])), CONFLICT)
        del net["addresses"][ip]
        return None

    # endpoints

    def _op_endpoint_add(self, op):
        net = self._network(op["network"])
        ep_id, node, ip = op["endpoint"], op["node"], str(ipaddress.IPv4Address(op["ip"]))
        existing = self.endpoints.get(ep_id)
        if existing is not None:
            if existing["network"] == net["id"] and existing["ip"] == ip:
                return existing
            _reject("endpoint %s already exists with address %s" % (ep_id[:12], existing["ip"]), CONFLICT)
        holder = net["addresses"].get(ip)
        if holder is None:
            _reject("address %s was not allocated by shoutd in %s; create the network with "
                    "--ipam-driver shoutd" % (ip, self.network_label(net)))
        for ep in self.endpoints_of(net["id"]):
            if ep["ip"] == ip:
                _reject("address %s in %s is already used by endpoint %s on %s"
                        % (ip, self.network_label(net), ep["id"][:12], self.member_label(ep["node"])),
                        CONFLICT)
        ep = {"id": ep_id, "network": net["id"], "node": node, "ip": ip,
              "mac": op["mac"], "mtu": int(op.get("mtu") or 0)}
        self.endpoints[ep_id] = ep
        return ep

    def _op_endpoint_remove(self, op):
        ep = self.endpoints.get(op["endpoint"])
        if ep is not None:
            self._drop_endpoint(ep)
        return None

    # helpers

    def _drop_endpoint(self, ep):
        del self.endpoints[ep["id"]]

    def _network(self, net_id):
        net = self.networks.get(net_id)
        if net is None:
            _reject("shoutd network %s does not exist (removed on another host?)" % net_id, NOT_FOUND)
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

    def _free_ip(self, net, subnet):
        first, last = int(subnet.network_address) + 1, int(subnet.broadcast_address) - 1
        size = last - first + 1
        reserved = set(net["addresses"]) | {net["gateway"]}
        # Hand out addresses in turn rather than lowest-free, so a just-released
        # address is not reused at once while peers may still cache its MAC.
        for i in range(size):
            offset = (net["next"] + i) % size
            candidate = str(ipaddress.IPv4Address(first + offset))
            if candidate not in reserved:
                net["next"] = offset + 1
                return candidate
        _reject("no free address left in %s (subnet %s)" % (self.network_label(net), subnet), CONFLICT)


def _parse_subnet(text):
    try:
        subnet = ipaddress.ip_network(text, strict=False)
    except ValueError:
        _reject("%r is not a subnet; use CIDR notation such as 10.20.0.0/24" % text)
    if subnet.version != 4:
        _reject("subnet %s is IPv6; shoutd supports IPv4 subnets only" % subnet)
    if subnet.prefixlen > 30:
        _reject("subnet %s is too small; use /30 or larger" % subnet)
    return subnet
