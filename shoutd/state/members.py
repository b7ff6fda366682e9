"""Members: the hosts of the cluster (their VTEPs), and the state version the cluster runs.

A member's record carries the newest state version its shoutd runs, as it
reported it when it registered (member_up).  That field is the one thing a
member reports in a form shoutd 0.2 does not store: 0.2 ignores it, so its
copy of the record lacks it.  Nothing applies differently because of it:
only the leader reads it, to decide when to raise the cluster's version
(service/versions.py), and by the time that decision is taken every member
runs a release that stores it.

From state version 6 the state also records which members vote (are in
Raft): the others are replicas, which follow the state through a voter.
"""

from typing import TYPE_CHECKING, List

from .. import checks
from ..errors import CONFLICT, NOT_FOUND
from .records import BASE_VERSION, Member
from .rules import Halt, reject

MAX_VOTERS = 9      # Raft with more voters only slows commits; issue 16 asks for 3 or 5

if TYPE_CHECKING:
    from . import ClusterState


def member_up(state: "ClusterState", op: dict) -> Member:
    node = checks.text(op["node"], "member")
    version = op.get("version", BASE_VERSION)
    if not isinstance(version, int) or version < 1:
        reject("bad state version %r" % (version,))
    rec: Member = {"id": node, "advertise": str(checks.ipv4(op["advertise"], "advertise address")),
                   "raft": checks.text(op["raft"], "Raft address"),
                   "hostname": checks.text(str(op.get("hostname") or node), "hostname"),
                   "version": version}
    if "release" in op:
        rec["release"] = checks.text(op["release"], "release")
    for other in state.members.values():
        if other["id"] != node and other["advertise"] == rec["advertise"]:
            reject("advertise address %s is already used by member %s" % (rec["advertise"], other["id"]), CONFLICT)
    state.members[node] = rec
    return dict(rec)  # type: ignore[return-value]


def member_remove(state: "ClusterState", op: dict) -> str:
    node = op["node"]
    if node not in state.members:
        reject("%s is not a member of the cluster" % node, NOT_FOUND)
    del state.members[node]
    if node in state.data["voters"]:
        state.data["voters"].remove(node)
    # A removed host's containers cannot come back: free what they held.
    for ep in [e for e in state.endpoints.values() if e["node"] == node]:
        state.drop_endpoint(ep)
    for net in state.networks.values():
        net["bindings"].pop(node, None)
        net["listeners"].pop(node, None)
        for ip in [ip for ip, a in net["addresses"].items() if a["node"] == node]:
            del net["addresses"][ip]
    return node


def voters_set(state: "ClusterState", op: dict) -> List[str]:
    """Record which members vote (are in Raft); every other member is a replica (raft/feed.py).

    The leader records Raft's membership here after each change, so that
    replicas, which are not in Raft, know whom to follow, and every host can
    show each member's role.  Each change names the voters it was decided
    from (`was`): two decided from the same record (AddPeer on two hosts, or
    AddPeer and the leader's promotion of a replica) would otherwise both
    add a voter, and the cluster would get more voters than it should have.
    """
    was = op.get("was")
    if was is not None:
        if not isinstance(was, list):
            reject("was must be the list of voters the change was decided from, not %r" % (was,))
        if sorted(checks.text(v, "voter") for v in was) != state.data["voters"]:
            reject("the voters changed meanwhile (now %s); decide again from them"
                   % (", ".join(state.data["voters"]) or "none recorded"), CONFLICT)
    voters = op["voters"]
    if not isinstance(voters, list) or not 1 <= len(voters) <= MAX_VOTERS:
        reject("voters must be a list of 1 to %d member addresses, not %r" % (MAX_VOTERS, voters))
    named = sorted({checks.text(v, "voter") for v in voters})
    if len(named) != len(voters):
        reject("a voter named twice in %r" % (voters,))
    state.data["voters"] = named
    return list(named)


def cluster_version(state: "ClusterState", op: dict) -> int:
    """Raise the cluster's state version (never lower it).  A host that cannot run it stops here."""
    from . import ops
    target = op["version"]
    if not isinstance(target, int) or target < 1:
        reject("bad state version %r" % (target,))
    if target > ops.STATE_VERSION:
        raise Halt(target)
    if target > state.version:
        state.data["version"] = target
    return state.version
