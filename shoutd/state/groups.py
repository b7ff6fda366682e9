"""Who listens to which multicast group, per pruned network and host (see multicast.py)."""

from typing import TYPE_CHECKING

from .. import checks
from ..errors import NOT_FOUND
from .records import pruned
from .rules import reject

if TYPE_CHECKING:
    from . import ClusterState


def groups_set(state: "ClusterState", op: dict) -> int:
    """A host's current groups, per pruned network: each list replaces what it reported before."""
    node = op["node"]
    if node not in state.members:
        reject("%s is not a member of the cluster" % node, NOT_FOUND)
    sets = op["groups"]
    if not isinstance(sets, dict):
        reject("groups must map network ids to lists of groups")
    checked = {net_id: checks.multicast_groups(groups) for net_id, groups in sets.items()}
    changed = 0
    for net_id, groups in checked.items():
        net = state.networks.get(net_id)
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


def groups_withdraw(state: "ClusterState", op: dict) -> int:
    """A member that stopped answering (`node`, the leader, saw it): forget its groups until it reports again."""
    member = op["member"]
    return sum(net["listeners"].pop(member, None) is not None for net in state.networks.values())
