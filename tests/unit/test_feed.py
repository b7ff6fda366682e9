"""Replicas through the replica feed, on loopback: three real Raft voters (PySyncObj), each serving the feed.

A replica here is a Follower (raft/replica.py): it holds the state, follows
every change through one voter, writes through it, and moves to another
voter when its own goes.  The channel (raft/channel.py) is the real one.
"""

import asyncio
import json
import socket
import struct

import pytest

from shoutd.errors import ShoutdError
from shoutd.raft import channel as channel_module
from shoutd.raft import feed as feed_module
from shoutd.raft.feed import Feed, Session
from shoutd.raft.machine import Handover, LoopReplica
from shoutd.raft.replica import Follower
from shoutd.state import ClusterState, ops

from ..support import free_ports, until
from .test_raft import POOL, SECRET, build, settled


class Voters:
    """Three voters, each with its feed on its own port."""

    def __init__(self):
        self.nodes = build(3)
        self.ports = free_ports(3)
        self.feeds = []

    async def start(self):
        await settled(self.nodes)
        for node, port in zip(self.nodes, self.ports):
            feed = Feed(node.self_addr, SECRET, lambda node=node: node.state, node.submit)
            feed.follow(node.replica)
            await feed.start("127.0.0.1", port)
            self.feeds.append(feed)
        return self

    def addresses(self):
        return ["127.0.0.1:%d" % p for p, f in zip(self.ports, self.feeds) if f is not None]

    def serving(self, follower):
        return self.ports.index(int(follower.voter.rsplit(":", 1)[1]))

    async def kill(self, i):
        await self.feeds[i].stop()
        self.feeds[i] = None
        self.nodes[i].destroy()

    def alive(self):
        return [n for n, f in zip(self.nodes, self.feeds) if f is not None]

    def close(self):
        for n in self.nodes:
            n.destroy()


@pytest.fixture
def voters():
    v = Voters()
    yield v
    v.close()


async def replica(voters, name="replica-1:7380"):
    follower = Follower(name, SECRET, voters.addresses)
    follower.start()
    await asyncio.wait_for(follower.connected.wait(), 10)
    return follower


async def same_state(follower, nodes):
    await until(lambda: follower.state.applied == nodes[0].state.applied, what="the replica caught up")
    assert follower.state.data == nodes[0].state.data


def test_a_replica_holds_the_state_follows_it_and_writes_its_own_records_through_a_voter(voters):
    async def main():
        await voters.start()
        net = await voters.nodes[0].submit({"op": "network_reserve", "req": "n1", "node": "a", **POOL})
        follower = await replica(voters)
        await same_state(follower, voters.nodes)             # taken whole at first
        ip = await voters.nodes[1].submit({"op": "ip_allocate", "node": "b", "network": net["id"]})
        await until(lambda: ip in follower.state.networks["n1"]["addresses"], what="a voter's write")
        mine = await follower.submit({"op": "ip_allocate", "node": "replica-1:7380", "network": net["id"]})
        # Read your own write: the op came down the channel before its answer.
        assert follower.state.networks["n1"]["addresses"][mine]["node"] == "replica-1:7380"
        await until(lambda: all(mine in n.state.networks["n1"]["addresses"] for n in voters.nodes))
        await same_state(follower, voters.nodes)
        await follower.stop()
    asyncio.run(main())


def test_a_replica_s_write_to_another_host_s_record_is_refused_and_changes_nothing(voters):
    async def main():
        await voters.start()
        net = await voters.nodes[0].submit({"op": "network_reserve", "req": "n1", "node": "a", **POOL})
        follower = await replica(voters)
        before = voters.nodes[0].state.applied
        for op in ({"op": "ip_allocate", "node": "a", "network": net["id"]},
                   {"op": "groups_withdraw", "node": "replica-1:7380", "member": "a"}):
            with pytest.raises(ShoutdError) as err:
                await follower.submit(op)
            assert "replica-1:7380 may write only its own records" in str(err.value)
        assert voters.nodes[0].state.applied == before
        # A refusal by the state machine reaches the replica as the voter's would.
        with pytest.raises(ShoutdError) as err:
            await follower.submit({"op": "ip_allocate", "node": "replica-1:7380", "network": "nope"})
        assert "does not exist" in str(err.value)
        await follower.stop()
    asyncio.run(main())


def test_a_replica_whose_voter_dies_follows_another_and_catches_up_on_what_it_missed(voters):
    async def main():
        await voters.start()
        net = await voters.nodes[0].submit({"op": "network_reserve", "req": "n1", "node": "a", **POOL})
        follower = await replica(voters)
        await same_state(follower, voters.nodes)
        gone = voters.serving(follower)
        await voters.kill(gone)
        alive = voters.alive()
        await settled(alive)
        for _ in range(20):
            await alive[0].submit({"op": "ip_allocate", "node": "a", "network": net["id"]})
        await until(lambda: follower.voter is not None and voters.serving(follower) != gone,
                    what="the replica follows another voter")
        await same_state(follower, alive)
        ip = await follower.submit({"op": "ip_allocate", "node": "replica-1:7380", "network": net["id"]})
        assert follower.state.networks["n1"]["addresses"][ip]["node"] == "replica-1:7380"
        await until(lambda: all(ip in n.state.networks["n1"]["addresses"] for n in alive), what="on every voter")
        await follower.stop()
    asyncio.run(main())


def test_a_replica_that_comes_back_from_far_behind_takes_the_state_whole(voters, monkeypatch):
    monkeypatch.setattr(feed_module, "TAIL", 5)
    async def main():
        await voters.start()
        net = await voters.nodes[0].submit({"op": "network_reserve", "req": "n1", "node": "a", **POOL})
        follower = await replica(voters)
        await same_state(follower, voters.nodes)
        await follower.stop()
        held, whole = follower.state.applied, follower.taken_whole
        for _ in range(3):
            await voters.nodes[0].submit({"op": "ip_allocate", "node": "a", "network": net["id"]})
        # Within the tail: only the missed ops come (counted), no snapshot.
        follower.start()
        await same_state(follower, voters.nodes)
        assert follower.state.applied[0] == held[0] + 3 and follower.taken_whole == whole
        await follower.stop()
        for _ in range(10):
            await voters.nodes[0].submit({"op": "ip_allocate", "node": "a", "network": net["id"]})
        follower.start()
        await same_state(follower, voters.nodes)
        assert follower.taken_whole == whole + 1
        await follower.stop()
    asyncio.run(main())


def test_a_replica_that_disagrees_with_its_voter_drops_its_copy_and_takes_the_state_whole(voters):
    async def main():
        await voters.start()
        follower = await replica(voters)
        await same_state(follower, voters.nodes)
        await follower.stop()
        # Same count, another history: the voter cannot tell the ops after it.
        forged = ClusterState(json.loads(json.dumps(follower.state.data)))
        forged.data["log"]["digest"] = "0" * 16
        follower.state = forged
        follower.start()
        await until(lambda: follower.state.applied[1] != "0" * 16, what="the state taken whole")
        await same_state(follower, voters.nodes)
        await follower.stop()
    asyncio.run(main())


def test_the_state_crosses_the_channel_as_json_unchanged(voters):
    async def main():
        await voters.start()
        net = await voters.nodes[0].submit({"op": "network_reserve", "req": "n1", "node": "a", **POOL})
        for i in range(5):
            ip = await voters.nodes[0].submit({"op": "ip_allocate", "node": "a", "network": net["id"]})
            await voters.nodes[0].submit({"op": "endpoint_add", "node": "a", "network": net["id"],
                                          "endpoint": "%064x" % i, "ip": ip, "mac": "02:00:00:00:00:%02x" % i})
        follower = await replica(voters)
        await same_state(follower, voters.nodes)
        assert follower.state.endpoints_of("n1") == voters.nodes[0].state.endpoints_of("n1")
        await follower.stop()
    asyncio.run(main())


def stranger(port, first):
    """Connect to a feed, send `first`, and return what comes back before it hangs up (at most 1 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(first)
        s.settimeout(6)
        got = b""
        while True:
            try:
                data = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                return got, False
            if not data:
                return got, True
            got += data


def test_strangers_get_a_nonce_and_nothing_else(voters, monkeypatch):
    monkeypatch.setattr(channel_module, "HANDSHAKE_TIMEOUT", 1.0)
    monkeypatch.setattr(feed_module, "HANDSHAKE_TIMEOUT", 1.0)
    async def main():
        await voters.start()
        port = voters.ports[0]
        magic = channel_module.MAGIC
        cases = [
            b"GET / HTTP/1.0\r\n\r\n",                                       # not the protocol
            magic + b"n" * 16 + struct.pack("!I", 1 << 30),                  # a 1 GiB frame announced
            magic + b"n" * 16 + struct.pack("!I", 40) + b"x" * 40,           # sealed with another key
            magic + b"n" * 16,                                               # silent after the nonce
        ]
        for first in cases:
            got, closed = await asyncio.get_running_loop().run_in_executor(None, stranger, port, first)
            assert closed, "the feed kept a stranger's connection (%r)" % first[:20]
            assert len(got) == len(magic) + 16, "the feed told a stranger more than its nonce (%r)" % first[:20]
        assert voters.feeds[0].sessions == {}
        # A replica with another secret is refused the same way.
        other = Follower("replica-9:7380", "another-secret-0123456789", lambda: voters.addresses()[:1])
        other.start()
        await asyncio.sleep(1.5)
        assert not other.connected.is_set() and other.state.applied[0] == 0
        await other.stop()
        follower = await replica(voters)                                   # and the feed still serves
        await follower.stop()
    asyncio.run(main())


def test_a_replica_that_missed_a_whole_voter_set_change_finds_the_voters_among_the_members(voters):
    async def main():
        await voters.start()
        (gone,) = free_ports(1)                  # what it last knew: a voter that no longer serves
        follower = Follower("replica-1:7380", SECRET, lambda: ["127.0.0.1:%d" % gone], fallback=voters.addresses)
        follower.start()
        await asyncio.wait_for(follower.connected.wait(), 10)
        assert follower.voter in voters.addresses()
        await same_state(follower, voters.nodes)
        await follower.stop()
    asyncio.run(main())


def test_a_channel_is_dropped_when_its_peer_falls_silent_and_kept_while_frames_come():
    """One timer per channel (not per frame) finds a silent peer: frames closer than the timeout keep the
    channel; a gap longer than it ends the pending receive with a ChannelError that says so."""
    from shoutd.raft.channel import Channel, ChannelError

    async def main():
        accepted = asyncio.get_running_loop().create_future()

        async def serve(reader, writer):
            accepted.set_result(await Channel.open(reader, writer, SECRET, initiator=False))
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = await Channel.open(reader, writer, SECRET, initiator=True)
        voter = await accepted
        for i in range(8):                     # 0.8 s of frames 0.1 s apart, against a 0.3 s timeout
            voter.send({"t": "ping", "n": i})
            assert (await client.receive(0.3))["n"] == i
            await asyncio.sleep(0.1)
        with pytest.raises(ChannelError, match="silent for 0.3s"):
            await client.receive(0.3)
        client.close()
        voter.close()
        server.close()
    asyncio.run(main())


async def scripted_voter(name, answer):
    """A feed that welcomes a replica and hands each write it gets to `answer(op)`: a reply (without the
    request id) to send, or None to hang up.  Returns (its server, its address)."""
    from shoutd.raft.channel import Channel

    async def serve(reader, writer):
        channel = await Channel.open(reader, writer, SECRET, initiator=False)
        await channel.receive(5)                                           # the hello
        channel.send({"t": "welcome", "voter": name, "leader": name})
        while True:
            try:
                message = await channel.receive(10)
            except Exception:  # noqa: BLE001 - the replica went away
                return
            if message.get("t") != "submit":
                continue
            reply = answer(message["op"])
            if reply is None:
                channel.close()
                return
            channel.send(dict(reply, t="result", id=message["id"]))
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, "127.0.0.1:%d" % server.sockets[0].getsockname()[1]


def test_a_write_refused_by_a_second_voter_after_the_first_took_it_and_vanished_is_not_called_refused():
    """The first voter may have proposed it before its channel broke, and that attempt can still commit: the
    second voter's refusal says nothing of it, so the replica answers "cannot tell" and withdraws the write."""
    from shoutd.errors import OUTCOME_UNKNOWN

    async def main():
        seen = {"first": [], "second": []}
        first, first_feed = await scripted_voter("first", lambda op: seen["first"].append(op))   # took it, died
        second, second_feed = await scripted_voter("second", lambda op: seen["second"].append(op) or {
            "error": "no quorum, nothing changed", "kind": "unavailable"})
        feeds = [first_feed, second_feed]
        follower = Follower("replica-1:7380", SECRET, lambda: feeds)
        follower._order = lambda: list(feeds)                              # the first, then the second
        follower.start()
        await until(lambda: follower.voter == feeds[0], what="following the first voter")
        with pytest.raises(ShoutdError) as err:
            await follower.submit(ops.member_up("replica-1:7380", "198.18.0.9", "r1"), timeout=10)
        assert err.value.name == OUTCOME_UNKNOWN and "cannot tell" in str(err.value), str(err.value)
        assert seen["first"][0]["req"] == seen["second"][0]["req"], "the same request, resent"
        await until(lambda: any(op["op"] == "withdraw" for op in seen["second"]), what="the write withdrawn")
        follower.task.cancel()
        first.close()
        second.close()
    asyncio.run(main())


def test_a_replica_s_write_refused_for_want_of_a_leader_is_tried_again_under_a_new_id_by_the_replica():
    """The voter proposes a replica's write once, under the replica's id (its own retries under new ids could
    apply the write twice if the replica moved on); the replica tries again itself, as a voter would."""
    async def main():
        seen = []

        def answer(op):
            seen.append(op["req"])
            if len(seen) == 1:
                return {"error": "no leader yet", "kind": "unavailable", "name": "NoQuorum"}
            return {"value": "done"}
        server, feed = await scripted_voter("v", answer)
        follower = Follower("replica-1:7380", SECRET, lambda: [feed])
        follower.start()
        await until(lambda: follower.voter == feed, what="following the voter")
        assert await follower.submit(ops.member_up("replica-1:7380", "198.18.0.9", "r1"), timeout=10) == "done"
        assert len(seen) == 2 and seen[0] != seen[1], seen
        follower.task.cancel()
        server.close()
    asyncio.run(main())


class Recorder:
    """A replica's channel on the voter: what each write carried (op counts, or the message kind)."""

    def __init__(self, order):
        self.order, self.writes, self.times = order, [], []

    def send_encoded(self, *datas):
        messages = [json.loads(d) for d in datas]
        self.writes.append([m.get("at", m["t"]) for m in messages])
        self.times.append(asyncio.get_running_loop().time())
        self.order.append("sent")

    def backlog(self):
        return 0


def test_ops_go_to_each_replica_in_one_write_per_spacing_once_the_writers_here_were_answered(monkeypatch):
    """A writer on the voter (a container start there) does not wait for the replicas; they wake once for many."""
    monkeypatch.setattr(feed_module, "SPACING", 0.5)

    async def run():
        order = []
        copy = LoopReplica(Handover())
        feed = Feed("voter-1:7380", SECRET, lambda: copy.state, None)
        feed.follow(copy)
        channel = Recorder(order)
        feed.sessions["replica-1:7380"] = Session("replica-1:7380", channel)
        copy.attach(asyncio.get_running_loop(), on_change=lambda: None)
        await asyncio.sleep(0)

        async def writer(seq):
            await copy.until(seq)
            order.append("answered")             # where the plugin's handler answers Docker
        asyncio.ensure_future(writer(2))
        await asyncio.sleep(0)
        copy._handover.put("op", ops.member_up("voter-1:7380", "10.0.0.1", "one"))
        copy._handover.put("op", ops.member_up("replica-1:7380", "10.0.0.2", "two"))
        await until(lambda: channel.writes, what="the first batch sent")
        assert order == ["answered", "sent"]
        assert channel.writes == [[1, 2]]

        for name in ("three", "four", "five"):          # three batches within SPACING of that write
            copy._handover.put("op", ops.member_up("replica-%s:7380" % name, "10.0.0.3", name))
            await asyncio.sleep(0.05)
        assert channel.writes == [[1, 2]]
        await until(lambda: len(channel.writes) == 2, what="the next write")
        assert channel.writes[1] == [3, 4, 5]
        assert channel.times[1] - channel.times[0] >= 0.49

    asyncio.run(run())


def test_a_replica_s_own_write_is_answered_at_once_after_what_waits_for_it(monkeypatch):
    monkeypatch.setattr(feed_module, "SPACING", 600.0)

    async def run():
        copy = LoopReplica(Handover())
        answer = asyncio.get_running_loop().create_future()

        async def submit(op, again):
            copy._handover.put("op", op)
            await copy.until(2)
            answer.set_result(None)
            return "done"
        feed = Feed("voter-1:7380", SECRET, lambda: copy.state, submit)
        feed.follow(copy)
        mine, other = Recorder([]), Recorder([])
        session = Session("replica-1:7380", mine)
        feed.sessions.update({"replica-1:7380": session, "replica-2:7380": Session("replica-2:7380", other)})
        copy.attach(asyncio.get_running_loop(), on_change=lambda: None)
        copy._handover.put("op", ops.member_up("voter-1:7380", "10.0.0.1", "one"))
        await until(lambda: other.writes, what="the first op sent")
        await feed._answer(session, {"t": "submit", "id": 7,
                                     "op": ops.member_up("replica-1:7380", "10.0.0.2", "two")})
        assert mine.writes == [[1], [2], ["result"]]     # its op, then the answer: it reads its own write
        assert other.writes == [[1]]                      # the others wait for the spacing

    asyncio.run(run())
