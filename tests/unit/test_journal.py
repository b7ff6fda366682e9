"""The Raft log on disk (shoutd/raft/journal.py): what survives a crash at any point.

A "crash" here is dropping the journal object without closing it, then
opening the file again, as a restarted shoutd would.
"""

import gzip
import os
import pickle

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


def test_entries_term_vote_and_commit_index_come_back(tmp_path):
    j = reopen(tmp_path / "log")
    fill(j, entries(5))
    j.setCurrentTerm(7, "10.0.0.2:7380")
    j.setRaftCommitIndex(4)
    j.onOneSecondTimer()
    again = reopen(tmp_path / "log")
    assert list(again[:]) == entries(5) and len(again) == 5 and again[-1] == entries(5)[-1]
    assert (again.getCurrentTerm(), again.getVotedForNodeId(), again.getRaftCommitIndex()) == (7, "10.0.0.2:7380", 4)


def test_a_record_torn_by_a_crash_is_cut_off_and_the_rest_kept(tmp_path):
    j = reopen(tmp_path / "log")
    fill(j, entries(3))
    with open(tmp_path / "log", "ab") as f:
        f.write(b"\x10\x00\x00\x00garbage")           # half a record
    again = reopen(tmp_path / "log")
    assert list(again[:]) == entries(3)
    again.add(b"next", 4, 1)
    assert list(reopen(tmp_path / "log")[:]) == entries(3) + [(b"next", 4, 1)]


def test_entries_deleted_and_sent_again_unchanged_are_never_off_the_disk(tmp_path):
    """PySyncObj deletes a follower's entries and appends the leader's even when they are equal."""
    j = reopen(tmp_path / "log")
    fill(j, entries(6))
    before = open(tmp_path / "log", "rb").read()
    j.deleteEntriesFrom(2)                               # PySyncObj: entries 3.. go ...
    assert len(j) == 2 and j[-1] == entries(6)[1]
    assert list(reopen(tmp_path / "log")[:]) == entries(6), "a crash right now loses nothing"
    fill(j, entries(3, start=3))                          # ... and 3, 4, 5 come back unchanged
    assert open(tmp_path / "log", "rb").read() == before, "nothing was rewritten"
    j.sync()                                              # before the acknowledgement: 6 really goes
    assert list(reopen(tmp_path / "log")[:]) == entries(5)


def test_entries_that_differ_replace_the_old_ones_from_the_first_difference(tmp_path):
    j = reopen(tmp_path / "log")
    fill(j, entries(6))
    j.deleteEntriesFrom(2)
    fill(j, entries(1, start=3) + entries(2, term=2, start=4))   # 3 equal, 4 and 5 from a newer term
    assert list(j[:]) == entries(3) + entries(2, term=2, start=4)
    assert list(reopen(tmp_path / "log")[:]) == list(j[:])


def test_compaction_replaces_the_log_whole_or_not_at_all(tmp_path):
    j = reopen(tmp_path / "log")
    fill(j, entries(10))
    j.deleteEntriesTo(7)
    assert list(j[:]) == entries(3, start=8)
    j.add(b"more", 11, 1)
    assert list(reopen(tmp_path / "log")[:]) == entries(3, start=8) + [(b"more", 11, 1)]
    # A crash in the middle of writing the next compaction leaves only a stray .new file.
    with open(str(tmp_path / "log") + ".new", "wb") as f:
        f.write(b"partial")
    assert list(reopen(tmp_path / "log")[:]) == entries(3, start=8) + [(b"more", 11, 1)]


def test_a_log_not_yet_compacted_after_a_snapshot_is_trimmed_to_it(tmp_path):
    """Else PySyncObj would find the log not starting at the snapshot and discard it all."""
    j = reopen(tmp_path / "log")
    fill(j, entries(10))
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
