"""Who votes: a few voters in Raft, every other member a replica (issue 16, docs/replicas.md).

Raft's cost grows with its voters (every commit waits for a majority of
them, every election asks them all) and PySyncObj connects every voter to
every other.  So only a few members vote; the rest are replicas, which
follow the state through one voter (raft/feed.py) and are never counted.

How many vote (`voter_target`): every member while there are fewer than 3;
then 3, which survive one lost voter; and 5, which survive two, once the
cluster has `five_from` members (config `voters_five_from`, 7 by default:
below that, two hosts down at once is a large part of the cluster anyway,
and each voter more makes every commit wait for one more disk).

What to change (`next_change`) is decided on the leader, one change at a
time because Raft changes membership one member at a time.  A voter lost for
good (removed, or silent for LOST_AFTER) goes first, which keeps a majority
reachable while the set is short; then the set is filled from the replicas
that are up, in a stable order so that every leader picks alike.

The leader also keeps the state's record of who votes (`voters_set`) equal to
Raft's membership: replicas read it to find the voters, and every host shows
each member's role from it.
"""

import logging
from typing import Iterable, List, Optional, Sequence, Tuple

from .errors import ShoutdError
from .kickloop import KickLoop
from .state import ops

log = logging.getLogger(__name__)

LOST_AFTER = 60.0          # seconds a voter may be silent before a replica takes its place
RECORD_SINCE = 6           # the state version that has voters_set


def voter_target(members: int, five_from: int = 7) -> int:
    """How many of `members` hosts vote."""
    if members < 3:
        return members
    return 5 if members >= five_from else 3


def next_change(voters: Sequence[str], members: Iterable[str], lost: Iterable[str], up: Iterable[str],
                target: int) -> Optional[Tuple[str, str]]:
    """("remove", voter) or ("add", replica) to move toward `target` healthy voters, or None.

    `voters` are Raft's members, `members` everyone registered, `lost` the
    voters gone for good, `up` the replicas that can be promoted now.
    """
    lost_voters = sorted(set(voters) & set(lost))
    healthy = [v for v in voters if v not in lost_voters]
    candidates: List[str] = sorted((set(up) & set(members)) - set(voters))
    if lost_voters and len(healthy) >= 2:
        return "remove", lost_voters[0]       # the healthy ones still make a majority of what is left
    if len(healthy) < target and candidates:
        return "add", candidates[0]
    if lost_voters:
        return "remove", lost_voters[0]
    return None                                # more healthy voters than the target stay: never demote one


class VoterRecord(KickLoop):
    """On the leader: record Raft's membership in the state (voters_set) whenever they differ."""

    def __init__(self, node, view, submit, interval=30.0):
        super().__init__(interval, view.caught_up)
        self.node = node
        self.view = view                 # state, status, caught_up (the RaftNode)
        self.submit = submit

    async def step(self, periodic):
        state, status = self.view.state, self.view.status
        if status.role != "leader" or state.version < RECORD_SINCE:
            return
        voters = sorted(status.nodes)
        if voters == state.data["voters"]:
            return
        try:
            await self.submit(ops.voters_set(self.node, voters))
        except ShoutdError as e:
            log.info("recording the voters %s: %s; trying again", ", ".join(voters), e)
            self.kick(delay=1.0)
            return
        log.info("voters now %s", ", ".join(voters))
