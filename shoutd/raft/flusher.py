"""The journal's disk work, on a thread of its own: the Raft tick thread never waits for a disk.

PySyncObj runs Raft on one thread: heartbeats, votes, acknowledgements and
commits.  An fsync there stops all of it, and a disk that dockerd or
containerd keeps busy (a container starting, an image being pulled) can take
one to two seconds per fsync.  A leader that stops sending heartbeats that
long is deposed, and every write is refused meanwhile (issue 12).

So the tick thread only plans: each change to the file (append a record,
cut the tail, rewrite the whole log, replace the meta file with the term
and vote) is queued here with a sequence number, and this thread applies
the queue in order.  Whatever queued while it was busy goes to disk together
with one fsync (group commit).  `durable_seq` says how far the disk has got,
and the tick thread decides from it what it may claim (journal.py), so
every promise the journal makes holds without the tick thread waiting:
- a follower acknowledges only entries at or below durable_seq;
- the leader counts its own copy of an entry only once it is durable;
- no message leaves while the term or vote it depends on is not durable.

A failed write or fsync cannot be retried safely (Linux may drop the dirty
pages it could not write), so the flusher then stops and says why: the
daemon exits and systemd restarts it from what is on disk.
"""

import json
import logging
import os
import struct
import threading
import time
import zlib

log = logging.getLogger(__name__)

HEADER = b"shoutd raft log 1\n"
RECORD = struct.Struct("<IIQQ")     # command length, crc32, index, term; then the command
SLOW_FLUSH = 0.5                    # seconds; a flush slower than this is logged (etcd warns at 1 s)
FLUSH_WINDOW = 600                  # seconds over which the slowest flush is remembered
IDLE_EXIT = 5.0                     # an idle flusher thread ends; the next write starts another


def record(command, idx, term):
    body = struct.pack("<QQ", idx, term) + command
    return RECORD.pack(len(command), zlib.crc32(body), idx, term) + command


def fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_log(path, entries, durable):
    """Write a whole log to `path` by way of a temporary file: either all of it is there or none."""
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(HEADER)
        for entry in entries:
            f.write(record(*entry))
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_path(os.path.dirname(os.path.abspath(path)), directory=True)


def write_meta(path, meta, durable):
    """The term, vote and commit index, replaced whole (`path` is the log's; the meta file sits beside it)."""
    tmp = path + ".meta.new"
    with open(tmp, "w") as f:
        json.dump(meta, f)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path + ".meta")
    if durable:
        fsync_path(os.path.dirname(os.path.abspath(path)), directory=True)


def open_log(path):
    return os.open(path, os.O_RDWR | os.O_APPEND)


class Flusher:
    """Applies one journal's queued disk operations in order; one fsync per batch.

    Operations: ("append", record bytes), ("truncate", offset), ("rewrite",
    entries), ("meta", dict).  `durable` False (journal_sync = no) writes the
    same way without fsync: a crashed process loses nothing it acknowledged,
    a power loss may.
    """

    def __init__(self, path, fd, durable=True, dump=None):
        self.path = path
        self.durable = durable
        self.on_durable = None            # called on this thread after each batch (wakes the tick thread)
        self.durable_seq = 0              # every operation up to this one is on disk
        self.failed = None                # why the journal can take no more writes
        self._fd = fd
        self._dump = dump
        self._dump_seen = None
        self._cond = threading.Condition()
        self._ops = []
        self._seq = 0
        self._thread = None
        self._closing = False
        self._slowest = {}                # minute -> the slowest flush in it (seconds)

    # -- the tick thread's side ---------------------------------------------------

    def submit(self, kind, payload):
        with self._cond:
            self._seq += 1
            self._ops.append((self._seq, kind, payload))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shoutd-journal", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self._seq

    def wait(self, seq=None, timeout=None):
        """Block until operation `seq` (default: everything queued so far) is on disk; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            seq = self._seq if seq is None else seq
            while self.durable_seq < seq and self.failed is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return self.failed is None

    def close(self):
        """Write out everything queued, then stop and close the file."""
        self.wait()
        with self._cond:
            self._closing = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        os.close(self._fd)

    def slowest(self, window=FLUSH_WINDOW):
        """The slowest flush of the last `window` seconds, in seconds (0.0 if none)."""
        since = int((time.time() - window) // 60)
        return max((d for minute, d in list(self._slowest.items()) if minute >= since), default=0.0)

    # -- this thread ------------------------------------------------------------------

    def _run(self):
        while True:
            with self._cond:
                if not self._ops and not self._closing:
                    self._cond.wait(IDLE_EXIT)
                if not self._ops:          # idle (or closing): the next submit starts a new thread
                    self._thread = None
                    return
                batch, self._ops = self._ops, []
            began = time.monotonic()
            try:
                count = self._apply(batch)
            except OSError as e:
                self._fail(e)
                return
            took = time.monotonic() - began
            self._record(took)
            if took >= SLOW_FLUSH:
                log.warning("slow journal flush: %.2f s for %d change(s) to %s; a busy disk (an image being "
                            "pulled?) delays commits, never heartbeats", took, count, self.path)
            with self._cond:
                self.durable_seq = batch[-1][0]
                self._cond.notify_all()
            if self.on_durable is not None:
                try:
                    self.on_durable()
                except OSError:
                    pass                  # the tick thread is gone (its pipe full or closed): nobody to wake

    def _apply(self, batch):
        dirty = False
        for _, kind, payload in batch:
            if kind == "append":
                os.write(self._fd, payload)
                dirty = True
            elif kind == "truncate":
                os.ftruncate(self._fd, payload)
                dirty = True
            elif kind == "rewrite":
                # A compaction: the snapshot that replaces the entries left out
                # must be on disk before the log without them is.
                self._sync_dump()
                if dirty and self.durable:
                    os.fsync(self._fd)
                os.close(self._fd)
                write_log(self.path, payload, self.durable)
                self._fd = open_log(self.path)
                dirty = False
            elif kind == "meta":
                # The log first: a commit index on disk never runs ahead of the entries.
                if dirty and self.durable:
                    os.fsync(self._fd)
                dirty = False
                write_meta(self.path, payload, self.durable)
        if dirty and self.durable:
            os.fsync(self._fd)
        self._sync_dump()
        return len(batch)

    def _sync_dump(self):
        """A new snapshot file (PySyncObj writes it without fsync) goes to disk with the log."""
        if self._dump is None or not self.durable:
            return
        try:
            st = os.stat(self._dump)
        except FileNotFoundError:
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen != self._dump_seen:
            fsync_path(self._dump)
            fsync_path(os.path.dirname(os.path.abspath(self._dump)), directory=True)
            self._dump_seen = seen

    def _record(self, took):
        minute = int(time.time() // 60)
        if took > self._slowest.get(minute, 0.0):
            self._slowest[minute] = took
        for old in [m for m in self._slowest if m < minute - FLUSH_WINDOW // 60]:
            del self._slowest[old]

    def _fail(self, e):
        log.error("cannot write the Raft journal %s: %s. shoutd stops: it can acknowledge nothing more; "
                  "free the disk or fix it, then start shoutd again (it recovers from what is on disk)",
                  self.path, e)
        with self._cond:
            self.failed = "the Raft journal cannot be written (%s)" % (e.strerror or e)
            self._thread = None
            self._cond.notify_all()
