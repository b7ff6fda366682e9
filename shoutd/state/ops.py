"""The state machine's operations: one table, one entry per op, and the state version each arrived in.

Hosts in a cluster may run different releases for a while (a rolling
upgrade).  An op one release applies and another rejects, or applies
differently, would leave their states different without a word.  So:
- The cluster has a state version, in the replicated state.  Each member
  reports the newest version it runs when it registers; the leader raises
  the cluster's version, by the op `cluster_version`, only once every
  member runs it (service/versions.py).
- An op (or a field of an op, `fields`) newer than the cluster's version is
  never proposed (`check_proposable`, which names the hosts still on an
  older release), and if one is committed anyway every host rejects it the
  same way, as the older releases do.
- A host that meets an op it does not know, or a cluster version newer than
  it runs, stops applying (ClusterState.apply): it would otherwise go on
  with a state of its own.  Its data plane stays as it is; after its
  upgrade it applies the rest of the log and goes on.

State versions:
  2  shoutd 0.2: members, networks and addresses, endpoints, multicast
     listeners, the request memory (and shoutd 0.1's ops, a subset).  A state
     that names no version runs 2.
  3  shoutd 0.3: `cluster_version`; `member_up` reports the host's release.
  4  shoutd 0.4: `network_reserve` records the new network's VXLAN UDP port.
  5  shoutd 0.5: swarm networks (`network_follow`, `network_unbind`, `network_unfollow`), whose
     addresses swarm's IPAM hands out; `endpoint_add` in them takes the address as given.
  6  (unreleased) `voters_set`: which members vote (are in Raft); the others are replicas.

How to add an op in a later release:
1. Raise STATE_VERSION and add a line above saying what the version brings.
2. Write the handler in the module of its domain (members, networks,
   endpoints, groups, requests): check every value, then change the state;
   `reject` refuses, and a refusal must leave no trace.
3. Add its entry to OPS with `since` = the new version, what it touches,
   and its undo if a withdrawn request of it can be undone.  A new field of
   an existing op goes into that op's `fields` with the new version.
4. Add a constructor below; proposers call it, never a dict literal.
5. Test that it is refused at the proposer while the cluster runs an older
   version, and applied once the version is raised.
"""

import uuid
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional

from ..errors import UNAVAILABLE, ShoutdError
from . import endpoints, groups, members, networks, requests
from .records import BASE_VERSION

STATE_VERSION = 6       # the newest state version this release runs

# What each successful op may have changed: followers of the state (kernel,
# Docker, D-Bus) look only at the parts that did.
MEMBERS, NETWORKS, ADDRESSES, ENDPOINTS, GROUPS = "members", "networks", "addresses", "endpoints", "groups"
EVERYTHING = frozenset({MEMBERS, NETWORKS, ADDRESSES, ENDPOINTS, GROUPS})


@dataclass(frozen=True)
class Op:
    name: str
    since: int                          # the state version it arrived in
    touches: FrozenSet[str]
    apply: Callable
    undo: Optional[Callable] = None     # (state, req, result) -> whether the effect is gone
    fields: Dict[str, int] = field(default_factory=dict)   # fields that arrived after the op itself
    gated: bool = True                  # False only for cluster_version: every member's version is its gate


def _table(*ops: Op) -> Dict[str, Op]:
    return {op.name: op for op in ops}


OPS = _table(
    Op("member_up", 2, frozenset({MEMBERS}), members.member_up, fields={"release": 3}),
    Op("member_remove", 2, EVERYTHING, members.member_remove),
    Op("voters_set", 6, frozenset({MEMBERS}), members.voters_set),
    Op("cluster_version", 3, frozenset({MEMBERS}), members.cluster_version, gated=False),
    Op("network_reserve", 2, frozenset({NETWORKS}), networks.network_reserve, networks.undo_network_reserve,
       fields={"port": 4}),
    Op("network_follow", 5, frozenset({NETWORKS}), networks.network_follow),
    Op("network_unbind", 5, frozenset({NETWORKS}), networks.network_unbind),
    Op("network_unfollow", 5, frozenset({NETWORKS, ADDRESSES, ENDPOINTS}), networks.network_unfollow),
    Op("network_bind", 2, frozenset({NETWORKS}), networks.network_bind),
    Op("network_name", 2, frozenset({NETWORKS}), networks.network_name),
    Op("network_gateway", 2, frozenset({NETWORKS}), networks.network_gateway),
    Op("network_release", 2, frozenset({NETWORKS}), networks.network_release),
    Op("network_delete", 2, frozenset({NETWORKS}), networks.network_delete),
    Op("ip_allocate", 2, frozenset({ADDRESSES}), networks.ip_allocate, networks.undo_ip_allocate),
    Op("ip_release", 2, frozenset({ADDRESSES}), networks.ip_release),
    Op("endpoint_add", 2, frozenset({ENDPOINTS, ADDRESSES}), endpoints.endpoint_add, endpoints.undo_endpoint_add),
    Op("endpoint_remove", 2, frozenset({ENDPOINTS, ADDRESSES}), endpoints.endpoint_remove),
    Op("groups_set", 2, frozenset({GROUPS}), groups.groups_set),
    Op("groups_withdraw", 2, frozenset({GROUPS}), groups.groups_withdraw),
    Op("withdraw", 2, frozenset({NETWORKS, ADDRESSES, ENDPOINTS}), requests.withdraw),
    Op("barrier", 2, frozenset(), requests.barrier),
)


def version_needed(op: dict) -> int:
    """The state version the cluster must run for `op`, in this form, to be applied."""
    spec = OPS[op["op"]]
    return max([spec.since] + [v for name, v in spec.fields.items() if name in op])


def check_proposable(op: dict, state) -> None:
    """Refuse, before anything is proposed, an op the cluster's version does not allow yet."""
    spec = OPS.get(str(op.get("op")))
    if spec is None:
        raise ShoutdError("unknown operation %r: no release of shoutd proposes it" % (op.get("op"),))
    needed = version_needed(op)
    if spec.gated and needed > state.version:
        behind = sorted(state.member_label(m["id"]) for m in state.members.values() if m["version"] < needed)
        raise ShoutdError("this needs state version %d, and the cluster runs %d until every host runs a release "
                          "with it; upgrade shoutd on %s" % (needed, state.version, ", ".join(behind) or
                                                             "the hosts that have not registered since"),
                          UNAVAILABLE, "UpgradeNeeded")


def within(op: dict, version: int) -> dict:
    """`op` without the fields newer than state version `version`: the form the cluster can apply."""
    spec = OPS[op["op"]]
    return {k: v for k, v in op.items() if spec.fields.get(k, 0) <= version}


def new_request_id() -> str:
    return uuid.uuid4().hex


# -- constructors: what proposers call --------------------------------------------------------

def member_up(node, advertise, hostname, release=None) -> dict:
    op = {"op": "member_up", "node": node, "advertise": advertise, "raft": node, "hostname": hostname,
          "version": STATE_VERSION}
    if release is not None:
        op["release"] = release
    return op


def member_remove(node) -> dict:
    return {"op": "member_remove", "node": node}


def voters_set(node, voters, was) -> dict:
    """`was`: the voters this change was decided from; if they changed meanwhile, the op is refused."""
    return {"op": "voters_set", "node": node, "voters": sorted(voters), "was": sorted(was)}


def cluster_version(node, version) -> dict:
    return {"op": "cluster_version", "node": node, "version": version}


def network_reserve(node, subnet, network, pool, pool_prefix, port=None) -> dict:
    op = {"op": "network_reserve", "node": node, "req": new_request_id(), "subnet": subnet, "network": network,
          "pool": pool, "pool_prefix": pool_prefix}
    if port is not None:
        op["port"] = port
    return op


def network_follow(node, swarm, subnet, gateway, options, port) -> dict:
    return {"op": "network_follow", "node": node, "req": new_request_id(), "swarm": swarm, "subnet": subnet,
            "gateway": gateway, "options": options, "port": port}


def network_unbind(node, network) -> dict:
    return {"op": "network_unbind", "node": node, "network": network}


def network_unfollow(node, swarm) -> dict:
    return {"op": "network_unfollow", "node": node, "swarm": swarm}


def network_bind(node, network, docker_id, options, replace=False) -> dict:
    return {"op": "network_bind", "node": node, "network": network, "docker_id": docker_id, "options": options,
            "replace": replace}


def network_name(node, network, name, identity) -> dict:
    return {"op": "network_name", "node": node, "network": network, "name": name, "identity": identity}


def network_gateway(node, network, gateway) -> dict:
    return {"op": "network_gateway", "node": node, "network": network, "gateway": gateway}


def network_release(node, network) -> dict:
    return {"op": "network_release", "node": node, "network": network}


def network_delete(node, network) -> dict:
    return {"op": "network_delete", "node": node, "network": network}


def ip_allocate(node, network, ip=None) -> dict:
    return {"op": "ip_allocate", "node": node, "req": new_request_id(), "network": network, "ip": ip}


def ip_release(node, network, ip) -> dict:
    return {"op": "ip_release", "node": node, "network": network, "ip": ip}


def endpoint_add(node, network, endpoint, ip, mac) -> dict:
    return {"op": "endpoint_add", "node": node, "network": network, "endpoint": endpoint, "ip": ip, "mac": mac}


def endpoint_remove(node, endpoint) -> dict:
    return {"op": "endpoint_remove", "node": node, "endpoint": endpoint}


def groups_set(node, groups_by_network: Dict[str, List[str]]) -> dict:
    return {"op": "groups_set", "node": node, "groups": groups_by_network}


def groups_withdraw(node, member) -> dict:
    return {"op": "groups_withdraw", "node": node, "member": member}


def withdraw(node, target) -> dict:
    return {"op": "withdraw", "node": node, "target": target, "req": new_request_id()}


def barrier(node) -> dict:
    return {"op": "barrier", "node": node}


__all__ = ["BASE_VERSION", "EVERYTHING", "OPS", "STATE_VERSION", "check_proposable", "new_request_id", "within"]
