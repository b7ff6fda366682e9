"""The Raft log on disk (shoutd/raft/journal.py): what survives a crash at any point.

A "crash" here is dropping the journal object without closing it, then
opening the file again, as a restarted shoutd would.  What the journal has
queued reaches the disk on the flusher's thread: `flushed` waits for that,
and the tests at the end check what may be claimed before it has.
"""

import errno
import gzip
import os
import pickle
import time

import pytest
from pysyncobj.journal import FileJournal

from shoutd.errors import ShoutdError
from shoutd.raft.journal import DurableJournal


def entries(n, term=1, start=1):
    return [(b"cmd-%d" % i, i, term) for i in range(start, start + n)]


def fill(j, es):
    for e in es:
        j.add(*e)


def reopen(path, **kw):
    return DurableJournal(str(path), **kw)


def flushed(j):
    """`j` once its flusher has written everything queued so far (a crash now keeps all of it)."""
    assert j.flush(timeout=10)
    return j


def test_entries_term_vote_and_commit_index_come_back(tmp_path):
    j = reopen(tmp_path / "log")
    fill(j, entries(5))
    j.setCurrentTerm(7, "10.0.0.2:7380")
    j.setRaftCommitIndex(4)
    flushed(j).onOneSecondTimer()
    flushed(j)
    again = reopen(tmp_path / "log")
    assert list(again[:]) == entries(5) and len(again) == 5 and again[-1] == entries(5)[-1]
    assert (again.getCurrentTerm(), again.getVotedForNodeId(), again.getRaftCommitIndex()) == (7, "10.0.0.2:7380", 4)


def test_a_record_torn_by_a_crash_is_cut_off_and_the_rest_kept(tmp_path):
    j = reopen(tmp_path / "log")
    fill(flushed(j), entries(3))
    flushed(j)
    with open(tmp_path / "log", "ab") as f:
        f.write(b"\x10\x00\x00\x00garbage")           # half a record
    again = reopen(tmp_path / "log")
    assert list(again[:]) == entries(3)
    flushed(again).add(b"next", 4, 1)
    flushed(again)
    assert list(reopen(tmp_path / "log")[:]) == entries(3) + [(b"next", 4, 1)]


def test_entries_deleted_and_sent_again_unchanged_are_never_off_the_disk(tmp_path):
    """PySyncObj deletes a follower's entries and appends the leader's even when they are equal."""
    j = reopen(tmp_path / "log")
    fill(j, entries(6))
    before = open(tmp_path / "log", "rb").read() if flushed(j) else None
    j.deleteEntriesFrom(2)                               # PySyncObj: entries 3.. go ...
    assert len(j) == 2 and j[-1] == entries(6)[1]
    assert list(reopen(tmp_path / "log")[:]) == entries(6), "a crash right now loses nothing"
    fill(j, entries(3, start=3))                          # ... and 3, 4, 5 come back unchanged
    assert open(tmp_path / "log", "rb").read() == before, "nothing was rewritten"
    flushed(j)                                            # before the acknowledgement: 6 really goes
    assert list(reopen(tmp_path / "log")[:]) == entries(5)


def test_entries_that_differ_replace_the_old_ones_from_the_first_difference(tmp_path):
    j = reopen(tmp_path / "log")
    fill(j, entries(6))
    j.deleteEntriesFrom(2)
    fill(j, entries(1, start=3) + entries(2, term=2, start=4))   # 3 equal, 4 and 5 from a newer term
    assert list(flushed(j)[:]) == entries(3) + entries(2, term=2, start=4)
    assert list(reopen(tmp_path / "log")[:]) == list(j[:])


def test_compaction_replaces_the_log_whole_or_not_at_all(tmp_path):
    j = reopen(tmp_path / "log")
    fill(j, entries(10))
    j.deleteEntriesTo(7)
    assert list(j[:]) == entries(3, start=8)
    flushed(j).add(b"more", 11, 1)
    assert list(reopen(flushed(j).path)[:]) == entries(3, start=8) + [(b"more", 11, 1)]
    # A crash in the middle of writing the next compaction leaves only a stray .new file.
    with open(str(tmp_path / "log") + ".new", "wb") as f:
        f.write(b"partial")
    assert list(reopen(tmp_path / "log")[:]) == entries(3, start=8) + [(b"more", 11, 1)]


def test_a_log_not_yet_compacted_after_a_snapshot_is_trimmed_to_it(tmp_path):
    """Else PySyncObj would find the log not starting at the snapshot and discard it all."""
    j = reopen(tmp_path / "log")
    fill(j, entries(10))
    flushed(j)
    dump = tmp_path / "dump"
    with gzip.open(dump, "wb") as f:
        pickle.dump(([{}, {}], entries(10)[6], entries(10)[5], set()), f)   # applied up to 7
    again = reopen(tmp_path / "log", dump=str(dump))
    assert list(again[:]) == entries(5, start=6), "starts at the snapshot, keeps what follows"


def test_a_log_of_shoutd_0_1_is_converted(tmp_path):
    legacy = str(tmp_path / "raft.journal")
    old = FileJournal(legacy)
    for e in entries(4):
        old.add(*e)
    old.setCurrentTerm(3, "a:1")
    old.setRaftCommitIndex(4)
    old.onOneSecondTimer()
    old._destroy()
    j = reopen(tmp_path / "raft.log", legacy=legacy)
    assert list(j[:]) == entries(4) and j.getCurrentTerm() == 3 and j.getVotedForNodeId() == "a:1"
    assert not os.path.exists(legacy) and os.path.exists(legacy + ".converted")


def test_something_else_in_its_place_is_refused_clearly(tmp_path):
    (tmp_path / "log").write_bytes(b"not a log")
    with pytest.raises(ShoutdError) as err:
        reopen(tmp_path / "log")
    assert "move it away" in str(err.value)


# -- what the tick thread may claim while the disk lags (issue 12) ----------------------------------------


class SlowDisk:
    """os.fsync that takes `delay` seconds (as a disk dockerd keeps busy does) and counts its calls."""

    def __init__(self, monkeypatch, delay):
        self.delay, self.calls, self._real = delay, 0, os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd):
        self.calls += 1
        time.sleep(self.delay)  # the slow disk
        self._real(fd)


def test_appends_never_wait_for_the_disk_and_claims_wait_for_it(tmp_path, monkeypatch):
    j = reopen(tmp_path / "log")
    disk = SlowDisk(monkeypatch, 0.4)
    began = time.monotonic()
    fill(j, entries(50))
    j.setCurrentTerm(3, "a:1")
    assert time.monotonic() - began < 0.1, "the tick thread never waits for an fsync"
    assert j.durable_index() < 50 and not j.meta_durable(), "nothing is claimed before it is on disk"
    assert j.flush(timeout=10)
    assert j.durable_index() == 50 and j.meta_durable()
    assert disk.calls <= 6, "entries queued during a flush share the next fsync (group commit): %d" % disk.calls
    again = reopen(tmp_path / "log")
    assert list(again[:]) == entries(50) and again.getCurrentTerm() == 3


def test_durability_follows_the_flusher_entry_by_entry(tmp_path, monkeypatch):
    j = reopen(tmp_path / "log")
    fill(flushed(j), entries(3))
    flushed(j)
    SlowDisk(monkeypatch, 0.5)
    fill(j, entries(2, start=4))
    assert j.durable_index() == 3, "entries 1-3 are on disk, 4 and 5 not yet"
    j.deleteEntriesFrom(4)                  # entry 5 goes; 4 stays queued
    assert j.durable_index() == 3
    assert flushed(j).durable_index() == 4


def test_a_disk_that_fails_stops_the_journal_and_says_why(tmp_path, monkeypatch):
    j = reopen(tmp_path / "log")

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "fsync", broken)
    j.add(b"x", 2, 1)
    assert not j.flush(timeout=10)
    assert "Input/output error" in j.flusher.failed and j.durable_index() < 2


def test_the_slowest_recent_flush_is_remembered(tmp_path, monkeypatch):
    j = reopen(tmp_path / "log")
    SlowDisk(monkeypatch, 0.3)
    j.add(b"x", 2, 1)
    flushed(j)
    assert 0.3 <= j.flusher.slowest() < 5
