"""What a member may claim while its disk lags: Raft's durability rules without waiting on the tick thread.

The journal writes on its own thread (flusher.py) and says how far the disk
has got.  This module keeps Raft's promises from that, on the tick thread,
and never blocks it:
- A follower acknowledges only entries on its disk.  An acknowledgement that
  would claim more is sent at once for what is durable (so the leader keeps
  hearing it), and again in full when the flush completes.
- The leader counts its own copy of an entry only once it is on disk, as in
  the Raft thesis (section 10.2.1): it sends entries while they are being
  written, and an entry commits once a majority holds it durably, the
  leader's copy counting like any other.  PySyncObj counts the leader's copy
  always, so shoutd computes the commit index itself before each tick and
  keeps PySyncObj's view of the followers' copies (matchIndex) at or below
  it, which leaves PySyncObj's own count nothing to add.
- No message leaves while the term or vote it depends on is not on disk.
  Those change only in elections, so only then are messages held.
A lone member has no heartbeats to protect: it waits for its disk before it
commits, as before.
"""


class Durability:
    def __init__(self, journal_slot):
        self._slot = journal_slot       # [DurableJournal] once PySyncObj has built it; [] for a memory journal
        self._held = []                 # (node, message) waiting for the term and vote to be durable
        self._acks = {}                 # node -> (full ack, term, epoch): sent lowered, due in full
        self._acked = {}                # node -> highest entry it acknowledged (durable there), this term
        self._acked_term = None

    @property
    def journal(self):
        return self._slot[0] if self._slot else None

    # -- outgoing messages (the transport) ----------------------------------------

    def outgoing(self, node, message, term):
        """What to send now in place of `message`: a list of (node, message)."""
        journal = self.journal
        if journal is None:
            return [(node, message)]
        if self._held or not journal.meta_durable():
            self._held.append((node, message))
            return []
        if not (isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success")):
            return [(node, message)]
        durable = journal.durable_index()
        if message["next_node_idx"] - 1 <= durable:
            self._acks.pop(node, None)
            return [(node, message)]
        self._acks[node] = (message, term, journal.epoch)
        return [(node, dict(message, next_node_idx=durable + 1))]

    def release(self, term):
        """Messages that the disk has caught up with; call on the tick thread after a flush."""
        journal = self.journal
        if journal is None or not journal.meta_durable():
            return []
        out, self._held = self._held, []
        durable = journal.durable_index()
        for node, (message, at_term, epoch) in list(self._acks.items()):
            if at_term != term or epoch != journal.epoch:
                del self._acks[node]            # about a log that has changed since: the leader asks again
            elif message["next_node_idx"] - 1 <= durable:
                del self._acks[node]
                out.append((node, message))
        return out

    # -- the leader's commit index ----------------------------------------------------

    def before_tick(self, sync):
        """Commit on durable copies only (see the module note); PySyncObj's own count then adds nothing."""
        journal = self.journal
        if journal is None or not sync._isLeader():
            self._acked, self._acked_term = {}, None
            return
        voters = sync.otherNodes
        if not voters:
            journal.flush()                     # a lone member: nobody to send heartbeats to
            return
        term = sync.raftCurrentTerm
        if term != self._acked_term:
            self._acked, self._acked_term = {}, term
        match = sync._SyncObj__raftMatchIndex
        copies = [journal.durable_index()]
        for node in voters:
            acked = max(self._acked.get(node, 0), match.get(node, 0))
            self._acked[node] = acked
            copies.append(acked)
        copies.sort(reverse=True)
        candidate = copies[len(copies) // 2]    # held durably by a majority
        commit = sync.raftCommitIndex
        # Raft counts copies only of the current term's entries; earlier ones commit with them.
        if candidate > commit and journal.term_at(candidate) == term:
            sync._SyncObj__raftCommitIndex = commit = candidate
            journal.setRaftCommitIndex(commit)
        for node in voters:
            if match.get(node, 0) > commit:
                match[node] = commit
