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
  unchanged are never touched on disk; only what really differs is cut, with
  one ftruncate.
- Compaction writes the kept entries to a new file and renames it over the
  old one, so a crash leaves either log whole.
- At start-up, if a snapshot exists and the log holds the snapshot's last two
  entries, the log is first trimmed to start there, so PySyncObj keeps it.
- `sync()` fsyncs what was written (and a new snapshot file).  RaftNode calls
  it where an entry becomes acknowledged: before a follower tells the leader
  it holds entries, and before the leader counts its own copy towards a
  commit (the start of each tick); entries arriving together share one fsync.
  The term and vote are fsynced as they change.  With durable=False
  (journal_sync = no) nothing is fsynced: crash-safe, not power-loss-safe.

A log written by shoutd 0.1 (PySyncObj's format) is converted on first start.
PySyncObj builds its journal itself from a file name, so `building` swaps its
factory for ours while one SyncObj is constructed.
"""

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

log = logging.getLogger(__name__)

HEADER = b"shoutd raft log 1\n"
_RECORD = struct.Struct("<IIQQ")     # command length, crc32, index, term; then the command


def _fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _record(command, idx, term):
    body = struct.pack("<QQ", idx, term) + command
    return _RECORD.pack(len(command), zlib.crc32(body), idx, term) + command


class DurableJournal(Journal):
    def __init__(self, path, dump=None, durable=True, legacy=None):
        self.path = path
        self.durable = durable
        self._dir = os.path.dirname(os.path.abspath(path))
        self._dump = dump
        self._dump_seen = None
        self._entries = []          # (command, idx, term), as PySyncObj sees the log
        self._offsets = []          # where each entry's record starts in the file
        self._pending = []          # [(entry, offset)]: deleted entries still on disk, in order
        self._dirty = False
        self._meta = {"term": 0, "voted_for": None, "commit": 1}
        self._meta_dirty = False
        if not os.path.exists(path) and legacy and os.path.exists(legacy):
            self._convert(legacy)
        self._load()
        self._trim_to_snapshot()

    # -- the file ---------------------------------------------------------------

    def _load(self):
        try:
            with open(self.path + ".meta") as f:
                self._meta.update(json.load(f))
        except (OSError, ValueError):
            pass
        if not os.path.exists(self.path):
            self._write_new(self.path, [])
        with open(self.path, "rb") as f:
            data = f.read()
        if not data.startswith(HEADER):
            raise ShoutdError("%s is not a shoutd Raft log; move it away to start this member afresh (it then "
                              "catches up from the others)" % self.path)
        pos = len(HEADER)
        while pos + _RECORD.size <= len(data):
            length, crc, idx, term = _RECORD.unpack_from(data, pos)
            command = data[pos + _RECORD.size:pos + _RECORD.size + length]
            if len(command) < length or zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
                break
            self._entries.append((command, idx, term))
            self._offsets.append(pos)
            pos += _RECORD.size + length
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        if pos != len(data):
            log.warning("%s: discarding %d bytes of a record torn at the end (a crash while writing)",
                        self.path, len(data) - pos)
            os.ftruncate(self._fd, pos)
            self._dirty = True

    def _write_new(self, path, entries):
        """Write a whole log to `path` by way of a temporary file: either all of it is there or none."""
        tmp = path + ".new"
        with open(tmp, "wb") as f:
            f.write(HEADER)
            for entry in entries:
                f.write(_record(*entry))
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.durable:
            _fsync_path(self._dir, directory=True)

    def _convert(self, legacy):
        old = FileJournal(legacy)
        entries = [old[i] for i in range(len(old))]
        self._meta = {"term": old.getCurrentTerm(), "voted_for": old.getVotedForNodeId(),
                      "commit": old.getRaftCommitIndex()}
        old._destroy()
        self._write_new(self.path, entries)
        self._store_meta()
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

    # -- PySyncObj's Journal interface --------------------------------------------

    def add(self, command, idx, term):
        entry = (command, idx, term)
        if self._pending and self._pending[0][0] == entry:
            _, offset = self._pending.pop(0)          # deleted, then sent again unchanged: still on disk
            self._entries.append(entry)
            self._offsets.append(offset)
            return
        self._cut()
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        os.write(self._fd, _record(command, idx, term))
        self._entries.append(entry)
        self._offsets.append(offset)
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom):
        cut = list(zip(self._entries[entryFrom:], self._offsets[entryFrom:]))
        self._pending = cut + self._pending
        del self._entries[entryFrom:]
        del self._offsets[entryFrom:]

    def deleteEntriesTo(self, entryTo):
        self._cut()
        kept = self._entries[entryTo:]
        os.close(self._fd)
        self._write_new(self.path, kept)
        self._entries, self._offsets = [], []
        self._pending = []
        self._load_after_rewrite(kept)

    def _load_after_rewrite(self, kept):
        pos = len(HEADER)
        for entry in kept:
            self._entries.append(entry)
            self._offsets.append(pos)
            pos += _RECORD.size + len(entry[0])
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        self._dirty = False

    def clear(self):
        self._pending = []
        os.ftruncate(self._fd, len(HEADER))
        self._entries, self._offsets = [], []
        self._dirty = True

    def __getitem__(self, item):
        return self._entries[item]

    def __len__(self):
        return len(self._entries)

    def _destroy(self):
        self._cut()
        self._store_meta()
        os.close(self._fd)

    def setRaftCommitIndex(self, raftCommitIndex):
        if self._meta["commit"] != raftCommitIndex:
            self._meta["commit"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self):
        return self._meta["commit"]

    def setCurrentTerm(self, term, votedForNodeId):
        # Raft: the term and vote must be on disk before any message shows them.
        self._meta["term"], self._meta["voted_for"] = term, votedForNodeId
        self._store_meta()

    def getCurrentTerm(self):
        return self._meta["term"]

    def getVotedForNodeId(self):
        return self._meta["voted_for"]

    def onOneSecondTimer(self):
        if self._meta_dirty:
            self._store_meta()

    # -- ours ------------------------------------------------------------------------

    def _cut(self):
        """Really delete what was deleted and not sent again."""
        if self._pending:
            os.ftruncate(self._fd, self._pending[0][1])
            self._pending = []
            self._dirty = True

    def _store_meta(self):
        tmp = self.path + ".meta.new"
        with open(tmp, "w") as f:
            json.dump(self._meta, f)
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        os.replace(tmp, self.path + ".meta")
        if self.durable:
            _fsync_path(self._dir, directory=True)
        self._meta_dirty = False

    def sync(self):
        """Make every entry appended so far durable (and a new snapshot file)."""
        self._cut()
        if not self.durable:
            return
        if self._dirty:
            self._dirty = False
            os.fsync(self._fd)
        if self._dump is not None:
            try:
                st = os.stat(self._dump)
            except FileNotFoundError:
                return
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._dump_seen:
                _fsync_path(self._dump)
                _fsync_path(self._dir, directory=True)
                self._dump_seen = seen


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
