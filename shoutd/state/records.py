"""The records the replicated state is made of, and what every part reads from them.

Records are plain dicts, so that they pickle into Raft snapshots and read as
JSON; the TypedDicts give their shapes to the type checker (mypy, run in
CI), which checks every function below and in the op modules against them.
"""

import collections
from typing import Any, Dict, List, NotRequired, Optional, TypedDict

from .. import checks

# The state version of a state that names none: what shoutd 0.2 ran.  See ops.py.
BASE_VERSION = 2


class Member(TypedDict):
    id: str            # its Raft address, ip:port
    advertise: str     # its VTEP address
    raft: str
    hostname: str
    version: int       # the newest state version its shoutd runs (reported; see members.py)
    release: NotRequired[str]   # its shoutd release, reported once the cluster runs state version 3


class Allocation(TypedDict):
    node: str          # the member that asked for it
    req: str           # the request that took it


class Network(TypedDict):
    id: str                         # shoutd's id: the IPAM PoolID
    name: Optional[str]             # Docker's name; None until a host names it
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
    multicast: Optional[str]        # "pruned" or "flood" (checks.MULTICAST_MODES); None until created
    listeners: Dict[str, List[str]] # member -> the groups its containers listen to (pruned networks)
    port: NotRequired[int]          # VXLAN UDP port (state version 4); without: each host's legacy port
    swarm: NotRequired[str]         # a swarm network's id (state version 5): swarm's IPAM hands out its
                                    # addresses, shoutd follows (networks.network_follow)


class Endpoint(TypedDict):
    id: str            # Docker's endpoint id
    network: str
    node: str
    ip: str
    mac: str
    mtu: int
    req: str


class Applied(TypedDict):
    applied: int       # ops applied, refused ones included
    digest: str        # of them all, in order: equal on hosts that applied the same log


class Data(TypedDict):
    version: int                    # the cluster's state version (ops.py)
    members: Dict[str, Member]
    networks: Dict[str, Network]
    endpoints: Dict[str, Endpoint]
    requests: "collections.OrderedDict[str, Dict[str, Any]]"    # req -> {op, result}, or WITHDRAWN
    log: Applied
    voters: List[str]               # the members in Raft, sorted (state version 6); [] before: all are


def empty() -> Data:
    return {"version": BASE_VERSION, "members": {}, "networks": {}, "endpoints": {},
            "requests": collections.OrderedDict(), "log": {"applied": 0, "digest": ""},
            "voters": []}


def normalize(data: object) -> Data:
    """The current shape of `data`, which may come from an older shoutd's snapshot."""
    if not isinstance(data, dict):
        return empty()
    for key, value in empty().items():
        data.setdefault(key, value)
    if not isinstance(data["requests"], collections.OrderedDict):
        data["requests"] = collections.OrderedDict(data["requests"])
    for member in data["members"].values():
        member.setdefault("version", BASE_VERSION)
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
    return data     # type: ignore[return-value]  # every key is there now


def summary(net: Network) -> Dict[str, object]:
    """A network's identity, as a fresh dict: safe to hand to another thread."""
    return {"id": net["id"], "name": net["name"], "subnet": net["subnet"], "gateway": net["gateway"],
            "vni": net["vni"], "multicast": net["multicast"], "port": net.get("port")}


def pruned(net: Network) -> bool:
    return net["multicast"] == checks.PRUNED


def network_label(net) -> str:
    """How a network is named to people: its name, or its subnet until Docker has named it."""
    return net["name"] or net["subnet"]
