"""Endpoints: a container's interface on a network, on one host (its address and MAC).

Every host reads them to program its kernel: remote MACs into the VXLAN
FDB, local ones as veths.  An endpoint takes an address that IPAM already
handed out; each network indexes its endpoints by address, so that finding
who uses an address costs the same at any size.
"""

from typing import TYPE_CHECKING

from .. import checks
from ..errors import CONFLICT
from .records import Endpoint, network_label
from .rules import reject

if TYPE_CHECKING:
    from . import ClusterState


def endpoint_add(state: "ClusterState", op: dict) -> Endpoint:
    net = state.network(op["network"])
    ep_id, node = checks.docker_id(op["endpoint"], "endpoint id"), op["node"]
    ip = str(checks.ipv4(op["ip"], "address"))
    mac = checks.unicast_mac(op["mac"])
    mtu = checks.mtu(op.get("mtu"))
    existing = state.endpoints.get(ep_id)
    if existing is not None:
        if existing["network"] == net["id"] and existing["ip"] == ip:
            return dict(existing)  # type: ignore[return-value]
        reject("endpoint %s already exists with address %s" % (ep_id[:12], existing["ip"]), CONFLICT)
    holder = net["endpoints"].get(ip)
    if "swarm" in net:
        # Swarm's IPAM gave this address (networks.network_follow), and it hands out an address only
        # once its last holder is gone in swarm's eyes: a holder here is one whose host has not said so.
        checks.host_in(checks.ipv4(ip, "address"), net["subnet"], "address", network_label(net))
        if holder is not None:
            drop(state, state.endpoints[holder])
            holder = None
        net["addresses"][ip] = {"node": node, "req": ""}
    elif ip not in net["addresses"]:
        reject("address %s was not allocated by shoutd in %s; create the network with "
               "--ipam-driver shoutd" % (ip, network_label(net)))
    if holder is not None:
        other = state.endpoints[holder]
        reject("address %s in %s is already used by endpoint %s on %s"
               % (ip, network_label(net), holder[:12], state.member_label(other["node"])), CONFLICT)
    ep: Endpoint = {"id": ep_id, "network": net["id"], "node": node, "ip": ip, "mac": mac, "mtu": mtu,
                    "req": op.get("req") or ""}
    state.endpoints[ep_id] = ep
    net["endpoints"][ip] = ep_id
    return dict(ep)  # type: ignore[return-value]


def endpoint_remove(state: "ClusterState", op: dict) -> None:
    ep = state.endpoints.get(op["endpoint"])
    if ep is not None:
        drop(state, ep)


def undo_endpoint_add(state: "ClusterState", req: str, ep) -> bool:
    current = state.endpoints.get(ep["id"])
    if current is not None and current.get("req") == req:
        drop(state, current)
    return True


def drop(state: "ClusterState", ep: Endpoint) -> None:
    del state.endpoints[ep["id"]]
    net = state.networks.get(ep["network"])
    if net is not None and net["endpoints"].get(ep["ip"]) == ep["id"]:
        del net["endpoints"][ep["ip"]]
        if "swarm" in net:
            net["addresses"].pop(ep["ip"], None)   # swarm's IPAM frees it; shoutd held it only for the endpoint
