"""Two copies of the state machine, one per thread, and nothing copied between them.

PySyncObj applies committed ops on its tick thread; shoutd reads the state on
its asyncio loop (plugin calls, the reconciler, status).  Sharing one copy
would need a lock around every read, and copying it per read costs time that
grows with the state (at 6,000 addresses a deep copy per entry and per request
cut allocations to 21 per second).  Instead each thread owns a copy:
- TickMachine, the PySyncObj consumer, applies each op on the tick thread.
  Its results go back to proposers; its data is what snapshots serialize.
- LoopReplica, on the event loop, applies the very same ops in the same order,
  handed over through a queue.  Readers on the loop use it directly: within
  one synchronous stretch of loop code it cannot change.
Both are deterministic, so both hold the same state.  Each op is numbered as
it is handed over, and a proposer that got its result waits until the replica
has applied that number (`LoopReplica.until`), so it then reads its own write.

A snapshot installed from the leader replaces the tick copy; the replica gets
one deep copy of it (once per snapshot, not per op).

A state that stops applying (an op or a state version this release cannot
run, see state/ops.py) tells `on_halt` once, on the tick thread: RaftNode
then stops Raft on this host, so that nothing (log compaction included)
overwrites what the journal holds for a newer release to apply.  The replica applies at
most DRAIN_BATCH ops per loop turn, so catching up on thousands of entries
after a partition never stalls the loop.
"""

import asyncio
import collections
import copy
import logging
import threading

from pysyncobj import SyncObjConsumer, replicated

from ..state import ClusterState, empty

log = logging.getLogger(__name__)

# A command that changes nothing; see RaftNode.submit for why it exists.
NUDGE = {"op": "nudge"}
DRAIN_BATCH = 500


class Handover:
    """A thread-safe queue from the tick thread to the loop, numbered."""

    def __init__(self):
        self._items = collections.deque()
        self._lock = threading.Lock()
        self._seq = 0
        self._wake = None            # set by the loop side: called (from any thread) when items arrive
        self._armed = True

    def put(self, kind, payload):
        with self._lock:
            self._seq += 1
            self._items.append((self._seq, kind, payload))
            seq, wake = self._seq, self._wake if self._armed else None
            if wake is not None:
                self._armed = False
        if wake is not None:
            wake()
        return seq

    def take(self, limit):
        with self._lock:
            batch = [self._items.popleft() for _ in range(min(limit, len(self._items)))]
            if not self._items:
                self._armed = True
            return batch, bool(self._items)

    def connect(self, wake):
        with self._lock:
            self._wake = wake
            self._armed = False
        wake()


class TickMachine(SyncObjConsumer):
    """The state inside PySyncObj: logged, snapshotted, applied on the tick thread."""

    def __init__(self, handover):
        self._state = ClusterState()
        self._handover = handover
        self.on_halt = None              # called once, on the tick thread, with why this host stopped applying
        self._halt_told = False
        super().__init__()
        # A new machine (a node rebuilt to join another cluster) starts empty,
        # and so must the replica.
        handover.put("reset", empty())

    @replicated
    def execute(self, op):
        """The one replicated method: on every node, in log order, on the tick thread."""
        if op == NUDGE:
            return None
        result = self._state.apply(op)
        result["seq"] = self._handover.put("op", op)
        self._tell_halt()
        return result

    def _tell_halt(self):
        if self._state.halted and not self._halt_told and self.on_halt is not None:
            self._halt_told = True
            self.on_halt(self._state.halted)

    def has_networks(self):
        """For the join check, which runs on this same thread."""
        return bool(self._state.networks)

    # Snapshots (log compaction, a new node catching up) carry only the data.
    # PySyncObj serializes on this same thread (useFork is off), so no copy.
    def _serialize(self):
        return self._state.data

    def _deserialize(self, data):
        self._state = ClusterState(data if isinstance(data, dict) else empty())
        self._handover.put("reset", copy.deepcopy(data if self._state.halted else self._state.data))
        self._tell_halt()


class LoopReplica:
    """The loop's copy of the state, fed from a Handover."""

    def __init__(self, handover):
        self.state = ClusterState()
        self.applied = 0                 # the number of the last item applied
        self._handover = handover
        self._loop = None
        self._waiters = []               # (seq, future)
        self._on_change = lambda: None
        self.on_apply = None             # (kind, payload) after each item: the replica feed (feed.py)
        self.after_drain = None          # () after a batch, once its writers were woken: the feed sends it

    def attach(self, loop, on_change):
        self._loop = loop
        self._on_change = on_change
        def wake():
            try:
                loop.call_soon_threadsafe(self._drain)
            except RuntimeError:
                pass                     # the loop is gone (shutdown)
        self._handover.connect(wake)

    def _drain(self):
        batch, more = self._handover.take(DRAIN_BATCH)
        for seq, kind, payload in batch:
            if kind == "reset":
                self.state = ClusterState(payload)
            else:
                self.state.apply(payload)
            self.applied = seq
            if self.on_apply is not None:
                self.on_apply(kind, payload)
        if more:
            self._loop.call_soon(self._drain)
        if batch:
            self._wake_waiters()
            if self.after_drain is not None:
                self.after_drain()
            self._on_change()

    def _wake_waiters(self):
        ready = [w for w in self._waiters if w[0] <= self.applied]
        for waiter in ready:
            self._waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(None)

    async def until(self, seq):
        """Wait until item `seq` has been applied here."""
        if seq is None or seq <= self.applied:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        await fut
