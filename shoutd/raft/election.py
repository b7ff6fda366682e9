"""Elections only when the leader is really gone: PreVote and a sticky leader (Raft thesis 9.6 and 4.2.3).

PySyncObj starts an election the moment a member's timer runs out: it raises
its term and asks for votes, and every member that sees the higher term
drops its leader.  So a member that was cut off for a while, or whose tick
thread was held up, comes back and deposes a healthy leader; and the term
climbs with every failed attempt.

Here a member whose timer runs out first asks the others whether they would
vote for it (a pre-vote, which changes nothing anywhere).  A member says yes
only if it has not heard from a leader for half the minimum election
timeout, and the asker's log is at least as up to date as its own.  Only
with a majority of yeses does PySyncObj run its real election.  And a
follower that heard from its leader within that time ignores a request for
its vote altogether (a member of an older release, which does not pre-vote,
cannot depose the leader either).

Why half: when a leader dies, every follower stops hearing it at about the
same moment, and the first whose timer runs out (after the minimum timeout
at the earliest) asks the others.  Had they to be silent for the full
minimum too, the one that heard the last heartbeat a few milliseconds later
would say no, and the election would wait for another timeout.  A leader
that is alive is heard every 0.1 s, far within half the minimum.

Pre-votes travel as messages of their own type through the same guarded,
authenticated connections; PySyncObj never sees them.
"""

import logging
import random
import time

log = logging.getLogger(__name__)

PRE_VOTE = "shoutd_pre_vote"
PRE_VOTE_ANSWER = "shoutd_pre_vote_answer"


def last_log(sync):
    """(term, index) of the member's last log entry: what Raft compares to find the more up-to-date log."""
    _, idx, term = sync._SyncObj__raftLog[-1]
    return term, idx


class Elections:
    def __init__(self, election_min, election_max):
        self.election_min = election_min
        self.election_max = election_max
        self.leader_fresh = election_min / 2     # a leader heard this recently is alive (see the note)
        self._round = None              # (term it would run for, members that said yes)
        self._won = None                # the term a pre-vote was won for: PySyncObj may elect now
        self._asking_since = None       # when this host began asking for pre-votes, with no leader since

    def before_tick(self, sync, send):
        """Hold PySyncObj's election back until a pre-vote is won; ask for one when its timer runs out."""
        if sync.selfNode is None or sync._isLeader():
            self._round = self._won = self._asking_since = None
            return
        now = time.monotonic()
        # A cluster of one (a host on its own, before AddPeer) does not wait for its timer: nobody
        # else can lead, and the wait would only hold back its first write, its registration.
        if sync._SyncObj__raftElectionDeadline >= now and sync.otherNodes:
            return
        term = sync.raftCurrentTerm + 1
        if self._won == term:
            return                      # PySyncObj's own election runs in this tick
        sync._SyncObj__raftElectionDeadline = now + random.uniform(self.election_min, self.election_max)
        self._round = (term, {sync.selfNode.id})
        last_term, last_idx = last_log(sync)
        if self._asking_since is None:
            self._asking_since = now
            leader = sync._getLeader()
            log.info("%s: asking for pre-votes for term %d", "no leader" if leader is None else
                     "leader %s not heard" % leader.id, term)
        else:
            log.debug("still no leader: asking for pre-votes for term %d", term)
        for node in sync.otherNodes:
            send(node, {"type": PRE_VOTE, "term": term, "last_log_term": last_term, "last_log_index": last_idx})
        self._count(sync)

    def on_message(self, sync, node, message, heard, send):
        """Handle a pre-vote message, or drop a vote request a sticky follower ignores; True if handled."""
        kind = message.get("type")
        if kind == PRE_VOTE:
            granted, mine_newer = self._would_vote(sync, node.id, message, heard)
            log.debug("pre-vote for %s in term %s: %s", node.id, message.get("term"), "yes" if granted else "no")
            send(node, {"type": PRE_VOTE_ANSWER, "term": message.get("term"), "granted": granted})
            if mine_newer:
                # The asker has seen the leader go too, but this log is newer: it cannot win, this host
                # can.  Ask now rather than at this host's own timeout, a second later.
                now = time.monotonic()
                deadline = sync._SyncObj__raftElectionDeadline
                sync._SyncObj__raftElectionDeadline = min(deadline, now + random.uniform(0, 0.05))
            return True
        if kind == PRE_VOTE_ANSWER:
            if self._round and message.get("term") == self._round[0] and message.get("granted") is True:
                self._round[1].add(node.id)
                self._count(sync)
            return True
        if kind == "request_vote" and not sync._isLeader() and self._leader_heard(sync, heard):
            log.info("ignored %s's request for a vote in term %s: the leader was heard from within %.1f s",
                     node.id, message.get("term"), self.leader_fresh)
            return True
        return False

    def settled(self):
        """This host hears a leader: it has not been asking in vain (a won pre-vote stands: see before_tick)."""
        self._asking_since = None

    def unanswered(self, heard, members, now):
        """Members that have not answered this host's pre-votes: those it cannot reach, as far as it can tell.

        Followers hear only from the leader, so before this host has asked
        for a while (two rounds at most), nobody is named.
        """
        if self._asking_since is None or now - self._asking_since < self.election_min:
            return ()
        since = max(self._asking_since, now - 2 * self.election_max)
        return tuple(sorted(m for m in members if heard.get(m, -1e9) < since))

    def _count(self, sync):
        term, yes = self._round
        if len(yes) > (len(sync.otherNodes) + 1) / 2:
            self._won, self._round = term, None
            sync._SyncObj__raftElectionDeadline = 0      # PySyncObj elects at its next tick
            log.info("pre-vote for term %d won (%s): starting an election", term, ", ".join(sorted(yes)))

    def _leader_heard(self, sync, heard):
        leader = sync._getLeader()
        return leader is not None and time.monotonic() - heard.get(leader.id, -1e9) < self.leader_fresh

    def _would_vote(self, sync, asker, message, heard):
        """(whether to say yes, whether this host's own log is the newer one)."""
        if sync.selfNode is None or sync._isLeader() or self._leader_heard(sync, heard):
            return False, False
        term, last_term, last_idx = (message.get(k) for k in ("term", "last_log_term", "last_log_index"))
        if not all(isinstance(v, int) for v in (term, last_term, last_idx)) or term < sync.raftCurrentTerm:
            return False, False
        mine, theirs = last_log(sync), (last_term, last_idx)
        if self._round and self._round[0] == term:
            # Both ask for the same term: their ticks run in step (the lost leader's connection closed
            # on both at once), and two candidates would split the vote.  One of the two yields: the
            # one with the older log, or with equal logs the one with the greater address.
            granted = theirs > mine or (theirs == mine and asker < sync.selfNode.id)
            if granted:
                self._round = None
            return granted, False
        granted = theirs >= mine
        return granted, not granted
