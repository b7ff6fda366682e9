"""What this host's kernel must hold, as a pure function of the cluster state.

The scheme, per shoutd network with VNI V:

    container eth0 ==veth== shv<ep> --+
    container eth0 ==veth== shv<ep> --+-- bridge shb<V> -- vxlan shx<V> (VNI V, learning off)
                                                              |
        FDB: 00:00:00:00:00:00 -> every other host's VTEP      (broadcast, unknown
             unicast and multicast: the kernel sends one copy to each host,
             head-end replication over a full mesh, so no host relays for others)
        FDB: <remote container MAC> -> the VTEP of its host    (unicast goes straight there)

A pruned network (the default; see multicast.py) sends a routable multicast
group only to the hosts whose containers listen to it:

    bridge shb<V>: IGMP/MLD snooping and querier on, so it knows this host's
        listeners and sends a group only to their veths; the VXLAN port is no
        multicast router port, so a group leaves the host only through
    bridge MDB: <group> -> port shx<V>, permanent     (some other host listens)
    VXLAN MDB:  <group> -> the VTEP of each host that listens
        (a group nobody listens to, link-local groups and broadcast still use
        the all-zero FDB entries: they reach every host, as before)

Every host holds every network's bridge and VXLAN, so a network is usable the
moment it appears; only the veths are per host.  Names carry the VNI and the
endpoint id, so the reconciler can tell its own objects from anyone else's by
prefix alone.
"""

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Optional

from ..checks import LINK_LOCAL_V4
from ..state import network_label, pruned
from .netlink import ZERO_MAC

BRIDGE_PREFIX = "shb"
VXLAN_PREFIX = "shx"
HOST_VETH_PREFIX = "shv"
PEER_VETH_PREFIX = "shc"
VXLAN_OVERHEAD = 50   # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8
# Only names of exactly this form are shoutd's to create and remove.
OWNED = re.compile(r"^(shb\d+|shx\d+|shv[0-9a-f]{12}|shc[0-9a-f]{12})$")


def bridge_name(vni):
    return "%s%d" % (BRIDGE_PREFIX, vni)


def vxlan_name(vni):
    return "%s%d" % (VXLAN_PREFIX, vni)


def veth_names(endpoint_id):
    return HOST_VETH_PREFIX + endpoint_id[:12], PEER_VETH_PREFIX + endpoint_id[:12]


@dataclass(frozen=True)
class NetworkSpec:
    id: str
    label: str
    vni: int
    bridge: str
    vxlan: str
    fdb: frozenset
    snooping: bool = False           # pruned: the bridge learns this host's listeners
    bridge_mdb: frozenset = frozenset()   # groups some other host listens to: out through the VXLAN port
    vxlan_mdb: frozenset = frozenset()    # (group, VTEP) for each other host that listens to a routed group
    port: Optional[int] = None       # its VXLAN UDP port; None (made before state version 4): the legacy port


def routed(group):
    """True for groups the VXLAN MDB serves; it floods link-local ones (as the kernel does)."""
    address = ipaddress.ip_address(group)
    if address.version == 6:
        return address.packed[1] & 0x0F > 2         # the scope: 1 interface-, 2 link-local
    return address not in LINK_LOCAL_V4


@dataclass(frozen=True)
class EndpointSpec:
    id: str
    network: str
    bridge: str
    host: str
    peer: str
    mac: str
    label: str


def desired(state, node):
    """([NetworkSpec], [EndpointSpec]) that `node`'s kernel must hold."""
    vteps = {m["id"]: m["advertise"] for m in state.members.values()}
    peers = sorted(addr for mid, addr in vteps.items() if mid != node)
    networks, endpoints = [], []
    for net in sorted(state.networks.values(), key=lambda n: n["vni"]):
        fdb = {(ZERO_MAC, p) for p in peers}
        label = "network %s VNI %d" % (network_label(net), net["vni"])
        for ep in state.endpoints_of(net["id"]):
            if ep["node"] != node:
                if ep["node"] in vteps:
                    fdb.add((ep["mac"], vteps[ep["node"]]))
                continue
            host, peer = veth_names(ep["id"])
            endpoints.append(EndpointSpec(ep["id"], net["id"], bridge_name(net["vni"]), host, peer,
                                          ep["mac"], "%s endpoint %s %s" % (label, ep["id"][:12], ep["ip"])))
        spec = NetworkSpec(net["id"], label, net["vni"], bridge_name(net["vni"]), vxlan_name(net["vni"]),
                           frozenset(fdb), port=net.get("port"))
        if pruned(net):
            spec = _with_listeners(spec, net, node, vteps)
        networks.append(spec)
    return networks, sorted(endpoints, key=lambda e: e.host)


def _with_listeners(spec, net, node, vteps):
    remote = [(group, vteps[member]) for member, groups in net["listeners"].items()
              if member != node and member in vteps for group in groups]
    return replace(spec, snooping=True, bridge_mdb=frozenset(g for g, _ in remote),
                   vxlan_mdb=frozenset((g, vtep) for g, vtep in remote if routed(g)))
