"""What this host's kernel must hold, as a pure function of the cluster state.

The scheme, per shoutd network with VNI V:

    container eth0 ==veth== shv<ep> --+
    container eth0 ==veth== shv<ep> --+-- bridge shb<V> -- vxlan shx<V> (VNI V, learning off)
                                                              |
        FDB: 00:00:00:00:00:00 -> every other host's VTEP      (broadcast, unknown
             unicast and multicast: the kernel sends one copy to each host,
             head-end replication over a full mesh, so no host relays for others)
        FDB: <remote container MAC> -> the VTEP of its host    (unicast goes straight there)

Every host holds every network's bridge and VXLAN, so a network is usable the
moment it appears; only the veths are per host.  Names carry the VNI and the
endpoint id, so the reconciler can tell its own objects from anyone else's by
prefix alone.
"""

import re
from dataclasses import dataclass

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
        label = "network %s VNI %d" % (state.network_label(net), net["vni"])
        for ep in state.endpoints_of(net["id"]):
            if ep["node"] != node:
                if ep["node"] in vteps:
                    fdb.add((ep["mac"], vteps[ep["node"]]))
                continue
            host, peer = veth_names(ep["id"])
            endpoints.append(EndpointSpec(ep["id"], net["id"], bridge_name(net["vni"]), host, peer,
                                          ep["mac"], "%s endpoint %s %s" % (label, ep["id"][:12], ep["ip"])))
        networks.append(NetworkSpec(net["id"], label, net["vni"], bridge_name(net["vni"]),
                                    vxlan_name(net["vni"]), frozenset(fdb)))
    return networks, sorted(endpoints, key=lambda e: e.host)
