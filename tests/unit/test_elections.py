"""A busy disk costs no leader, and an election happens only when a leader is really gone (issue 12).

Three real PySyncObj members on loopback, each with its journal in a
directory of its own, so one member's disk can be made slow: its fsyncs then
take seconds, as on a host where dockerd is extracting an image.
"""

import asyncio
import logging
import os
import time
import types

from shoutd.raft import RaftNode
from shoutd.raft import node as node_module
from shoutd.raft.election import PRE_VOTE, PRE_VOTE_ANSWER, Elections

from ..support import free_ports, until
from .test_raft import SECRET, Silence, leader_of, settled

POOL = {"pool": "10.0.0.0/8", "pool_prefix": 16}    # room for the thousands of writes a few seconds take


class SlowDisk:
    """os.fsync that takes `slow[dir]` seconds for files under `dir`, as a busy disk does."""

    def __init__(self, monkeypatch):
        self.slow = {}
        self._real = os.fsync
        monkeypatch.setattr(os, "fsync", self)

    def __call__(self, fd):
        path = os.readlink("/proc/self/fd/%d" % fd)
        for where, delay in list(self.slow.items()):
            if path.startswith(where):
                time.sleep(delay)  # the busy disk
        self._real(fd)


def on_disk(tmp_path, n=3):
    addrs = ["127.0.0.1:%d" % p for p in free_ports(n)]
    nodes = []
    for i, addr in enumerate(addrs):
        d = tmp_path / ("m%d" % i)
        d.mkdir()
        node = RaftNode(addr, addrs, SECRET, journal_file=str(d / "raft.log"), dump_file=str(d / "raft.dump"))
        node.dir = str(d)
        nodes.append(node)
    return nodes


def journal(node):
    return node._journal_slot[0]


def run(nodes, main, disk=None):
    """main() on a loop, then every node destroyed (and the disk well again) whatever happened."""
    try:
        return asyncio.run(main())
    finally:
        if disk is not None:
            disk.slow.clear()
        for n in nodes:
            n.destroy()


async def write_for(nodes, seconds):
    """Allocate through every member in turn for `seconds`; each write's (member, latency)."""
    net = await nodes[0].submit({"op": "network_reserve", "req": "n", "node": "a", **POOL})
    done, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        for node in nodes:
            began = time.monotonic()
            await node.submit({"op": "ip_allocate", "node": node.self_addr, "network": net["id"]})
            done.append((node, time.monotonic() - began))
    return done


def test_a_slow_disk_on_the_leader_costs_no_election_and_no_write(tmp_path, monkeypatch, caplog):
    disk = SlowDisk(monkeypatch)
    nodes = on_disk(tmp_path)
    caplog.set_level(logging.WARNING, logger="shoutd.raft.flusher")

    async def main():
        await settled(nodes)
        leader = leader_of(nodes)
        term = leader.status.term
        disk.slow[leader.dir] = 1.5
        committed_ahead = []
        net = await leader.submit({"op": "network_reserve", "req": "n", "node": "a", **POOL})
        end = time.monotonic() + 6
        while time.monotonic() < end:
            await leader.submit({"op": "ip_allocate", "node": "l", "network": net["id"]})
            # Committed (a majority holds it durably) before the leader's own copy is on disk.
            committed_ahead.append(journal(leader).durable_index() < leader.sync.raftCommitIndex)
        assert [n.status.term for n in nodes] == [term] * 3, "no election because of the slow disk"
        assert leader_of(nodes) is leader
        assert any(committed_ahead), "the followers' durable copies commit without the leader's disk"
        return len(committed_ahead)
    count = run(nodes, main, disk)
    assert count >= 5
    assert "slow journal flush" in caplog.text


def test_a_slow_disk_on_a_follower_costs_no_election(tmp_path, monkeypatch):
    disk = SlowDisk(monkeypatch)
    nodes = on_disk(tmp_path)

    async def main():
        await settled(nodes)
        leader = leader_of(nodes)
        term = leader.status.term
        follower = next(n for n in nodes if n is not leader)
        disk.slow[follower.dir] = 1.5
        done = await write_for(nodes, 6)
        assert [n.status.term for n in nodes] == [term] * 3, "no election because of the slow disk"
        assert all(n.status.has_quorum for n in nodes)
        return done
    done = run(nodes, main, disk)
    assert len(done) >= 6


def test_an_entry_commits_only_on_a_majority_of_durable_copies(tmp_path, monkeypatch):
    """The leader's disk and one follower's are slow: a commit waits for one of them, never for none."""
    disk = SlowDisk(monkeypatch)
    nodes = on_disk(tmp_path)

    async def main():
        await settled(nodes)
        leader = leader_of(nodes)
        slow_follower = next(n for n in nodes if n is not leader)
        net = await leader.submit({"op": "network_reserve", "req": "n", "node": "a", **POOL})
        disk.slow[leader.dir] = disk.slow[slow_follower.dir] = 1.0
        for _ in range(3):
            await leader.submit({"op": "ip_allocate", "node": "l", "network": net["id"]})
            commit = leader.sync.raftCommitIndex
            durable = sorted(journal(n).durable_index() for n in nodes)
            assert durable[1] >= commit, "committed %d with durable copies %s" % (commit, durable)
    run(nodes, main, disk)


def test_a_member_that_was_cut_off_cannot_depose_the_leader(tmp_path):
    """PreVote: its timer runs out again and again, but it never raises the term."""
    nodes = on_disk(tmp_path)

    async def main():
        await settled(nodes)
        leader = leader_of(nodes)
        term = leader.status.term
        follower = next(n for n in nodes if n is not leader)
        with Silence(follower):
            await asyncio.sleep(2 * node_module.ELECTION_MAX + 1)  # several election timeouts
            assert follower.status.term == term, "no election without a won pre-vote"
        await asyncio.sleep(node_module.ELECTION_MAX)  # time for it to disrupt, if it could
        await settled(nodes)
        assert leader_of(nodes) is leader and [n.status.term for n in nodes] == [term] * 3
    run(nodes, main)


def test_a_write_issued_when_the_leader_dies_succeeds_once_a_new_one_is_elected(tmp_path, caplog):
    nodes = on_disk(tmp_path)
    caplog.set_level(logging.INFO, logger="shoutd.raft")

    async def main():
        await settled(nodes)
        leader = leader_of(nodes)
        net = await leader.submit({"op": "network_reserve", "req": "n", "node": "a", **POOL})
        survivors = [n for n in nodes if n is not leader]
        leader.destroy()
        began = time.monotonic()
        ip = await survivors[0].submit({"op": "ip_allocate", "node": "s", "network": net["id"]})
        took = time.monotonic() - began
        new = leader_of(survivors)
        assert new is not None and new.status.term > leader.status.term
        return ip, took
    ip, took = run(nodes, main)
    print("a write issued as the leader died succeeded after %.2f s" % took)
    assert ip
    assert "election for term" in caplog.text and "leader changed" in caplog.text


def test_a_cut_off_follower_names_only_whom_it_cannot_reach(tmp_path):
    nodes = on_disk(tmp_path)

    async def main():
        await settled(nodes)
        leader = leader_of(nodes)
        a, b = [n for n in nodes if n is not leader]
        assert a.status.unreachable == () and "cannot reach" not in a.no_quorum_message()
        with Silence(a):
            await until(lambda: set(a.status.unreachable) == {leader.self_addr, b.self_addr},
                        timeout=3 * node_module.ELECTION_MAX + 2, what="the cut-off follower to name both others")
        # The healthy follower never names the other follower: followers do not talk to each other.
        assert b.status.unreachable == ()
    run(nodes, main)


# -- the pre-vote rules, one member's view ------------------------------------------------------------


def member(term=5, last=(5, 10), leader=None, is_leader=False, others=("b", "c")):
    sync = types.SimpleNamespace(raftCurrentTerm=term, selfNode=types.SimpleNamespace(id="a"),
                                 otherNodes=[types.SimpleNamespace(id=o) for o in others],
                                 _SyncObj__raftLog=[(b"", last[1], last[0])], _SyncObj__raftElectionDeadline=0)
    sync._isLeader = lambda: is_leader
    sync._getLeader = lambda: leader
    return sync


def answer(sync, message, heard=None):
    sent = []
    handled = Elections(1.0, 2.0).on_message(sync, types.SimpleNamespace(id="b"), message, heard or {},
                                             lambda node, msg: sent.append(msg))
    return handled, sent


def test_a_pre_vote_is_granted_only_without_a_leader_and_for_a_log_as_new():
    ask = {"type": PRE_VOTE, "term": 6, "last_log_term": 5, "last_log_index": 10}
    granted = lambda sync, msg=ask, heard=None: answer(sync, msg, heard)[1][0]["granted"]  # noqa: E731
    assert granted(member())
    assert not granted(member(is_leader=True))
    leader = types.SimpleNamespace(id="c")
    assert not granted(member(leader=leader), heard={"c": time.monotonic()}), "its leader was just heard"
    assert granted(member(leader=leader), heard={"c": time.monotonic() - 5})
    assert not granted(member(last=(5, 11))), "the asker's log is shorter"
    assert not granted(member(last=(6, 1))), "the asker's log is of an older term"
    assert not granted(member(term=7)), "the asker is behind in term"
    assert not granted(member(), dict(ask, term="6")), "a malformed pre-vote is refused"


def test_a_member_with_a_newer_log_asks_at_once_when_it_refuses_a_pre_vote():
    sync = member(last=(5, 11))
    sync._SyncObj__raftElectionDeadline = time.monotonic() + 1.5
    answer(sync, {"type": PRE_VOTE, "term": 6, "last_log_term": 5, "last_log_index": 10})
    assert sync._SyncObj__raftElectionDeadline < time.monotonic() + 0.1, "its own pre-vote comes next"


def test_of_two_members_asking_for_the_same_term_one_yields():
    """Their ticks run in step after the leader's connection closed on both: without this they split the vote."""
    a, b = member(), member()
    a.selfNode.id, b.selfNode.id = "a", "b"
    ea, eb = Elections(1.0, 2.0), Elections(1.0, 2.0)
    asks = {}
    ea.before_tick(a, lambda node, msg: asks.setdefault("a", msg))
    eb.before_tick(b, lambda node, msg: asks.setdefault("b", msg))
    said = {}
    ea.on_message(a, types.SimpleNamespace(id="b"), asks["b"], {}, lambda node, msg: said.setdefault("a", msg))
    eb.on_message(b, types.SimpleNamespace(id="a"), asks["a"], {}, lambda node, msg: said.setdefault("b", msg))
    assert said["a"]["granted"] is False and said["b"]["granted"] is True, "the lesser address wins, the other yields"
    eb.on_message(b, types.SimpleNamespace(id="a"), {"type": PRE_VOTE_ANSWER, "term": 6, "granted": True}, {}, None)
    assert b._SyncObj__raftElectionDeadline > 0, "b gave its round up: a yes arriving for it now changes nothing"
    ea.on_message(a, types.SimpleNamespace(id="b"), said["b"], {}, None)
    assert a._SyncObj__raftElectionDeadline == 0, "a won"


def test_a_follower_that_hears_its_leader_ignores_vote_requests():
    leader = types.SimpleNamespace(id="c")
    request = {"type": "request_vote", "term": 9, "last_log_term": 9, "last_log_index": 99}
    assert answer(member(leader=leader), request, {"c": time.monotonic()}) == (True, [])
    assert answer(member(leader=leader), request, {"c": time.monotonic() - 5})[0] is False


def test_a_pre_vote_round_needs_a_majority_before_pysyncobj_may_elect():
    sync = member()
    elections, sent = Elections(1.0, 2.0), []
    elections.before_tick(sync, lambda node, msg: sent.append(msg))
    assert [m["type"] for m in sent] == [PRE_VOTE, PRE_VOTE] and sent[0]["term"] == 6
    assert sync._SyncObj__raftElectionDeadline > time.monotonic(), "PySyncObj's election is held back"
    elections.on_message(sync, types.SimpleNamespace(id="b"), {"type": PRE_VOTE_ANSWER, "term": 6, "granted": False},
                         {}, None)
    assert sync._SyncObj__raftElectionDeadline > 0
    elections.on_message(sync, types.SimpleNamespace(id="c"), {"type": PRE_VOTE_ANSWER, "term": 6, "granted": True},
                         {}, None)
    assert sync._SyncObj__raftElectionDeadline == 0, "won: PySyncObj elects at its next tick"
    sent.clear()
    elections.before_tick(sync, lambda node, msg: sent.append(msg))
    assert sent == [] and sync._SyncObj__raftElectionDeadline == 0, "the won round is not asked again"


def test_a_cluster_of_one_elects_itself_without_waiting_for_its_timer():
    """A host on its own registers at once: its first election does not wait one to two seconds for nobody."""
    sync = member(others=())
    sync._SyncObj__raftElectionDeadline = time.monotonic() + 1.5
    elections, sent = Elections(1.0, 2.0), []
    elections.before_tick(sync, lambda node, msg: sent.append(msg))
    assert sent == [] and sync._SyncObj__raftElectionDeadline == 0, "won alone: PySyncObj elects at its next tick"
    waiting = member()
    waiting._SyncObj__raftElectionDeadline = deadline = time.monotonic() + 1.5
    elections.before_tick(waiting, lambda node, msg: sent.append(msg))
    assert sent == [] and waiting._SyncObj__raftElectionDeadline == deadline, "with others, the timer runs"
