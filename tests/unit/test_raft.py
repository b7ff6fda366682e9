"""Raft through the real PySyncObj on loopback: IPAM, definite outcomes, honest status, a guarded port.

No root needed; each test builds its nodes on the main thread, as the daemon
does.  Partitions are made by silencing a node's transport (it neither sends
nor hears), which keeps its TCP connections open: exactly the case where
PySyncObj's own hasQuorum still says yes.
"""

import asyncio
import os
import pickle
import socket
import struct
import time
import zlib

import pytest

from shoutd.errors import ShoutdError
from shoutd.notify import Notifier
from shoutd.raft import RaftNode, check_port_free, check_pysyncobj
from shoutd.raft import node as node_module
from shoutd.raft.node import port_is_free
from shoutd.raft import transport as transport_module

from ..support import free_ports, until, wait_for

SECRET = "test-secret-0123456789abcdef"
POOL = {"pool": "10.213.0.0/16", "pool_prefix": 24}


def build(n, **kw):
    addrs = ["127.0.0.1:%d" % p for p in free_ports(n)]
    return [RaftNode(a, addrs, SECRET, **kw) for a in addrs]


@pytest.fixture
def trio():
    nodes = build(3)
    yield nodes
    for n in nodes:
        n.destroy()


def leader_of(nodes):
    return next((n for n in nodes if n.status.role == "leader"), None)


async def settled(nodes):
    for n in nodes:
        if n.loop is not asyncio.get_running_loop():
            n.attach(asyncio.get_running_loop())
    await until(lambda: leader_of(nodes) is not None and all(n.status.has_quorum and n.status.replayed for n in nodes),
                what="a leader that every node hears")


class _Deaf(dict):
    def __setitem__(self, key, value):
        pass


class Silence:
    """Cut a node off: it sends nothing and ignores what arrives, while its TCP connections stay up."""

    def __init__(self, node):
        self.transport = node.sync._SyncObj__transport

    def __enter__(self):
        t = self.transport
        self.saved = t.send, t._deliver, t._onMessageReceivedCallback, t.heard
        t.send = t._deliver = lambda node, message: False
        t._onMessageReceivedCallback = None
        t.heard = _Deaf()
        return self

    def __exit__(self, *exc):
        t = self.transport
        t.send, t._deliver, t._onMessageReceivedCallback, t.heard = self.saved


def test_concurrent_allocation_from_three_nodes_never_duplicates(trio):
    async def main():
        await settled(trio)
        net = await trio[0].submit({"op": "network_reserve", "req": "n1", "node": "a", **POOL})
        calls = [trio[i % 3].submit({"op": "ip_allocate", "node": "abc"[i % 3], "network": net["id"]})
                 for i in range(90)]
        ips = await asyncio.gather(*calls)
        assert len(set(ips)) == 90
        await until(lambda: all(len(n.state.networks["n1"]["addresses"]) == 90 for n in trio))
        # Every proposer reads its own write at once: the loop replica has applied it.
        assert all(ip in trio[i % 3].state.networks["n1"]["addresses"] for i, ip in enumerate(ips))
        await until(lambda: len({n.state.applied for n in trio}) == 1, what="the same log everywhere")
        assert trio[0].state.data == trio[1].state.data == trio[2].state.data
    asyncio.run(main())


def test_the_no_op_behind_each_command_commits_but_is_not_a_state_change(trio):
    """submit() puts a no-op behind every command (see RaftNode._propose); it must stay invisible."""
    async def main():
        await settled(trio)
        await until(lambda: len({n.status.last_applied for n in trio}) == 1)
        before = [n.state.applied[0] for n in trio]
        raw = trio[0].status.last_applied
        await trio[1].submit({"op": "member_up", "node": "x", "advertise": "10.0.0.9", "raft": "x"})
        # The command and its no-op: two log entries, one op for the state machine.
        await until(lambda: all(n.status.last_applied >= raw + 2 for n in trio))
        await until(lambda: all(n.state.applied[0] == b + 1 for n, b in zip(trio, before)))
        assert all(list(n.state.members) == ["x"] for n in trio)
    asyncio.run(main())


def test_a_refused_op_raises_a_clear_error_and_the_cluster_goes_on(trio):
    async def main():
        await settled(trio)
        with pytest.raises(ShoutdError) as err:
            await trio[1].submit({"op": "network_reserve", "req": "x", "node": "a", "subnet": "nonsense", **POOL})
        assert "nonsense" in str(err.value)
        # An op that would crash a naive state machine must not stop later commands.
        with pytest.raises(ShoutdError):
            await trio[2].submit({"op": "ip_allocate"})
        net = await trio[2].submit({"op": "network_reserve", "req": "y", "node": "a", **POOL})
        assert net["subnet"] == "10.213.0.0/24"
    asyncio.run(main())


def test_a_lone_node_without_quorum_says_so_fast():
    a, b = ["127.0.0.1:%d" % p for p in free_ports(2)]
    node = RaftNode(a, [a, b], SECRET)       # its partner never starts

    async def main():
        started = time.monotonic()
        with pytest.raises(ShoutdError) as err:
            await node.submit({"op": "ip_allocate", "node": "a", "network": "n"})
        assert err.value.name == "NoQuorum" and "no quorum" in str(err.value) and b in str(err.value)
        assert time.monotonic() - started < node_module.WRITE_WAIT + 2, "refused within seconds, not queued"
    try:
        asyncio.run(main())
    finally:
        node.destroy()


def test_quorum_is_honest_when_connections_stay_up_but_nothing_gets_through(trio):
    async def main():
        await settled(trio)
        leader = leader_of(trio)
        followers = [n for n in trio if n is not leader]
        with Silence(leader):
            # PySyncObj's own view still counts the open connections ...
            await asyncio.sleep(node_module.ELECTION_MAX + 0.5)  # past the election timeout
            assert leader.sync.hasQuorum
            # ... ours does not, and the silenced leader steps down within a few seconds.
            await until(lambda: not leader.status.has_quorum, timeout=3, what="the isolated leader to lose quorum")
            await until(lambda: leader.status.role != "leader", timeout=node_module.LEADER_FALLBACK + 2,
                        what="the isolated leader to step down")
            await until(lambda: leader_of(followers) is not None and all(f.status.has_quorum for f in followers),
                        what="the majority to elect a leader")
        await settled(trio)
    asyncio.run(main())


def on_tick_thread(node, fn):
    """Run `fn(sync, transport)` once on `node`'s tick thread, where PySyncObj expects its transport used."""
    done = []

    def once():          # called under PySyncObj's callback lock: it cannot remove itself
        if not done:
            done.append(fn(node.sync, node.sync._SyncObj__transport))
    node.sync.addOnTickCallback(once)
    try:
        wait_for(lambda: done, timeout=5, what="a tick on %s" % node.self_addr)
    finally:
        node.sync.removeOnTickCallback(once)
    return done[0]


def test_followers_idle_longer_than_the_connection_timeout_still_hear_each_other(trio):
    # Followers exchange nothing but keepalives until an election; PySyncObj
    # would close such a link on the first message that uses it (the pre-vote
    # that should replace a dead leader), and drop that message.
    async def main():
        await settled(trio)
        leader = leader_of(trio)
        asker, voter = [n for n in trio if n is not leader]
        await asyncio.sleep(node_module.CONNECTION_TIMEOUT + 1.0)
        probe = {"type": "test_probe"}          # a type PySyncObj ignores
        to = next(n for n in asker.sync.otherNodes if n.id == voter.self_addr)
        heard = voter.sync._SyncObj__transport.heard
        before = heard.get(asker.self_addr)
        assert on_tick_thread(asker, lambda sync, transport: transport.send(to, probe)), \
            "the idle link was closed when used"
        await until(lambda: heard.get(asker.self_addr) != before, timeout=2, what="the probe to arrive")
        # Keepalives themselves are not Raft: they never make a member look heard.
        assert before is None or time.monotonic() - before > node_module.CONNECTION_TIMEOUT
    asyncio.run(main())


def test_a_write_refused_in_a_minority_never_commits_later(trio):
    """Finding 2 of issue 6: refused writes on a cut-off follower committed once the partition healed."""
    async def main():
        await settled(trio)
        net = await leader_of(trio).submit({"op": "network_reserve", "req": "n1", "node": "a", **POOL})
        follower = next(n for n in trio if n.status.role != "leader")
        with Silence(follower):
            await until(lambda: not follower.status.has_quorum, what="the cut-off follower to notice")
            for i in range(3):
                with pytest.raises(ShoutdError) as err:
                    await follower.submit({"op": "ip_allocate", "node": "f", "network": net["id"]})
                assert err.value.name in ("NoQuorum", "OutcomeUnknown"), err.value
        await settled(trio)
        await leader_of(trio).submit({"op": "ip_allocate", "node": "l", "network": net["id"]})
        await asyncio.sleep(2.0)                     # time for anything queued to have committed
        await until(lambda: len({n.state.applied for n in trio}) == 1)
        holders = [a["node"] for a in trio[0].state.networks["n1"]["addresses"].values()]
        assert holders == ["l"], "a refused write took an address: %s" % holders
    asyncio.run(main())


def test_a_write_that_times_out_is_withdrawn_and_leaves_no_trace(trio):
    """A leader that loses its followers mid-write: the caller hears 'unknown', and the write never lands."""
    async def main():
        await settled(trio)
        leader = leader_of(trio)
        net = await leader.submit({"op": "network_reserve", "req": "n1", "node": "a", **POOL})
        transport = leader.sync._SyncObj__transport
        send = transport.send
        transport.send = lambda node, message: False          # the leader can append but not replicate
        try:
            with pytest.raises(ShoutdError) as err:
                await leader.submit({"op": "ip_allocate", "node": "l", "network": net["id"]}, timeout=1.0)
            # Definite (a new leader replaced it, or the withdrawal committed) or said to be unknown.
            assert err.value.name == "OutcomeUnknown" or "nothing was changed" in str(err.value), err.value
            # While it cannot settle (no quorum), settling in the background never hogs the loop.
            if leader._settling:
                lag = 0.0
                for _ in range(20):
                    began = time.monotonic()
                    await asyncio.sleep(0.05)  # the probe interval
                    lag = max(lag, time.monotonic() - began - 0.05)
                assert lag < 0.5, "the event loop stalled for %.1fs" % lag
        finally:
            transport.send = send
        await settled(trio)
        await until(lambda: not leader._settling, timeout=20, what="the background withdrawal to settle")
        await leader_of(trio).submit({"op": "member_up", "node": "z", "advertise": "10.0.0.9", "raft": "z"})
        await until(lambda: len({n.state.applied for n in trio}) == 1)
        assert trio[0].state.networks["n1"]["addresses"] == {}, "the withdrawn write left an address behind"
    asyncio.run(main())


def test_state_survives_a_restart_through_the_journal(tmp_path):
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    files = dict(journal_file=str(tmp_path / "j"), dump_file=str(tmp_path / "d"))

    async def write(node):
        await until(lambda: node.status.replayed and node.status.has_quorum)
        await node.submit({"op": "network_reserve", "req": "keep", "node": "a", **POOL})
        return node.status.term
    node = RaftNode(addr, [], SECRET, **files)
    term = asyncio.run(write(node))
    node.destroy()
    # Once destroy returns, nothing writes the files any more (AddPeer removes them then).
    assert not node.sync.tick_thread_alive()
    wait_for(lambda: port_is_free("127.0.0.1", port), what="the port released")

    async def read(node):
        node.attach(asyncio.get_running_loop())
        await until(lambda: "keep" in node.state.networks, what="the replayed network")
    node = RaftNode(addr, [], SECRET, **files)
    try:
        # Before any election: the term comes back from disk (PySyncObj < 0.3.16 started at 0).
        assert node.sync.raftCurrentTerm >= term, "the term is persisted, never goes back"
        asyncio.run(read(node))
    finally:
        node.destroy()


def test_the_journal_is_fsynced_before_a_write_is_acknowledged(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port

    async def write(node):
        await until(lambda: node.status.replayed and node.status.has_quorum)
        before = len(calls)
        await node.submit({"op": "network_reserve", "req": "r", "node": "a", **POOL})
        return len(calls) - before
    for durable in (True, False):
        files = dict(journal_file=str(tmp_path / ("j%d" % durable)), dump_file=str(tmp_path / ("d%d" % durable)))
        node = RaftNode(addr, [], SECRET, durable=durable, **files)
        try:
            synced = asyncio.run(write(node))
        finally:
            node.destroy()
            wait_for(lambda: port_is_free("127.0.0.1", port), what="the port released")
        assert (synced > 0) == durable, (durable, synced)


def test_without_the_secret_nothing_is_unpickled(tmp_path):
    """PySyncObj's wire format is pickle: an attacker's pickle must never run."""
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    node = RaftNode(addr, [], SECRET)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    async def main():
        await until(lambda: node.status.replayed)
        payload = zlib.compress(pickle.dumps(Exploit()))
        for message in (payload, zlib.compress(pickle.dumps(["add", "127.0.0.1:1"]))):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(struct.pack("i", len(message)) + message)
                assert closed_by_peer(s, 5), "the connection must be dropped"
        await asyncio.sleep(0.5)  # time for an exploit to have run
        assert not marker.exists()
        assert node.status.nodes == {addr: "self"}, "membership must not change"
        await node.submit({"op": "member_up", "node": addr, "advertise": "127.0.0.1", "raft": addr})
    try:
        asyncio.run(main())
    finally:
        node.destroy()


def closed_by_peer(sock, timeout):
    """True once the other side closes or resets the connection within `timeout`."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_oversized_frames_and_silent_strangers_are_dropped(monkeypatch):
    monkeypatch.setattr(transport_module, "AUTH_TIMEOUT", 1.0)
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    node = RaftNode(addr, [], SECRET)

    async def main():
        await until(lambda: node.status.replayed)
        for length in (0x7FFFFFFF, -5, transport_module.UNAUTHENTICATED_FRAME + 1):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(struct.pack("i", length) + os.urandom(1000))
                assert closed_by_peer(s, 2), "a frame of %d bytes must reset the connection at once" % length
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert closed_by_peer(s, 5), "a connection that never authenticates is closed"
        await node.submit({"op": "member_up", "node": addr, "advertise": "127.0.0.1", "raft": addr})
    try:
        asyncio.run(main())
    finally:
        node.destroy()


def test_at_most_a_bounded_number_of_strangers_wait_and_the_port_stays_bound(monkeypatch):
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    node = RaftNode(addr, [], SECRET)

    async def main():
        await until(lambda: node.status.replayed)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(150)]
        try:
            await asyncio.sleep(1.0)  # past the stall threshold
            open_ones = [s for s in socks if not closed_by_peer(s, 0.01)]
            assert len(open_ones) <= transport_module.MAX_PENDING, len(open_ones)
            await node.submit({"op": "member_up", "node": addr, "advertise": "127.0.0.1", "raft": addr})
        finally:
            for s in socks:
                s.close()
    try:
        asyncio.run(main())
    finally:
        node.destroy()


def test_a_wedged_tick_thread_stops_the_watchdog(monkeypatch):
    monkeypatch.setattr(node_module, "TICK_STALL", 0.5)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    (port,) = free_ports(1)
    node = RaftNode("127.0.0.1:%d" % port, [], SECRET)
    notifier = Notifier()
    sent = []
    notifier._send = sent.append
    gate = __import__("threading").Event()

    async def main():
        await until(lambda: node.status.replayed)
        assert node.health() is None and notifier.ping(node.health) and sent[-1] == "WATCHDOG=1"
        node.sync.addOnTickCallback(gate.wait)          # the tick thread blocks here
        await asyncio.sleep(1.0)  # the strangers' connections are accepted and shed
        sent.clear()
        assert "not ticked" in node.health().text and not node.health().fatal
        assert not notifier.ping(node.health) and "WATCHDOG=1" not in sent
        gate.set()
        await until(lambda: node.health() is None, what="ticking again")
        assert notifier.ping(node.health)
    try:
        asyncio.run(main())
    finally:
        gate.set()
        node.destroy()


def test_a_busy_raft_port_is_reported_not_retried_forever():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        with pytest.raises(ShoutdError) as err:
            check_port_free("127.0.0.1", s.getsockname()[1])
        assert "raft_port" in str(err.value) and "in use" in str(err.value)
    finally:
        s.close()


def test_a_pysyncobj_that_forgets_its_term_is_refused():
    with pytest.raises(ShoutdError) as err:
        check_pysyncobj("0.3.11")
    assert "0.3.16" in str(err.value) and "term" in str(err.value)
    check_pysyncobj("0.3.16")
    check_pysyncobj("0.3.17")


class FakeSync:
    """Only what _raft_fixes touches: the leader's nextIndex table, as PySyncObj names it."""

    def __init__(self, next_index):
        self._SyncObj__raftNextIndex = dict(next_index)


def pysyncobj_handler(sync, seen):
    """What PySyncObj's leader does with an answer: nextIndex := the index in it."""
    def handle(node, message):
        seen.append(message)
        if message.get("type") == "next_node_idx" and (message.get("reset") or message.get("success")):
            sync._SyncObj__raftNextIndex[node] = message["next_node_idx"]
    return handle


def test_an_acknowledgement_never_moves_next_index_back_and_a_rejection_never_forward():
    sync, seen = FakeSync({"f": 100}), []
    handle = pysyncobj_handler(sync, seen)
    # A late acknowledgement of an earlier message (the leader has sent up to 99 since).
    transport_module._raft_fixes(sync, handle, "f", {"type": "next_node_idx", "next_node_idx": 60,
                                                      "success": True, "reset": False})
    assert sync._SyncObj__raftNextIndex["f"] == 100
    # A rejection steps back ...
    transport_module._raft_fixes(sync, handle, "f", {"type": "next_node_idx", "next_node_idx": 50,
                                                      "success": False, "reset": True})
    assert sync._SyncObj__raftNextIndex["f"] == 50
    # ... and the stale answers to the messages sent behind it do not step forward again.
    transport_module._raft_fixes(sync, handle, "f", {"type": "next_node_idx", "next_node_idx": 57,
                                                      "success": False, "reset": True})
    assert sync._SyncObj__raftNextIndex["f"] == 50
    transport_module._raft_fixes(sync, handle, "f", {"type": "next_node_idx", "next_node_idx": 58,
                                                      "success": True, "reset": False})
    assert sync._SyncObj__raftNextIndex["f"] == 58
    assert len(seen) == 4, "PySyncObj still sees every answer (its match index and timers)"


def test_a_message_that_checked_nothing_cannot_raise_the_commit_index():
    sync, seen = FakeSync({}), []
    handle = pysyncobj_handler(sync, seen)
    for message in ({"type": "append_entries", "term": 3, "commit_index": 90, "serialized": None},
                    {"type": "append_entries", "term": 3, "commit_index": 90, "serialized": (b"x", True, False)}):
        transport_module._raft_fixes(sync, handle, "l", message)
        assert seen[-1]["commit_index"] == 0
    last_chunk = {"type": "append_entries", "term": 3, "commit_index": 90, "serialized": (b"x", False, True)}
    checked = {"type": "append_entries", "term": 3, "commit_index": 90, "prevLogIdx": 80, "prevLogTerm": 3}
    for message in (last_chunk, checked):
        transport_module._raft_fixes(sync, handle, "l", message)
        assert seen[-1]["commit_index"] == 90


def test_a_rebuild_for_addpeer_is_not_mistaken_for_a_dead_raft_thread(tmp_path, monkeypatch):
    """The old tick thread ends on purpose before the new one starts: the watchdog must not stop the daemon."""
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    node = RaftNode(addr, [], SECRET, journal_file=str(tmp_path / "j"), dump_file=str(tmp_path / "d"))
    seen = []
    removing = node_module.journal.remove_files

    def remove_files(*paths):
        seen.append((node.sync.tick_thread_alive(), node.health()))   # between the two threads
        removing(*paths)
    monkeypatch.setattr(node_module.journal, "remove_files", remove_files)

    async def main():
        node.attach(asyncio.get_running_loop())
        await until(lambda: node.status.replayed)
        await node.rebuild([addr])
        await until(lambda: node.sync.tick_thread_alive() and node.health() is None, what="the new tick thread")
    try:
        asyncio.run(main())
    finally:
        node.destroy()
    assert seen == [(False, None)]


def test_a_host_asked_to_join_acts_once_the_asker_has_the_answer_and_shrugs_off_malformed_requests(monkeypatch):
    """The join request's answer must reach the asker before the host leaves its cluster (PySyncObj's client
    loses a reply that comes with the hang-up); it acts as soon as the asker hung up, not a fixed grace later."""
    from pysyncobj.utility import TcpUtility

    from shoutd.raft import VERSION, JoinRequests, answer_version, ask_to_join, join
    monkeypatch.setattr(join, "JOIN_GRACE", 600.0)        # acting only after the grace would time out below
    (port,) = free_ports(1)
    addr = "127.0.0.1:%d" % port
    joined = []
    joins = JoinRequests(addr, on_join=lambda members, replica: joined.append((members, replica)))
    node = RaftNode(addr, [], SECRET, utility_messages={**joins.handlers(), VERSION: answer_version(6)})
    joins.node = node

    async def main():
        node.attach(asyncio.get_running_loop())
        await until(lambda: node.status.replayed and node.status.leader == addr, what="a one-node cluster")
        for bad in ([], [[1]], [{"x": 1}]):       # a secret holder's malformed requests: dropped, nothing breaks
            with pytest.raises(Exception):
                TcpUtility(password=SECRET, timeout=3).executeCommand(addr, bad)
        voters = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
        await ask_to_join(SECRET, addr, voters, timeout=5, replica=True)
        await until(lambda: joined, what="the join acted on once the asker hung up")
    try:
        asyncio.run(main())
    finally:
        node.destroy()
    assert joined[0] == (["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], True)
