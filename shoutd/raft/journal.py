"""The Raft log on disk: nothing acknowledged is ever lost to a crash or (with fsync) a power loss.

PySyncObj's own file journal (0.3.17 included) loses committed entries in
three ways, each seen or reachable under shoutd's fault tests:
- It is an mmap that is never flushed, and the term and vote are written
  without fsync: a power loss can take back what was acknowledged.
- A follower deletes the entries after a point and appends the leader's
  again even when they are the same; log compaction rewrites the whole file
  in place.  A crash in between leaves a log without entries the node
  had acknowledged.
- A crash after a snapshot is written but before the log is compacted leaves
  a log that does not start at the snapshot; on the next start PySyncObj then
  discards the whole log, entries after the snapshot included.

DurableJournal implements PySyncObj's Journal interface differently:
- An append-only file of checksummed records.  A torn record at the end
  (power loss during a write) is found and cut off at start-up.
- Deleting entries is lazy: entries that are deleted and then appended again
  unchanged are never touched on disk; only what really differs is cut.
- Compaction writes the kept entries to a new file and renames it over the
  old one, so a crash leaves either log whole.
- At start-up, if a snapshot exists and the log holds the snapshot's last two
  entries, the log is first trimmed to start there, so PySyncObj keeps it.
- The tick thread never touches the disk after start-up: every change is
  queued to the Flusher (flusher.py), which writes and fsyncs on its own
  thread.  The journal answers from memory, and tells the tick thread what
  the disk already holds: `durable_index()` (the last entry on disk) and
  `meta_durable()` (the term and vote on disk).  RaftNode and the transport
  claim nothing beyond that: a follower acknowledges only durable entries,
  the leader counts its own copy only once durable, and no message leaves
  while the term or vote is not.  With durable=False (journal_sync = no)
  nothing is fsynced: crash-safe, not power-loss-safe.

A log written by shoutd 0.1 (PySyncObj's format) is converted on first start.
PySyncObj builds its journal itself from a file name, so `building` swaps its
factory for ours while one SyncObj is constructed.
"""

import bisect
import contextlib
import json
import logging
import os
import struct
import threading
import zlib

import pysyncobj.syncobj as _syncobj
from pysyncobj.journal import FileJournal, Journal, MemoryJournal
from pysyncobj.serializer import Serializer

from ..errors import ShoutdError
from .flusher import HEADER, RECORD, Flusher, open_log, record, write_log, write_meta

log = logging.getLogger(__name__)


class DurableJournal(Journal):
    def __init__(self, path, dump=None, durable=True, legacy=None):
        self.path = path
        self.durable = durable
        self._dump = dump
        self._entries = []          # (command, idx, term), as PySyncObj sees the log
        self._offsets = []          # where each entry's record starts in the file
        self._seqs = []             # the flusher operation that put each entry on disk
        self._pending = []          # [(entry, offset, seq)]: deleted entries still on disk, in order
        self._end = 0               # the file's size once every queued operation is applied
        self._meta = {"term": 0, "voted_for": None, "commit": 1}
        self._meta_dirty = False
        self._vote_seq = 0          # the flusher operation that writes the term and vote as they are now
        self.epoch = 0              # counts removals from the log's end: a claim made before one is void
        if not os.path.exists(path) and legacy and os.path.exists(legacy):
            self._convert(legacy)
        fd = self._load()
        self.flusher = Flusher(path, fd, durable, dump)
        self._trim_to_snapshot()

    # -- the file at start-up (before any tick) -----------------------------------

    def _load(self):
        try:
            with open(self.path + ".meta") as f:
                self._meta.update(json.load(f))
        except (OSError, ValueError):
            pass
        if not os.path.exists(self.path):
            write_log(self.path, [], self.durable)
        with open(self.path, "rb") as f:
            data = f.read()
        if not data.startswith(HEADER):
            raise ShoutdError("%s is not a shoutd Raft log; move it away to start this member afresh (it then "
                              "catches up from the others)" % self.path)
        pos = len(HEADER)
        while pos + RECORD.size <= len(data):
            length, crc, idx, term = RECORD.unpack_from(data, pos)
            command = data[pos + RECORD.size:pos + RECORD.size + length]
            if len(command) < length or zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
                break
            self._entries.append((command, idx, term))
            self._offsets.append(pos)
            self._seqs.append(0)
            pos += RECORD.size + length
        fd = open_log(self.path)
        if pos != len(data):
            log.warning("%s: discarding %d bytes of a record torn at the end (a crash while writing)",
                        self.path, len(data) - pos)
            os.ftruncate(fd, pos)
            if self.durable:
                os.fsync(fd)
        self._end = pos
        return fd

    def _convert(self, legacy):
        old = FileJournal(legacy)
        entries = [old[i] for i in range(len(old))]
        self._meta = {"term": old.getCurrentTerm(), "voted_for": old.getVotedForNodeId(),
                      "commit": old.getRaftCommitIndex()}
        old._destroy()
        write_log(self.path, entries, self.durable)
        write_meta(self.path, self._meta, self.durable)
        for suffix in ("", ".meta"):
            if os.path.exists(legacy + suffix):
                os.replace(legacy + suffix, legacy + suffix + ".converted")
        log.info("converted the Raft log of shoutd 0.1 (%d entries) from %s", len(entries), legacy)

    def _trim_to_snapshot(self):
        """Start the log at the snapshot's last two entries, if it holds them (see the module note)."""
        if self._dump is None or not os.path.exists(self._dump) or len(self._entries) < 2:
            return
        try:
            snapshot = Serializer(self._dump, 1, False, None, None, None).deserialize()
            before, last = snapshot[2], snapshot[1]
        except Exception as e:  # noqa: BLE001 - PySyncObj itself will report a broken snapshot
            log.warning("cannot read the snapshot %s: %s", self._dump, e)
            return
        for i in range(len(self._entries) - 1):
            if self._entries[i] == tuple(before) and self._entries[i + 1] == tuple(last):
                if i:
                    self.deleteEntriesTo(i)
                return

    # -- PySyncObj's Journal interface (the tick thread) -------------------------------

    def add(self, command, idx, term):
        entry = (command, idx, term)
        if self._pending and self._pending[0][0] == entry:
            _, offset, seq = self._pending.pop(0)     # deleted, then sent again unchanged: still on disk
            self._keep(entry, offset, seq)
            return
        self._cut()
        data = record(command, idx, term)
        offset, self._end = self._end, self._end + len(data)
        self._keep(entry, offset, self.flusher.submit("append", data))

    def _keep(self, entry, offset, seq):
        self._entries.append(entry)
        self._offsets.append(offset)
        self._seqs.append(seq)

    def deleteEntriesFrom(self, entryFrom):
        self.epoch += 1
        cut = list(zip(self._entries[entryFrom:], self._offsets[entryFrom:], self._seqs[entryFrom:]))
        self._pending = cut + self._pending
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]
        del self._seqs[entryFrom:]

    def deleteEntriesTo(self, entryTo):
        self._cut()
        del self._entries[:entryTo]
        del self._seqs[:entryTo]
        self._offsets, pos = [], len(HEADER)
        for command, _, _ in self._entries:
            self._offsets.append(pos)
            pos += RECORD.size + len(command)
        self._end = pos
        # Entries keep their sequence numbers: they were durable in the old
        # file and stay so in the new one, which replaces it atomically.
        self.flusher.submit("rewrite", list(self._entries))

    def clear(self):
        self.epoch += 1
        self._pending = []
        self._entries, self._offsets, self._seqs = [], [], []
        self._end = len(HEADER)
        self.flusher.submit("truncate", self._end)

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self):
        return len(self._entries)

    def _destroy(self):
        self._cut()
        self._write_meta()
        self.flusher.close()

    def setRaftCommitIndex(self, raftCommitIndex):
        if self._meta["commit"] != raftCommitIndex:
            self._meta["commit"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self):
        return self._meta["commit"]

    def setCurrentTerm(self, term, votedForNodeId):
        # Raft: the term and vote must be on disk before any message shows
        # them; the transport holds messages until meta_durable().
        self._meta["term"], self._meta["voted_for"] = term, votedForNodeId
        self._vote_seq = self._write_meta()

    def getCurrentTerm(self):
        return self._meta["term"]

    def getVotedForNodeId(self):
        return self._meta["voted_for"]

    def onOneSecondTimer(self):
        if self._meta_dirty:
            self._write_meta()

    # -- ours ------------------------------------------------------------------------

    def _cut(self):
        """Really delete what was deleted and not sent again."""
        if self._pending:
            self._end = self._pending[0][1]
            self._pending = []
            self.flusher.submit("truncate", self._end)

    def _write_meta(self):
        self._meta_dirty = False
        return self.flusher.submit("meta", dict(self._meta))

    def durable_index(self):
        """The last log index that is on disk, with everything before it (the snapshot covers what precedes the log)."""
        if not self._entries:
            return 0
        done = self.flusher.durable_seq
        if self._seqs[-1] <= done:
            return self._entries[-1][1]
        held = bisect.bisect_right(self._seqs, done)
        return self._entries[held - 1][1] if held else self._entries[0][1] - 1

    def meta_durable(self):
        """The term and vote as they are now are on disk (a commit index still on its way does not matter)."""
        return self._vote_seq <= self.flusher.durable_seq

    def term_at(self, idx):
        """The term of the entry at log index `idx`, or None if the log does not hold it."""
        if not self._entries:
            return None
        pos = idx - self._entries[0][1]
        return self._entries[pos][2] if 0 <= pos < len(self._entries) else None

    def flush(self, timeout=None):
        """Block until everything so far is on disk (the stale tail cut too): for a lone node and for tests."""
        self._cut()
        return self.flusher.wait(timeout=timeout)


_factory_lock = threading.Lock()


@contextlib.contextmanager
def building(dump=None, durable=True, legacy=None):
    """While a SyncObj is built inside this block, its journal is a DurableJournal.

    Yields a list that then holds the journal that was built.
    """
    made = []

    def create(path=None):
        if path is None:
            return MemoryJournal()
        journal = DurableJournal(path, dump, durable, legacy)
        made.append(journal)
        return journal
    with _factory_lock:
        original = _syncobj.createJournal
        _syncobj.createJournal = create
        try:
            yield made
        finally:
            _syncobj.createJournal = original


def remove_files(journal_file, dump_file):
    """Forget a node's log and snapshot (it is joining another cluster)."""
    for f in filter(None, (journal_file, dump_file)):
        for path in (f, f + ".new", f + ".meta", f + ".meta.new", f + ".tmp", f + ".1.tmp"):
            if os.path.exists(path):
                os.unlink(path)
